"""Summaries from any OpenAI-compatible `/v1/chat/completions` endpoint."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from somafractalmemory.errors import SummarizerUnavailable
from somafractalmemory.summaries.base import clip

PROMPT = (
    "You consolidate an AI agent's memories. Write one short factual paragraph that keeps "
    "every name, date, number and decision from the memories below, in the third person, "
    "with nothing added. Answer with the paragraph only."
)


class LlmSummarizer:
    """POSTs `{"model", "messages"}` to `<base_url>/chat/completions`."""

    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0
    ) -> None:
        self.name = f"llm:{model}"
        self._model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def summarize(self, texts: Sequence[str], *, max_bytes: int) -> str:
        listing = "\n".join(f"- {t}" for t in texts)
        body = {
            "model": self._model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": PROMPT},
                {"role": "user", "content": clip(listing, 4 * max_bytes)},
            ],
        }
        try:
            response = self._client.post("/chat/completions", json=body)
            response.raise_for_status()
            text = response.json()["choices"][0]["message"]["content"]
        except httpx.HTTPError as exc:
            raise SummarizerUnavailable(f"summarizer endpoint failed: {exc}") from exc
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise SummarizerUnavailable(
                f"summarizer endpoint answered an unexpected body: {exc}"
            ) from exc
        if not isinstance(text, str) or not text.strip():
            raise SummarizerUnavailable("summarizer endpoint answered an empty summary")
        return clip(text.strip(), max_bytes)
