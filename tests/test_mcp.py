"""`sfm mcp` driven by a real MCP client session, over stdio and over streamable HTTP,
against a live server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import TextContent

from tests.conftest import Live
from tests.servers import free_port

pytestmark = pytest.mark.slow
TOOLS = {"remember", "recall", "forget", "get_memory", "link"}


def text_of(result: Any) -> str:
    first = result.content[0]
    assert isinstance(first, TextContent), first
    return first.text


def payload(result: Any) -> Any:
    """A tool result's JSON (structured content when the tool declares it, else its text)."""
    assert not result.is_error, result.content
    if result.structured_content is not None:
        found = result.structured_content
        return found.get("result", found) if set(found) == {"result"} else found
    return json.loads(text_of(result))


async def scenario(client: Client) -> None:
    space = f"mcp-{uuid.uuid4().hex[:8]}"
    listed = await client.list_tools()
    assert {tool.name for tool in listed.tools} == TOOLS
    first = payload(
        await client.call_tool(
            "remember",
            {
                "content": "Erin is allergic to peanuts",
                "namespace": space,
                "type": "semantic",
                "importance": 0.9,
                "metadata": {"user": "erin"},
            },
        )
    )
    second = payload(
        await client.call_tool(
            "remember", {"content": "Erin ordered the pad thai without peanuts", "namespace": space}
        )
    )
    assert first["id"].startswith("mem_") and not first["deduplicated"]
    hits = payload(
        await client.call_tool(
            "recall", {"query": "what food allergy does Erin have?", "namespace": space, "top_k": 2}
        )
    )
    assert hits[0]["id"] == first["id"] and hits[0]["metadata"] == {"user": "erin"}
    linked = payload(
        await client.call_tool(
            "link", {"source": second["id"], "target": first["id"], "kind": "caused_by"}
        )
    )
    assert linked["kind"] == "caused_by"
    shown = payload(await client.call_tool("get_memory", {"memory_id": first["id"]}))
    assert shown["type"] == "semantic" and shown["importance"] == 0.9
    # A fact that changes: the key's new version replaces the old one in recall.
    city = {"namespace": space, "type": "semantic", "key": "erin/city"}
    before = payload(await client.call_tool("remember", {"content": "Erin lives in Oslo", **city}))
    after = payload(
        await client.call_tool(
            "remember", {"content": "Erin lives in Bergen", "expires_in": 3600, **city}
        )
    )
    assert after["supersedes"] == [before["id"]] and "expires_at" in after
    where = {"query": "Which city does Erin live in?", "namespace": space, "top_k": 3}
    now = payload(await client.call_tool("recall", where))
    assert before["id"] not in [h["id"] for h in now] and after["id"] in [h["id"] for h in now]
    then = payload(await client.call_tool("recall", {**where, "as_of": "2000-01-01T00:00:00Z"}))
    assert then == []
    bad = await client.call_tool("recall", {**where, "as_of": "last week"})
    assert bad.is_error and "validation_error" in text_of(bad)
    assert payload(await client.call_tool("forget", {"memory_id": first["id"]}))["deleted"]
    missing = await client.call_tool("get_memory", {"memory_id": first["id"]})
    assert missing.is_error and "memory_not_found" in text_of(missing)


def test_mcp_over_stdio(live: Live) -> None:
    command = StdioServerParameters(
        command=sys.executable,
        args=["-m", "somafractalmemory.cli", "mcp", "--url", live.base],
        env={k: v for k, v in os.environ.items() if k.startswith(("PATH", "HOME", "SFM_"))},
    )

    async def run() -> None:
        async with Client(command) as client:
            await scenario(client)

    asyncio.run(run())


def test_mcp_over_streamable_http(live: Live, tmp_path: Any) -> None:
    port = free_port()
    log = (tmp_path / "mcp.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "somafractalmemory.cli",
            "mcp",
            "--transport",
            "http",
            "--port",
            str(port),
            "--url",
            live.base,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "mcp.log").read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "sfm mcp --transport http did not listen"
                time.sleep(0.3)

        async def run() -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                await scenario(client)

        asyncio.run(run())
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
