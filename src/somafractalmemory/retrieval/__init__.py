"""Retrieval logic without I/O: the filter language and (later) ranking."""
