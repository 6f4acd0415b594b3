"""A LangChain retriever on the service: `SomaRetriever` answers a query with `Document`s.

    from somafractalmemory.integrations.langchain import SomaRetriever

    retriever = SomaRetriever(url="http://127.0.0.1:10101", namespace="notes", top_k=5)
    docs = retriever.invoke("where does Alice like to sit?")

Each document's `page_content` is the memory's content; its `metadata` is the memory's
metadata with `id`, `score`, `namespace`, `type` and `created_at` (ISO 8601) beside it
(the service's fields win over metadata keys of the same name). `filters` is the service's
filter language (docs/api.md#filters). `pip install somafractalmemory[langgraph]`.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from somafractalmemory.client import AsyncMemory, Hit, Memory


class SomaRetriever(BaseRetriever):
    url: str = "http://127.0.0.1:10101"
    api_key: str | None = None
    namespace: str | None = None
    top_k: int = 5
    filters: dict[str, Any] | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        with Memory(self.url, self.api_key) as memory:
            found = memory.recall(
                query, top_k=self.top_k, namespace=self.namespace, filters=self.filters
            )
        return [document(hit) for hit in found]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        async with AsyncMemory(self.url, self.api_key) as memory:
            found = await memory.recall(
                query, top_k=self.top_k, namespace=self.namespace, filters=self.filters
            )
        return [document(hit) for hit in found]


def document(hit: Hit) -> Document:
    fields = {
        "id": hit.id,
        "score": hit.score,
        "namespace": hit.namespace,
        "type": hit.type,
        "created_at": hit.created_at.isoformat(),
    }
    return Document(page_content=hit.content, metadata={**hit.metadata, **fields}, id=hit.id)
