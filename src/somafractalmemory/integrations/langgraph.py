"""LangGraph's long-term memory on the service: `SomaStore` is a `BaseStore`.

    from somafractalmemory.integrations.langgraph import SomaStore

    store = SomaStore("http://127.0.0.1:10101", api_key=None)
    graph = builder.compile(store=store)   # nodes get it as `store` (or `get_store()`)

How LangGraph's model maps onto memories (`pip install somafractalmemory[langgraph]`):

- A namespace tuple `("users", "alice")` is the service namespace `lg:users:alice`: labels
  joined by `:`, each character outside `[A-Za-z0-9_-]` written as `.XX` (its UTF-8 bytes in
  hex; LangGraph labels never hold `.`), so every tuple has one namespace and back.
- An item is the current version of the memory whose `key` is the item's key, in that
  namespace: `put` stores a new version (the old one stays in its history), `delete` erases
  every version. `value` is the memory's metadata, exactly (a JSON object, so the round
  trip is exact); its content, which search embeds, is the `index` fields' text (LangGraph's
  `index` argument; default: the whole value as JSON).
- `search(prefix, query=..., filter=..., limit, offset)`: with a query, the service's hybrid
  search in each namespace under the prefix, the best first, `score` set; without, the
  newest first. `filter` is the service's filter language on the metadata, which reads
  LangGraph's equality and `$eq $ne $gt $gte $lt $lte` forms as they are.
- `ttl` (minutes, LangGraph's unit) becomes the memory's `ttl_seconds`; reads do not refresh
  it (`refresh_ttl` is ignored).

`abatch` runs `batch` on a worker thread (the SDK's blocking client): a graph's async nodes
do not block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from somafractalmemory.client import Memory, MemoryRecord, NotFound

PREFIX = "lg"
_PLAIN = re.compile(r"[A-Za-z0-9_-]")
MAX_TOP_K = 100  # the service's largest search


def to_namespace(labels: Sequence[str]) -> str:
    """The service namespace of a LangGraph namespace tuple."""
    encoded = [
        "".join(c if _PLAIN.fullmatch(c) else "".join(f".{b:02x}" for b in c.encode()) for c in s)
        for s in labels
    ]
    return ":".join([PREFIX, *encoded])


def from_namespace(name: str) -> tuple[str, ...] | None:
    """The LangGraph tuple of a service namespace (None: not one of this store's)."""
    head, _, rest = name.partition(":")
    if head != PREFIX or not rest:
        return None
    return tuple(
        re.sub(
            r"(?:\.[0-9a-f]{2})+",
            lambda m: bytes.fromhex(m.group(0).replace(".", "")).decode(),
            label,
        )
        for label in rest.split(":")
    )


def _texts(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def content_of(value: Mapping[str, Any], index: Sequence[str] | None) -> str:
    """The text a search embeds: the `index` fields' values (dotted paths), else every
    string in the value, in order (else the value as JSON)."""
    if not index:
        texts = [t for t in _texts(value) if t.strip()]
        return "\n".join(texts) if texts else json.dumps(value, ensure_ascii=False)
    parts = []
    for path in index:
        found: Any = value
        for step in path.split("."):
            found = found.get(step) if isinstance(found, Mapping) else None
        if found is not None:
            parts.append(found if isinstance(found, str) else json.dumps(found, ensure_ascii=False))
    return "\n".join(parts) or json.dumps(value, ensure_ascii=False, sort_keys=True)


def _matches(labels: tuple[str, ...], condition: MatchCondition) -> bool:
    path = tuple(condition.path)
    if len(path) > len(labels):
        return False
    part = labels[: len(path)] if condition.match_type == "prefix" else labels[-len(path) :]
    return all(p == "*" or p == label for p, label in zip(path, part, strict=True))


class SomaStore(BaseStore):
    """A LangGraph `BaseStore` whose items are memories of a SomaFractalMemory service."""

    supports_ttl = True

    def __init__(
        self, url: str = "http://127.0.0.1:10101", api_key: str | None = None, **options: Any
    ) -> None:
        self.memory = Memory(url, api_key, **options)

    def close(self) -> None:
        self.memory.close()

    # -- the operations --------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        results: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._get(op.namespace, op.key))
            elif isinstance(op, PutOp):
                self._put(op)
                results.append(None)
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._namespaces(op))
            else:
                raise TypeError(f"unknown operation {op!r}")
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))

    def _current(self, namespace: tuple[str, ...], key: str) -> MemoryRecord | None:
        found = self.memory.list(namespace=to_namespace(namespace), key=key, page_size=1)
        return next(iter(found), None)

    def _get(self, namespace: tuple[str, ...], key: str) -> Item | None:
        record = self._current(namespace, key)
        return None if record is None else _item(record, namespace)

    def _put(self, op: PutOp) -> None:
        if op.value is None:
            current = self._current(op.namespace, op.key)
            if current is not None:
                for version in self.memory.history(current.id):
                    with contextlib.suppress(NotFound):  # deleted meanwhile
                        self.memory.forget(version.id)
            return
        index = None if op.index is None or op.index is False else list(op.index)
        self.memory.remember(
            content_of(op.value, index),
            namespace=to_namespace(op.namespace),
            metadata=dict(op.value),
            key=op.key,
            ttl_seconds=max(1, round(op.ttl * 60)) if op.ttl is not None else None,
        )

    def _under(self, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        """The store's namespaces that start with `prefix`."""
        found = [from_namespace(n.namespace) for n in self.memory.namespaces()]
        return sorted(t for t in found if t is not None and t[: len(prefix)] == prefix)

    def _search(self, op: SearchOp) -> list[SearchItem]:
        spaces = self._under(tuple(op.namespace_prefix))
        wanted = op.offset + op.limit
        if op.query:
            # One ranking: a search of the one namespace, or of all the tenant's with the
            # hits outside the prefix left out (scores of separate searches do not compare).
            names = {to_namespace(labels): labels for labels in spaces}
            if not names:
                return []
            found = self.memory.recall(
                op.query,
                namespace=next(iter(names)) if len(names) == 1 else None,
                top_k=min(max(wanted, 1), MAX_TOP_K) if len(names) == 1 else MAX_TOP_K,
                filters=op.filter or None,
            )
            hits = [h for h in found if h.namespace in names][op.offset : wanted]
            return [_found(self.memory.get(h.id), names[h.namespace], h.score) for h in hits]
        records = [
            (r, labels)
            for labels in spaces
            for r in self.memory.list(namespace=to_namespace(labels))
            if r.key and _filtered(r.metadata, op.filter)
        ]
        records.sort(key=lambda pair: pair[0].updated_at, reverse=True)
        return [_found(r, labels) for r, labels in records[op.offset : wanted]]

    def _namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        found = [from_namespace(n.namespace) for n in self.memory.namespaces()]
        spaces = [t for t in found if t is not None]
        for condition in op.match_conditions or ():
            spaces = [t for t in spaces if _matches(t, condition)]
        if op.max_depth is not None:
            spaces = [t[: op.max_depth] for t in spaces]
        unique = sorted(set(spaces))
        return unique[op.offset : op.offset + op.limit]


def _item(record: MemoryRecord, namespace: tuple[str, ...]) -> Item:
    return Item(
        value=record.metadata,
        key=record.key,
        namespace=namespace,
        created_at=record.created_at.astimezone(UTC),
        updated_at=record.updated_at.astimezone(UTC),
    )


def _found(
    record: MemoryRecord, namespace: tuple[str, ...], score: float | None = None
) -> SearchItem:
    """A search's item: with its score when a query ranked it."""
    return SearchItem(
        namespace=namespace,
        key=record.key,
        value=record.metadata,
        created_at=record.created_at.astimezone(UTC),
        updated_at=record.updated_at.astimezone(UTC),
        score=score,
    )


def _filtered(value: Mapping[str, Any], spec: Mapping[str, Any] | None) -> bool:
    """LangGraph's filter on an item's value (listing without a query, in the client)."""
    for name, wanted in (spec or {}).items():
        held = value.get(name)
        if isinstance(wanted, Mapping) and set(wanted) <= set(COMPARE):
            if not all(_compare(op, held, operand) for op, operand in wanted.items()):
                return False
        elif held != wanted:
            return False
    return True


COMPARE = {
    "$eq": operator.eq,
    "$ne": operator.ne,
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def _compare(op: str, held: Any, operand: Any) -> bool:
    try:
        return bool(COMPARE[op](held, operand))
    except TypeError:  # None, or another type: no match
        return False
