"""The vector index: the VectorIndex protocol and its Milvus implementation."""
