"""Text -> vector: the Embedder protocol and its implementations."""
