"""Weir's message contracts: the pydantic models every process exchanges over NATS.

Pure data and pure functions only (no I/O), so every layer may import them. Versioned under
``contracts.v1``; bus subjects and stream names live in ``contracts.subjects``.
"""
