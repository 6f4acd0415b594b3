"""The embedded default's VectorIndex: HNSW graphs (faiss) in this process over a SQLite file
of record. Filters run on numpy columns and reach the graph search as its bitmap of allowed
rows, so they apply inside the search; small scopes are scored exactly instead.

Files, one directory per model (data_dir/vectors/<collection>/):

- `entries.sqlite`: every entry by label (`entries`: its id, embedding id, filter fields,
  keyed lexical tokens and whether it is live), and the vectors of the entries no saved graph
  holds yet (`pending`: the write-ahead log);
- `vector.faiss`, `context.faiss`: the two graphs, vectors included, saved now and then.

Labels are positions in the graphs: entry k is the k-th vector added to each. A graph file
holding n vectors covers the labels below n, and opening adds the entries from n on from
their logged vectors: a write is durable once its SQLite transaction commits, and a graph is
written only every `save_every` new entries and on close. A replaced or deleted entry keeps
its label, dead, its vectors zeroed in memory and dropped from the log; they leave the graph
files at the next save, which `scrub` (after an erasure) does at once.

The lexical legs are BM25 over the logged tokens (postings.py), held in memory only: opening
builds them from the log.

One process owns the files (shared.claim); its request threads share the index: searches at
once, writes one at a time, each graph change alone (Gate) in short steps between searches.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from somafractalmemory.errors import IndexUnavailable
from somafractalmemory.retrieval.filters import (
    MEMORY_TYPES,
    All,
    AnyOf,
    Compare,
    Exists,
    Node,
    key_paths,
)
from somafractalmemory.vectors import postings, shared
from somafractalmemory.vectors.base import VectorHit, VectorRecord
from somafractalmemory.vectors.shared import Gate, collection_name

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 100
EXACT_ROWS = 10_000
"""A search whose allowed rows are at most this many scores them all (numpy): exact, and
faster than a graph walk that must step over the rows a narrow filter excludes."""
EXACT_SHARE = 1 / 32
"""...or at most this share of the index: a walk would step mostly over excluded rows."""
SAVE_EVERY = 50_000
LEXICAL_CHUNK = 100_000
"""Entries read from the log per postings segment when opening."""
ADD_STEP = 256
"""Entries added to the graphs per exclusive step: searches run between steps."""
_MASKS = 16
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    label INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    embedding_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    namespace TEXT NOT NULL,
    type TEXT NOT NULL,
    importance REAL NOT NULL,
    created_at_ms INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    live INTEGER NOT NULL,
    lexical BLOB,
    context_lexical BLOB
);
CREATE TABLE IF NOT EXISTS pending (
    label INTEGER PRIMARY KEY,
    vector BLOB NOT NULL,
    context BLOB NOT NULL
)
"""
_TYPES = {name: code for code, name in enumerate(MEMORY_TYPES)}


class Allowed:
    """The rows a search may return: a mask over the labels, and the bitmap faiss takes."""

    def __init__(self, mask: Mask) -> None:
        self.mask = mask
        self.count = int(np.count_nonzero(mask))
        self.share = self.count / max(len(mask), 1)
        self.bits = np.packbits(mask, bitorder="little")

    def selector(self, faiss: Any) -> Any:
        """An IDSelectorBitmap over `bits` (which must outlive the search)."""
        return faiss.IDSelectorBitmap(len(self.mask), faiss.swig_ptr(self.bits))


class Damaged(Exception):
    """The graph files and the log do not fit together (a file lost or from elsewhere)."""


class Grown:
    """A numpy array that grows by appending (capacity doubles); `view` is its filled part."""

    def __init__(self, dtype: Any, fill: Any = 0) -> None:
        self.fill = fill
        self.data = np.full(1024, fill, dtype=dtype)
        self.size = 0

    def extend(self, values: Any) -> None:
        values = np.asarray(values, dtype=self.data.dtype)
        need = self.size + len(values)
        if need > len(self.data):
            grown = np.full(max(need, 2 * len(self.data)), self.fill, dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = values
        self.size = need

    @property
    def view(self) -> npt.NDArray[Any]:
        return self.data[: self.size]


class Key:
    """One metadata key path: the labels that have it, each with its value as a code
    (strings and booleans; -1 otherwise) and as a number (NaN otherwise)."""

    def __init__(self) -> None:
        self.labels = Grown(np.int64)
        self.codes = Grown(np.int32, -1)
        self.numbers = Grown(np.float64, math.nan)


class Columns:
    """The filter fields of every label, as arrays a filter is evaluated on at once."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.embedding_ids: list[str] = []
        self.metadata: list[str] = []
        self.label_of: dict[str, int] = {}
        self.live = Grown(np.bool_, False)
        self.tenant = Grown(np.int32)
        self.namespace = Grown(np.int32)
        self.type = Grown(np.int8)
        self.importance = Grown(np.float64)
        self.created = Grown(np.int64)
        self.keys: dict[str, Key] = {}
        self.tenants: dict[str, int] = {}
        self.namespaces: dict[str, int] = {}
        self.values: dict[tuple[str, Any], int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, entries: Sequence[tuple[Any, ...]]) -> None:
        """Entries (id, embedding id, tenant, namespace, type, importance, created_at_ms,
        metadata JSON, live) take the next labels."""
        first = len(self.ids)
        self.ids.extend(e[0] for e in entries)
        self.embedding_ids.extend(e[1] for e in entries)
        self.metadata.extend(e[7] for e in entries)
        self.tenant.extend([_code(self.tenants, e[2]) for e in entries])
        self.namespace.extend([_code(self.namespaces, e[3]) for e in entries])
        self.type.extend([_TYPES[e[4]] for e in entries])
        self.importance.extend([e[5] for e in entries])
        self.created.extend([e[6] for e in entries])
        self.live.extend([bool(e[8]) for e in entries])
        pending: dict[str, tuple[list[int], list[int], list[float]]] = {}
        for offset, entry in enumerate(entries):
            label = first + offset
            if entry[8]:
                self.label_of[entry[0]] = label
            for path, value in key_paths(json.loads(entry[7])):
                labels, codes, numbers = pending.setdefault(path, ([], [], []))
                kind = _kind(value)
                labels.append(label)
                codes.append(_code(self.values, (kind, value)) if kind in ("s", "b") else -1)
                numbers.append(_number(value) if kind == "n" else math.nan)
        for path, (labels, codes, numbers) in pending.items():
            key = self.keys.get(path)
            if key is None:
                key = self.keys[path] = Key()
            key.labels.extend(labels)
            key.codes.extend(codes)
            key.numbers.extend(numbers)

    def update(self, label: int, entry: tuple[Any, ...]) -> None:
        """New tenant, namespace, type, importance and creation time for a label whose id,
        vectors and metadata stay."""
        self.tenant.data[label] = _code(self.tenants, entry[2])
        self.namespace.data[label] = _code(self.namespaces, entry[3])
        self.type.data[label] = _TYPES[entry[4]]
        self.importance.data[label] = entry[5]
        self.created.data[label] = entry[6]

    def kill(self, label: int) -> None:
        self.live.data[label] = False
        self.metadata[label] = "{}"
        if self.label_of.get(self.ids[label]) == label:
            del self.label_of[self.ids[label]]

    # -- filters ---------------------------------------------------------------------------

    def scope(self, tenant: str, namespace: str | None) -> Mask:
        code = self.tenants.get(tenant)
        if code is None:
            return np.zeros(len(self), dtype=np.bool_)
        allowed = (self.tenant.view == code) & self.live.view
        if namespace is not None:
            space = self.namespaces.get(namespace)
            allowed &= self.namespace.view == (-1 if space is None else space)
        return allowed

    def mask(self, node: Node) -> Mask:
        """The labels `node` holds for, with filters.matches's semantics."""
        if isinstance(node, All | AnyOf):
            parts = [self.mask(item) for item in node.items]
            combine = np.logical_and if isinstance(node, All) else np.logical_or
            return combine.reduce(parts)
        n = len(self)
        if isinstance(node, Exists):
            key = self.keys.get(node.field.dotted)
            held = self._spread(key, None) if key is not None else np.zeros(n, np.bool_)
            return held if node.present else ~held
        if node.field.column:
            return self._column(node)
        key = self.keys.get(node.field.dotted)
        negated = node.op in ("$ne", "$nin")
        if key is None:
            return np.full(n, negated, dtype=np.bool_)
        values = node.value if isinstance(node.value, tuple) else (node.value,)
        if node.op in ("$eq", "$ne", "$in", "$nin"):
            if _kind(values[0]) == "n":
                chosen = np.isin(key.numbers.view, np.asarray(values, dtype=np.float64))
            else:
                codes = [self.values.get((_kind(v), v), -2) for v in values]
                chosen = np.isin(key.codes.view, codes)
        else:
            chosen = _COMPARE[node.op](key.numbers.view, float(values[0]))  # NaN: False
        held = self._spread(key, chosen)
        return ~held if negated else held

    def _spread(self, key: Key, chosen: Mask | None) -> Mask:
        """A key's chosen entries (all, when None) as a mask over every label."""
        out = np.zeros(len(self), dtype=np.bool_)
        out[key.labels.view if chosen is None else key.labels.view[chosen]] = True
        return out

    def _column(self, node: Compare) -> Mask:
        name = node.field.path[0]
        negated = node.op in ("$ne", "$nin")
        values = node.value if isinstance(node.value, tuple) else (node.value,)
        if name == "id":
            out = np.zeros(len(self), dtype=np.bool_)
            labels = [self.label_of[v] for v in values if v in self.label_of]
            out[labels] = True
            return ~out if negated else out
        if name == "type":
            column: npt.NDArray[Any] = self.type.view
            values = tuple(_TYPES[str(v)] for v in values)
        else:
            column = self.importance.view if name == "importance" else self.created.view
        if node.op in ("$eq", "$ne", "$in", "$nin"):
            held = np.isin(column, np.asarray(values))
            return ~held if negated else held
        result: Mask = _COMPARE[node.op](column, values[0])
        return result


_COMPARE: dict[str, Callable[[Any, Any], Mask]] = {
    "$gt": np.greater,
    "$gte": np.greater_equal,
    "$lt": np.less,
    "$lte": np.less_equal,
}


def _code(codes: dict[Any, int], value: Any) -> int:
    code = codes.get(value)
    if code is None:
        code = codes[value] = len(codes)
    return code


def _kind(value: Any) -> str:
    """How filters compare a value: "s" string, "b" boolean, "n" number, "o" anything else
    (present, equal to no filter value)."""
    if isinstance(value, bool):
        return "b"
    if isinstance(value, str):
        return "s"
    return "n" if isinstance(value, int | float) else "o"


def _number(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float
        return math.inf if value > 0 else -math.inf


BEAM_SIZE = 100_000
"""The index size up to which the configured beam holds as it is."""


def beam(ef: int, size: int, share: float) -> int:
    """The graph walk's beam: `ef` up to BEAM_SIZE entries, then grown as size^0.6, and
    widened by 1/sqrt(the allowed share) under a filter, at most 4x. Measured on the bench
    corpus (recall@10 of the legs' pool of 40, docs/benchmarks.md): at 100,000 ef 256 gives
    0.994 unfiltered, and under a 10% filter 0.9875, 0.996 widened (810); at 1,000,000 ef 256
    gives 0.943, 512 0.981 and 1024 0.9915 (0.9905 under the filter, widened)."""
    grown = ef * max(1.0, size / BEAM_SIZE) ** 0.6
    return round(grown * min(4.0, 1 / math.sqrt(max(share, 1e-9))))


def _within_int64(value: Any) -> bool:
    """Whether every integer in a JSON value fits 64 bits (as Milvus and PostgreSQL hold)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, dict):
        return all(_within_int64(v) for v in value.values())
    if isinstance(value, list):
        return all(_within_int64(v) for v in value)
    return True


def _entry(r: VectorRecord) -> tuple[Any, ...]:
    """A record as an `entries` row without its label (the order Columns.append takes)."""
    return (
        r.id,
        r.embedding_id,
        r.tenant,
        r.namespace,
        r.type,
        float(r.importance),
        int(r.created_at_ms),
        json.dumps(r.metadata, sort_keys=True, ensure_ascii=False),
        1,
    )


def _terms(blob: bytes | None) -> postings.Terms:
    return np.frombuffer(blob, dtype="<u8").astype(np.uint64) if blob else postings.EMPTY


def _blob(terms: postings.Terms) -> bytes:
    return terms.astype("<u8").tobytes()


def _unit(rows: Any, dim: int) -> Vectors:
    """Rows scaled to length 1 (cosine is then the inner product); zero rows stay zero."""
    matrix = np.asarray(rows, dtype=np.float32).reshape(-1, dim)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


class LocalIndex:
    """VectorIndex in this process (see the module's docstring)."""

    lexical = True  # BM25 over the logged tokens (SQLite FTS5 only when this index fails)

    def __init__(
        self,
        directory: Path,
        *,
        model: str,
        dim: int,
        ef: int = 256,
        save_every: int = SAVE_EVERY,
        exact_rows: int = EXACT_ROWS,
        exact_share: float = EXACT_SHARE,
        predecessor: Path | None = None,
    ) -> None:
        """`predecessor`: the index an earlier version kept (a Milvus Lite file), which this
        one does not read: while this one is empty and that exists, `notes` says so."""
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it chose
        import faiss

        self._faiss = faiss
        self.dim = dim
        self.ef = ef
        self.predecessor = predecessor
        self.name = collection_name(model, dim)
        self.directory = directory / self.name
        self._save_every = save_every
        self._exact_rows, self._exact_share = exact_rows, exact_share
        self._gate = Gate()  # graph and column changes alone, searches at once
        self._write = threading.RLock()  # one writer (and saver) at a time
        self._masks: OrderedDict[tuple[Any, ...], Allowed] = OrderedDict()
        self._masks_lock = threading.Lock()
        self._generation = 0
        self._unsaved = 0
        self._owner: IO[str] | None = shared.claim(
            self.directory / "owner", f"the vector index {self.directory}"
        )
        try:
            self._db = sqlite3.connect(
                self.directory / "entries.sqlite", isolation_level=None, check_same_thread=False
            )
            # auto_vacuum takes effect on a new file only: the log gives back the space of the
            # vectors a save moved into the graph files.
            pragmas = ("auto_vacuum = INCREMENTAL", "journal_mode = WAL", "synchronous = FULL")
            for pragma in (*pragmas, "secure_delete = ON"):
                self._db.execute(f"PRAGMA {pragma}")
            self._db.executescript(_SCHEMA)
            self._stale = self._add_lexical_columns()
            try:
                self._open()
            except Damaged as exc:
                # Derived data: start empty rather than not at all; `sfm doctor` then reports
                # every memory missing, and `sfm reindex` (or doctor --repair) writes them.
                log.error("vector index %s: %s; it starts empty: run `sfm reindex`", self.name, exc)
                self._empty()
        except BaseException:
            self._release()
            raise
        for note in self.notes():
            log.warning("vector index %s: %s", self.name, note)

    # -- files -----------------------------------------------------------------------------

    def _empty(self) -> None:
        """No entries, no graph files, the log rewritten small; then open that."""
        self._db.executescript("DELETE FROM entries; DELETE FROM pending; VACUUM;")
        self._stale = False
        for which in ("vector", "context"):
            self._graph_path(which).unlink(missing_ok=True)
        self._open()

    def _add_lexical_columns(self) -> bool:
        """Give a log from before the lexical legs their columns; whether it needed them (its
        entries have no tokens: the index starts again)."""
        held = {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}
        missing = [c for c in ("lexical", "context_lexical") if c not in held]
        for column in missing:
            self._db.execute(f"ALTER TABLE entries ADD COLUMN {column} BLOB")
        return bool(missing)

    def _graph_path(self, which: str) -> Path:
        return self.directory / f"{which}.faiss"

    def _new_graph(self) -> Any:
        graph = self._faiss.IndexHNSWFlat(self.dim, HNSW_M, self._faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return graph

    def _load_graph(self, which: str, entries: int) -> Any:
        path = self._graph_path(which)
        if not path.exists():
            return self._new_graph()
        try:
            graph = self._faiss.read_index(str(path))
        except RuntimeError as exc:
            raise Damaged(f"cannot read {path}: {exc}") from exc
        if graph.d != self.dim or graph.ntotal > entries:
            raise Damaged(f"{path} holds more than its log {self.directory / 'entries.sqlite'}")
        return graph

    def _open(self) -> None:
        self._columns = Columns()
        self._lexicals = {w: postings.Postings() for w in ("vector", "context")}
        rows = self._db.execute(
            "SELECT id, embedding_id, tenant, namespace, type, importance, created_at_ms, "
            "metadata, live, lexical, context_lexical FROM entries ORDER BY label"
        )
        docs: list[tuple[postings.Terms, postings.Terms]] = []
        while chunk := rows.fetchmany(10_000):
            self._columns.append([row[:9] for row in chunk])
            docs.extend((_terms(row[9]), _terms(row[10])) for row in chunk)  # None: dead
            if len(docs) >= LEXICAL_CHUNK:
                self._add_terms(docs)
                self._compact()
                docs = []
        self._add_terms(docs)
        self._compact()
        entries = len(self._columns)
        if self._stale and entries:
            raise Damaged("its log was written before the index held lexical tokens")
        self._graphs = {w: self._load_graph(w, entries) for w in ("vector", "context")}
        # What the graph files do not hold yet, from the log.
        replayed = 0
        for which, graph in self._graphs.items():
            start = graph.ntotal
            replayed = max(replayed, entries - start)
            logged = self._db.execute(
                f"SELECT e.label, e.live, p.{which} FROM entries e "
                "LEFT JOIN pending p ON p.label = e.label WHERE e.label >= ? ORDER BY e.label",
                (start,),
            )
            while chunk := logged.fetchmany(ADD_STEP * 8):
                if any(live and blob is None for _, live, blob in chunk):
                    raise Damaged(f"{self._graph_path(which)} is older than its log")
                matrix = np.zeros((len(chunk), self.dim), dtype=np.float32)
                for row, (_, _, blob) in enumerate(chunk):
                    if blob is not None:
                        matrix[row] = np.frombuffer(blob, dtype=np.float32)
                graph.add(matrix)
        # Entries that died after the graphs were saved: their vectors zeroed again (so that
        # no save, nor a scrub, writes them back).
        dead = np.flatnonzero(~self._columns.live.view)
        for which in self._graphs:
            self._stored(which)[dead] = 0.0
        if replayed:
            log.info("vector index %s: %d entries added from the log", self.name, replayed)
            self._unsaved = replayed
            self.save()

    def _add_terms(self, docs: Sequence[tuple[postings.Terms, postings.Terms]]) -> None:
        """The next labels' (memory, context) terms into the two postings, as new segments."""
        for field, which in enumerate(("vector", "context")):
            self._lexicals[which].add([doc[field] for doc in docs])

    def _compact(self) -> None:
        """Merge the postings' newest segments (writes held off: `live` must not change)."""
        for index in self._lexicals.values():
            index.compact(self._columns.live.view)

    def save(self) -> None:
        """Write both graphs (atomically, each to a new file renamed over the old), then drop
        from the log the vectors they now hold."""
        with self._write, self._gate.shared():
            for which, graph in self._graphs.items():
                path = self._graph_path(which)
                partial = path.with_suffix(".partial")
                self._faiss.write_index(graph, str(partial))
                with open(partial, "rb") as written:
                    os.fsync(written.fileno())
                os.replace(partial, path)
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            held = min(graph.ntotal for graph in self._graphs.values())
            self._db.execute("DELETE FROM pending WHERE label < ?", (held,))
            # (executescript runs it to the end: execute() frees one page per call)
            self._db.executescript("PRAGMA incremental_vacuum;")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._unsaved = 0

    def _release(self) -> None:
        with contextlib.suppress(AttributeError):
            self._db.close()
        if self._owner is not None:
            shared.release(self._owner)
            self._owner = None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        with self._gate.shared():
            self._check_open()
            yield

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        with self._write:
            self._check_open()
            yield

    def _check_open(self) -> None:
        if self._owner is None:
            raise IndexUnavailable(f"the vector index {self.directory} is closed")

    # -- VectorIndex -----------------------------------------------------------------------

    def notes(self) -> list[str]:
        if self.predecessor is not None and self.predecessor.exists() and not self.count():
            return [
                f"empty, beside {self.predecessor.name} (an earlier version's index, not read): "
                "run `sfm reindex` to fill it, or set vector_engine: milvus to use that file"
            ]
        return []

    def upsert(self, records: Sequence[VectorRecord]) -> None:
        latest = {r.id: r for r in records}  # one id twice in a batch: the last one
        if not latest:
            return
        for r in latest.values():
            if not _within_int64(r.metadata):
                raise IndexUnavailable(
                    f"the metadata of {r.id} holds an integer outside 64 bits, which the index "
                    "cannot hold (nor compare exactly)"
                )
        records = list(latest.values())
        vectors = _unit([r.vector for r in records], self.dim)
        contexts = _unit(
            [r.vector if r.context_vector is None else r.context_vector for r in records], self.dim
        )
        terms = [
            (postings.parse(r.lexical), postings.parse(r.context_lexical or r.lexical))
            for r in records
        ]
        blobs = [(_blob(lexical), _blob(context)) for lexical, context in terms]
        with self._writing():
            columns = self._columns
            entries = [_entry(r) for r in records]
            added: list[int] = []
            kept: list[tuple[int, tuple[Any, ...]]] = []
            replaced: dict[int, int] = {}  # record -> the label its new entry replaces
            for i, (r, entry) in enumerate(zip(records, entries, strict=True)):
                label = columns.label_of.get(r.id)
                if label is not None and self._same(
                    label, entry, vectors[i], contexts[i], blobs[i]
                ):
                    kept.append((label, entry))
                    continue
                if label is not None:
                    replaced[i] = label
                added.append(i)
            first = len(columns)
            new = [(first + n, *entries[i]) for n, i in enumerate(added)]
            with self._transaction():
                self._forget(list(replaced.values()))
                self._db.executemany(
                    "UPDATE entries SET tenant = ?, namespace = ?, type = ?, importance = ?, "
                    "created_at_ms = ? WHERE label = ?",
                    [(*entry[2:7], label) for label, entry in kept],
                )
                self._db.executemany(
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(*row, *blobs[i]) for row, i in zip(new, added, strict=True)],
                )
                self._db.executemany(
                    "INSERT INTO pending VALUES (?, ?, ?)",
                    [
                        (row[0], vectors[i].tobytes(), contexts[i].tobytes())
                        for row, i in zip(new, added, strict=True)
                    ],
                )
            with self._gate.exclusive():
                for label, entry in kept:
                    columns.update(label, entry)
                self._changed()
            for start in range(0, len(added), ADD_STEP):
                step = added[start : start + ADD_STEP]
                with self._gate.exclusive():  # the new entries live, the ones they replace not
                    self._graphs["vector"].add(vectors[step])
                    self._graphs["context"].add(contexts[step])
                    columns.append([row[1:10] for row in new[start : start + ADD_STEP]])
                    self._zero([replaced[i] for i in step if i in replaced])
                    self._add_terms([terms[i] for i in step])
                    self._changed()
            if added:  # merged outside the gate: searches meanwhile read the segments as were
                self._compact()
            self._unsaved += len(added)
            if self._unsaved >= max(self._save_every, len(columns) // 10):
                self.save()

    def _same(
        self,
        label: int,
        entry: tuple[Any, ...],
        vector: Vectors,
        context: Vectors,
        blobs: tuple[bytes, bytes],
    ) -> bool:
        """Whether a live label already holds this entry's vectors, tokens and metadata (then
        only its other fields change, in place)."""
        columns = self._columns
        return (
            columns.embedding_ids[label] == entry[1]
            and columns.metadata[label] == entry[7]
            and np.array_equal(self._stored("vector")[label], vector)
            and np.array_equal(self._stored("context")[label], context)
            and self._db.execute(
                "SELECT lexical, context_lexical FROM entries WHERE label = ?", (label,)
            ).fetchone()
            == blobs
        )

    def _stored(self, which: str) -> Vectors:
        """The vectors a graph holds, one row per label (a view, not a copy)."""
        graph = self._graphs[which]
        if graph.ntotal == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        storage: Any = self._faiss.downcast_index(graph.storage)  # an IndexFlat
        flat = self._faiss.rev_swig_ptr(storage.get_xb(), graph.ntotal * self.dim)
        rows: Vectors = flat.reshape(graph.ntotal, self.dim)
        return rows

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _forget(self, labels: Sequence[int]) -> None:
        """Mark labels dead in the log (inside a transaction), their metadata and vectors
        gone (an erased memory's metadata may name its subject)."""
        self._db.executemany(
            "UPDATE entries SET live = 0, metadata = '{}', lexical = NULL, context_lexical = NULL "
            "WHERE label = ?",
            [(label,) for label in labels],
        )
        self._db.executemany("DELETE FROM pending WHERE label = ?", [(label,) for label in labels])

    def _zero(self, labels: Sequence[int]) -> None:
        """Labels dead in memory (gate held): out of every filter, their vectors zeroed."""
        for label in labels:
            self._columns.kill(label)
        for index in self._lexicals.values():
            index.kill(labels)
        if labels:
            for which in self._graphs:
                self._stored(which)[list(labels)] = 0.0

    def _changed(self) -> None:
        self._generation += 1
        with self._masks_lock:
            self._masks.clear()

    def delete(self, ids: Sequence[str]) -> None:
        with self._writing():
            labels = sorted({self._columns.label_of[i] for i in ids if i in self._columns.label_of})
            if not labels:
                return
            with self._transaction():
                self._forget(labels)
            with self._gate.exclusive():
                self._zero(labels)
                self._changed()

    def _allowed(self, tenant: str, namespace: str | None, where: Node | None) -> Allowed:
        """The labels a search may return (gate held), kept for the next leg of the same
        search: the dense and context legs ask for the same."""
        key = (self._generation, tenant, namespace, where)
        with self._masks_lock:
            found = self._masks.get(key)
        if found is None:
            mask = self._columns.scope(tenant, namespace)
            if where is not None:
                mask &= self._columns.mask(where)
            found = Allowed(mask)
            with self._masks_lock:
                self._masks[key] = found
                while len(self._masks) > _MASKS:
                    self._masks.popitem(last=False)
        return found

    def search(
        self,
        vector: npt.NDArray[np.float32],
        *,
        tenant: str,
        namespace: str | None,
        where: Node | None,
        top_k: int,
        context: bool = False,
    ) -> list[VectorHit]:
        query = _unit(vector, self.dim)
        return self._nearest(query, tenant, namespace, where, top_k, context)[0]

    def nearest(
        self, vectors: npt.NDArray[np.float32], *, tenant: str, namespace: str, top_k: int
    ) -> list[list[VectorHit]]:
        if len(vectors) == 0:
            return []
        return self._nearest(_unit(vectors, self.dim), tenant, namespace, None, top_k, False)

    def _nearest(
        self,
        queries: Vectors,
        tenant: str,
        namespace: str | None,
        where: Node | None,
        top_k: int,
        context: bool,
    ) -> list[list[VectorHit]]:
        graph = self._graphs["context" if context else "vector"]
        with self._reading():
            allowed = self._allowed(tenant, namespace, where)
            if allowed.count == 0:
                return [[] for _ in queries]
            exact = allowed.count <= self._exact_rows or allowed.share < self._exact_share
            found = self._scored(graph, allowed, queries, top_k, exact=exact)
            return [self._hits(row) for row in found]

    def _hits(self, found: Sequence[tuple[int, float]]) -> list[VectorHit]:
        """(label, score) pairs as hits, best first, equal scores by id (gate held): the
        order then does not depend on the order the entries were written in (a data
        directory imported from an export answers as the original did)."""
        ids = self._columns.ids
        hits = [VectorHit(id=ids[label], score=score) for label, score in found]
        return sorted(hits, key=lambda h: (-h.score, h.id))

    def _scored(
        self, graph: Any, allowed: Allowed, queries: Vectors, top_k: int, *, exact: bool
    ) -> list[list[tuple[int, float]]]:
        """(label, cosine) of each query's best `top_k` allowed rows: `exact`, every allowed
        row scored (faiss's flat scan of the graph's vectors, the bitmap as its selector: no
        copy, and no BLAS threads, which spin against the request threads); else the graph
        walk with the bitmap and `beam`. A walk that the filter cut short of `top_k` results
        is scored exactly instead."""
        faiss = self._faiss
        if exact:
            params = faiss.SearchParameters()
            searched = faiss.downcast_index(graph.storage)
        else:
            width = beam(self.ef, len(allowed.mask), allowed.share)
            params = faiss.SearchParametersHNSW(efSearch=max(width, top_k))
            searched = graph
        params.sel = allowed.selector(faiss)
        scores, labels = searched.search(queries, top_k, params=params)
        found: list[list[tuple[int, float]]] = []
        for q in range(len(queries)):
            row = [
                (int(label), float(s))
                for label, s in zip(labels[q], scores[q], strict=True)
                if label >= 0
            ]
            if not exact and len(row) < min(top_k, allowed.count):
                row = self._scored(graph, allowed, queries[q : q + 1], top_k, exact=True)[0]
            found.append(row)
        return found

    def search_lexical(
        self,
        tokens: str,
        *,
        tenant: str,
        namespace: str | None,
        where: Node | None,
        top_k: int,
        context: bool = False,
    ) -> list[VectorHit]:
        terms = postings.parse(tokens)
        if not len(terms):
            return []
        with self._reading():
            allowed = self._allowed(tenant, namespace, where)
            if allowed.count == 0:
                return []
            index = self._lexicals["context" if context else "vector"]
            return self._hits(index.top(terms, allowed.mask, top_k))

    def vectors(self, ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        with self._reading():
            label_of = self._columns.label_of
            stored = self._stored("vector")
            return {i: stored[label_of[i]].copy() for i in ids if i in label_of}

    def embedding_ids(self, ids: Sequence[str]) -> dict[str, str]:
        """memory id -> embedding id, for the ids the index holds."""
        with self._reading():
            columns = self._columns
            return {
                i: columns.embedding_ids[columns.label_of[i]] for i in ids if i in columns.label_of
            }

    def entries(self) -> Iterator[tuple[str, str]]:
        with self._reading():
            columns = self._columns
            held = [(i, columns.embedding_ids[label]) for i, label in columns.label_of.items()]
        yield from held

    def scrub(self) -> bool:
        """Write the graphs without the dead entries' vectors (zeroed when they died), and
        rewrite the log without their bytes (secure_delete already zeroed freed cells)."""
        with self._writing():
            self.save()  # which also checkpoints the WAL
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return True

    def reset(self) -> None:
        with self._writing(), self._gate.exclusive():
            self._empty()
            self._unsaved = 0
            self._changed()

    def count(self) -> int:
        with self._reading():
            return len(self._columns.label_of)

    def close(self) -> None:
        with self._write:
            if self._owner is None:
                return
            if self._unsaved:
                self.save()
            self._release()
