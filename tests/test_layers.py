"""The layers of shared/design.md §1, and its nevers, checked against the imports.

Imports point downwards: the faces (`server/`, `memories/api.py`, the dashboard, the CLI) ->
`services` and `jobs/` -> `remember`, `recall`, `browse` -> `tree`, `linking`, `indexing`,
`tenancy` -> `identity`, `limits`, `links`, `models` -> `retrieval`, `embedding`, `vectors`,
`crypto`, `policy` -> `conf`, `errors`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "somafractalmemory"

# A module may import only groups of a lower rank, or its own group. Groups of one rank
# are peers and may not import each other. Within a rank, a fraction orders the design's
# level where one of its modules builds on another (models seals with identity's keys).
RANKS = {
    "errors": 0,
    "conf": 1,
    "metrics": 1,
    "logs": 1,
    "breaker": 1,  # the cache's circuit breaker
    "client": 1,  # the SDK: imports nothing of the service
    "integrations": 1.5,  # LangGraph and LangChain adapters: on the SDK only
    "retrieval": 2,
    "embedding": 3,
    "vectors": 3,
    "policy": 3,
    "crypto": 3,
    "summaries": 3,
    "backends": 4,
    "memories.identity": 5,
    "memories.models": 5.1,
    "memories.fulltext": 5.1,
    "memories.links": 5.2,
    "memories.limits": 5.2,
    "memories.browse": 5.2,
    "memories.versions": 5.2,
    "memories.tenancy": 6,
    "memories.indexing": 6,
    "memories.linking": 6,
    "memories.tree": 6.1,
    "memories.remember": 7,
    "memories.recall": 7,
    "memories.jobs.runner": 8,
    "memories.jobs": 8.1,
    "memories.jobs.maintenance": 8.2,  # runs consolidation and forgetting on a schedule
    "memories.services": 8.5,
    "memories.access": 9,
    "memories.schemas": 9,
    "memories.api": 10,
    "memories.apps": 10,
    "dashboard": 10,
    "server": 11,
    "mcp_server": 12,
    "cli": 13,
}
FACES = ("memories/api.py", "dashboard", "cli.py", "server")
"""They parse, authorize and call verbs: they never query the ORM themselves."""
MIGRATIONS_MAY_IMPORT = {
    "memories.models",  # the field classes, as makemigrations writes them
    "memories.fulltext",  # versioned SQL, kept for migrations (fulltext.install(version))
    "conf",  # the secret that keys tokens and hashes
}


def group(module: str) -> str:
    parts = module.split(".")
    for size in (3, 2, 1):
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


def modules() -> dict[str, Path]:
    """Every module of the package (not migrations) by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).with_suffix("")
        if relative.parts[-1] != "__init__" and "migrations" not in relative.parts:
            found[".".join(relative.parts)] = path
    return found


def upward(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """The imports in `graph` (module -> what it imports) that do not point downwards."""
    wrong = []
    for module, targets in graph.items():
        me = group(module)
        for target in targets:
            try:
                other = group(target)
            except AssertionError:
                continue  # e.g. `from somafractalmemory import backends` resolves below
            if other != me and RANKS[other] >= RANKS[me]:
                wrong.append(f"{module} ({me}) imports {target} ({other})")
    return wrong


def test_imports_point_downwards() -> None:
    graph = {name: imports(path) for name, path in modules().items()}
    assert not upward(graph), "\n".join(upward(graph))


def test_the_check_catches_an_upward_import() -> None:
    assert upward({"memories.indexing": {"memories.services.recall"}})
    assert upward({"memories.recall": {"memories.remember.get"}})  # peers
    assert upward({"memories.jobs.runner": {"memories.jobs.erasure"}})
    assert not upward({"memories.jobs.erasure": {"memories.jobs.runner.lease"}})
    assert not upward({"memories.api": {"memories.services.search"}})


def test_every_module_has_a_layer() -> None:
    for name in modules():
        group(name)


def _orm_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = [
        f"{path.name}:{node.lineno} .objects"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "objects"
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("django.db.models"):
            found.append(f"{path.name}:{node.lineno} imports {node.module}")
    return found


def test_faces_never_touch_the_orm() -> None:
    offenders = []
    for face in FACES:
        where = PACKAGE / face
        for path in [where] if where.is_file() else sorted(where.rglob("*.py")):
            offenders += _orm_uses(path)
    assert not offenders, offenders


def test_retrieval_is_pure() -> None:
    for path in (PACKAGE / "retrieval").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            assert not any(n.split(".")[0] == "django" for n in names), f"{path}: imports Django"


def test_migrations_keep_frozen_copies() -> None:
    for path in sorted((PACKAGE / "memories" / "migrations").glob("0*.py")):
        names = imports(path)
        packages = {n for n in names if any(o.startswith(n + ".") for o in names)}
        live = {
            target
            for target in names - packages
            if not any(target == m or target.startswith(m + ".") for m in MIGRATIONS_MAY_IMPORT)
        }
        assert not live, f"{path.name} imports live code: {sorted(live)}"


def test_only_backends_names_implementations() -> None:
    concrete = {
        "embedding.local",
        "embedding.onnx",
        "embedding.http",
        "vectors.milvus",
        "vectors.local",
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
