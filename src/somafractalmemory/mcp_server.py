"""`sfm mcp`: the memory as Model Context Protocol tools, for agents whose host speaks MCP.

Tools: `remember`, `recall`, `forget`, `get_memory`, `link`. They call the running service
through the Python SDK (so the server keeps owning the data directory, and API keys and
tenancy apply as for any client). Transports: stdio (the host starts `sfm mcp` itself) and
streamable HTTP (`sfm mcp --transport http`, endpoint `/mcp`). A refused call answers as a
tool error carrying the service's code, e.g. `memory_not_found: no memory mem_...`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from somafractalmemory import __version__
from somafractalmemory.client import (
    ApiError,
    AsyncMemory,
    Hit,
    MemoryRecord,
    TransportError,
    parse_time,
)

INSTRUCTIONS = (
    "Long-term memory. Before answering, `recall` what you know about the topic; after "
    "learning something worth keeping, `remember` it (one fact or event per call, with a "
    "namespace per user or project). `forget` deletes a memory by id."
)


def _hit(hit: Hit) -> dict[str, Any]:
    return {
        "id": hit.id,
        "content": hit.content,
        "score": round(hit.score, 4),
        "type": hit.type,
        "namespace": hit.namespace,
        "created_at": hit.created_at.isoformat(),
        "metadata": hit.metadata,
    }


def _record(record: MemoryRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "content": record.content,
        "type": record.type,
        "namespace": record.namespace,
        "importance": record.importance,
        "metadata": record.metadata,
        "level": record.level,
        "created_at": record.created_at.isoformat(),
    }


def _instant(text: str | None) -> datetime | None:
    try:
        return parse_time(text)
    except ValueError:
        raise ToolError(f"validation_error: as_of {text!r} is not an ISO 8601 time") from None


@asynccontextmanager
async def _refusals() -> AsyncIterator[None]:
    """The service's errors as tool errors the model can read."""
    try:
        yield
    except ApiError as exc:
        raise ToolError(f"{exc.code}: {exc.message}") from exc
    except TransportError as exc:
        raise ToolError(f"service_unreachable: {exc}") from exc


def build(url: str, api_key: str | None = None) -> MCPServer:
    """The MCP server, its tools calling the service at `url`."""
    server = MCPServer("somafractalmemory", version=__version__, instructions=INSTRUCTIONS)

    def memory() -> AsyncMemory:
        return AsyncMemory(url, api_key)

    @server.tool()
    async def remember(
        content: str,
        namespace: str | None = None,
        type: str = "episodic",
        importance: float = 0.5,
        metadata: dict[str, Any] | None = None,
        key: str | None = None,
        expires_in: int | None = None,
    ) -> dict[str, Any]:
        """Store one memory: an event (`episodic`) or a fact (`semantic`), with an importance
        from 0 to 1 and optional metadata. The same content again returns the stored one.
        A `key` names the fact (e.g. `user-1/city`): storing it again replaces the old
        version in recall, which keeps its history. `expires_in`: seconds until it is
        forgotten (for what matters only for a while)."""
        async with _refusals(), memory() as m:
            stored = await m.remember(
                content,
                namespace=namespace,
                type=type,
                importance=importance,
                metadata=metadata,
                key=key,
                ttl_seconds=expires_in,
            )
        answer: dict[str, Any] = {"id": stored.id, "deduplicated": stored.deduplicated}
        if stored.supersedes:
            answer["supersedes"] = stored.supersedes
        if stored.possible_conflicts:
            answer["possible_conflicts"] = stored.possible_conflicts
        if stored.expires_at is not None:
            answer["expires_at"] = stored.expires_at.isoformat()
        return answer

    @server.tool()
    async def recall(
        query: str,
        top_k: int = 5,
        namespace: str | None = None,
        filters: dict[str, Any] | None = None,
        as_of: str | None = None,
    ) -> list[dict[str, Any]]:
        """The memories that best answer a natural-language query, best first; `filters`
        match metadata (e.g. {"user": "alice"}, {"confidence": {"$gte": 0.8}}). `as_of`
        (ISO 8601): what was valid at that instant, replaced versions included."""
        async with _refusals(), memory() as m:
            when = _instant(as_of)
            found = await m.recall(
                query, top_k=top_k, namespace=namespace, filters=filters, as_of=when
            )
        return [_hit(hit) for hit in found]

    @server.tool()
    async def get_memory(memory_id: str) -> dict[str, Any]:
        """One memory by id, with every field."""
        async with _refusals(), memory() as m:
            return _record(await m.get(memory_id))

    @server.tool()
    async def forget(memory_id: str) -> dict[str, Any]:
        """Delete a memory (with its links) by id."""
        async with _refusals(), memory() as m:
            await m.forget(memory_id)
        return {"id": memory_id, "deleted": True}

    @server.tool()
    async def link(
        source: str, target: str, kind: str = "related", weight: float = 1.0
    ) -> dict[str, Any]:
        """Link two memories (directed, typed: e.g. `related`, `contradicts`, `caused_by`)."""
        async with _refusals(), memory() as m:
            made = await m.link(source, target, kind, weight)
        return {
            "source": made.source,
            "target": made.target,
            "kind": made.kind,
            "weight": made.weight,
        }

    return server


def run(url: str, api_key: str | None, transport: str, host: str, port: int) -> None:
    server = build(url, api_key)
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)
