"""Operator tools: status, inspection, trace and replay (read the bus and the maps)."""
