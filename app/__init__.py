"""State Memory Service: one shared, versioned JSON state per (tenant, fsa) for many LLM agents."""

__version__ = "0.1.0"
