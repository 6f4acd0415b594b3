"""Summarizers: turn a group of memories into the text of their parent."""
