"""JSON text in and out with exact numbers; the one codec the service and its client share."""

from state_memory_client.jsontext import decode, encode

__all__ = ["decode", "encode"]
