"""The core app: memories, their storage and the HTTP API over them."""
