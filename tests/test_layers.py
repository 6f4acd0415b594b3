"""Imports point downwards: api -> services -> components -> conf/errors."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "somafractalmemory"

# Rank of each module group; a module may import only groups of a lower rank (or its own).
RANKS = {
    "errors": 0,
    "conf": 1,
    "metrics": 1,
    "logs": 1,
    "client": 1,  # the SDK: imports nothing of the service
    "retrieval": 2,
    "embedding": 3,
    "vectors": 3,
    "policy": 3,
    "crypto": 3,
    "summaries": 3,
    "backends": 4,
    "memories.models": 4,
    "memories.fulltext": 4,
    "memories.links": 4.5,
    "memories.services": 5,
    "memories.jobs": 5.5,
    "memories.tenancy": 5.5,
    "memories.hierarchy": 5.7,
    "memories.forgetting": 5.7,
    "memories.erasure": 5.7,
    "memories.export": 5.6,
    "memories.maintenance": 6,
    "memories.schemas": 5,
    "memories.api": 7,
    "memories.apps": 7,
    "dashboard": 7.5,
    "server": 8,
    "mcp_server": 8.5,
    "cli": 9,
}


def group(module: str) -> str:
    parts = module.split(".")
    for size in (2, 1):
        name = ".".join(parts[:size])
        if name in RANKS:
            return name
    raise AssertionError(f"module {module} has no layer in RANKS")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("somafractalmemory."):
                found.add(name.removeprefix("somafractalmemory."))
    return found


def test_imports_point_downwards() -> None:
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).with_suffix("")
        if relative.parts[-1] == "__init__" or "migrations" in relative.parts:
            continue
        me = group(".".join(relative.parts))
        for target in imports(path):
            try:
                other = group(target)
            except AssertionError:
                continue  # e.g. `from somafractalmemory import backends` resolves below
            if other != me and RANKS[other] >= RANKS[me]:
                wrong.append(f"{relative} ({me}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_only_backends_names_implementations() -> None:
    concrete = {
        "embedding.local",
        "embedding.onnx",
        "embedding.http",
        "vectors.milvus",
        "summaries.extractive",
        "summaries.llm",
    }
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if relative == "backends" or any(relative == c for c in concrete):
            continue
        if imports(path) & concrete:
            offenders.append(relative)
    assert not offenders
