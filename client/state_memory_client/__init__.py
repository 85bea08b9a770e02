"""The State Memory Service's Python client: shared, versioned JSON state for many LLM agents.

from state_memory_client import StateMemoryClient, SyncStateMemoryClient
"""

__version__ = "0.1.0"

from state_memory_client.client import (
    AuthenticationError,
    ConflictError,
    DeltaResult,
    HistoryCompactedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PolicyViolationError,
    RateLimitedError,
    ServiceUnavailableError,
    State,
    StateInfo,
    StateMemoryClient,
    StateMemoryError,
    StatePage,
    StatePurgedError,
    StateSlice,
    Summary,
    SyncStateMemoryClient,
    ValidationError,
)

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "DeltaResult",
    "HistoryCompactedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PolicyViolationError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "State",
    "StateInfo",
    "StateMemoryClient",
    "StateMemoryError",
    "StatePage",
    "StatePurgedError",
    "StateSlice",
    "Summary",
    "SyncStateMemoryClient",
    "ValidationError",
]
