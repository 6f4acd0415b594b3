"""VectorIndex on Milvus: a Milvus Lite file (embedded) or a server URI, same code."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import subprocess
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from somafractalmemory.errors import IndexLocked, IndexUnavailable
from somafractalmemory.retrieval.filters import (
    PRESENCE_FIELD,
    Node,
    milvus_literal,
    presence_map,
    to_milvus,
)
from somafractalmemory.vectors import shared
from somafractalmemory.vectors.base import VectorHit, VectorRecord
from somafractalmemory.vectors.clock import LocalClock, WriteClock, guarantee, physical
from somafractalmemory.vectors.shared import Gate, collection_name

log = logging.getLogger(__name__)
OPEN_TIMEOUT = 900.0

_ID_LENGTH = 64
_NAME_LENGTH = 256
_UPSERT_CHUNK = 1000


HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
IVF_NLIST = 1024


@dataclass(frozen=True)
class Features:
    """What the collection uses of what its Milvus offers. Asked of the server with a throwaway
    collection when the collection is created, read off the collection's schema afterwards;
    never inferred from a version number."""

    multi_vector: bool = True
    """The context vectors beside the memory vectors (Milvus 2.4+); else a second collection."""
    bm25: bool = True
    """The lexical legs by Milvus BM25 (2.5+); else the caller uses SQL full text."""
    partition_key: bool = False
    """The tenant as partition key (used on servers): a tenant's search reads its partition."""

    def notes(self) -> list[str]:
        """What works differently here, one line each (logged at start, shown by /readyz)."""
        out = []
        if not self.multi_vector:
            out.append("one vector field per collection: context vectors in a second collection")
        if not self.bm25:
            out.append("no BM25 function: the lexical legs come from SQL full text")
        return out


def search_params(metric: str, index_type: str, limit: int, ef: int) -> dict[str, Any]:
    """Per-request search parameters: the HNSW beam (`ef`) and IVF probes grow with `limit`
    (the candidate pool of a leg), so a larger pool does not cost recall."""
    params: dict[str, Any] = {}
    if metric != "BM25":
        if index_type == "HNSW":
            params = {"ef": max(ef, limit)}
        elif index_type == "IVF_FLAT":
            params = {"nprobe": max(16, min(IVF_NLIST, ef // 2))}
    return {"metric_type": metric, "params": params}


def index_params(index_type: str) -> dict[str, Any]:
    return {
        "HNSW": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
        "IVF_FLAT": {"nlist": IVF_NLIST},
    }.get(index_type, {})


class MilvusIndex:
    """Collection `collection_name(model, dim)`: id, vector and the scalar fields filters use;
    on a server with one vector field per collection, the context vectors in `<name>_context`."""

    def __init__(
        self,
        uri: str,
        *,
        model: str,
        dim: int,
        token: str | None = None,
        db_name: str | None = None,
        timeout: float = 10.0,
        index_type: str = "auto",
        ef: int = 64,
        consistency: str = "auto",
        clock: WriteClock | None = None,
    ) -> None:
        self.uri = uri
        self.db_name = db_name
        self.dim = dim
        self.name = collection_name(model, dim)
        self.is_lite = not uri.startswith(("http://", "https://", "tcp://", "unix:"))
        # Milvus Lite searches its growing segments through a built-in approximate index
        # whatever index is declared, unless it is FLAT (docs/benchmarks.md measures both).
        self.index_type = (
            index_type if index_type != "auto" else ("FLAT" if self.is_lite else "HNSW")
        )
        self.context_index_type = self.index_type  # both: what the collections hold, once open
        self.ef = ef
        # Strong costs a Milvus server a time tick (200 ms by default) per search; Session
        # waits only for the writes noted on `clock` (vectors/clock.py). Milvus Lite is one
        # process with no tick: Strong.
        level = "Strong" if consistency == "auto" else consistency
        self.consistency = "Strong" if self.is_lite and level == "Session" else level
        self._clock: WriteClock = clock if clock is not None else LocalClock()
        self.features = Features()
        self._timeout = timeout
        # Opening loads the whole collection into memory (more than 10 s at 100,000
        # memories on Milvus Lite here): not bounded by the per-request timeout.
        self._open_timeout = max(timeout, OPEN_TIMEOUT)
        self._gate = Gate()
        self._owner: IO[str] | None = self._claim_lite_file() if self.is_lite else None
        try:
            self._client = self._connect(uri, token, db_name)
            try:
                self._ensure_collection()
            except Exception as exc:
                raise IndexUnavailable(f"cannot prepare collection {self.name}: {exc}") from exc
        except BaseException:
            self._release_lite_file()
            raise
        for note in self.notes():
            log.warning("vector index %s: %s", self.name, note)

    @property
    def lexical(self) -> bool:
        return self.features.bm25

    def notes(self) -> list[str]:
        notes = self.features.notes()
        if not self.is_lite and not self.features.partition_key:
            notes.append("no usable partition key: tenant scoping is a filter over all tenants")
        return notes

    @property
    def context_name(self) -> str:
        return self.name if self.features.multi_vector else f"{self.name}_context"

    def _claim_lite_file(self) -> IO[str]:
        return _claim(Path(self.uri))

    def _release_lite_file(self) -> None:
        if self._owner is not None:
            shared.release(self._owner)
            self._owner = None

    def _connect(self, uri: str, token: str | None, db_name: str | None) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation inside milvus-lite
            from pymilvus import MilvusClient

            kwargs: dict[str, Any] = {"uri": uri, "timeout": self._timeout}
            if token:
                kwargs["token"] = token
            if db_name:
                kwargs["db_name"] = db_name
            try:
                return MilvusClient(**kwargs)
            except Exception as exc:
                if self.is_lite and "Open local milvus failed" in str(exc):
                    raise IndexLocked(
                        f"the Milvus Lite file {uri} is open in another process (one process "
                        "owns it: use the running server's API, or stop it first)"
                    ) from exc
                raise IndexUnavailable(f"cannot connect to Milvus at {uri}: {exc}") from exc

    def _schema(self, features: Features, *, context: bool = False) -> Any:
        """The memory collection's schema (or, with `context`, the second collection's)."""
        from pymilvus import DataType, Function, FunctionType

        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_ID_LENGTH)
        if not context:
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            schema.add_field("embedding_id", DataType.VARCHAR, max_length=_ID_LENGTH)
        schema.add_field(
            "tenant",
            DataType.VARCHAR,
            max_length=_NAME_LENGTH,
            is_partition_key=features.partition_key,
        )
        schema.add_field("namespace", DataType.VARCHAR, max_length=_NAME_LENGTH)
        schema.add_field("type", DataType.VARCHAR, max_length=16)
        schema.add_field("importance", DataType.FLOAT)
        schema.add_field("created_at", DataType.INT64)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field(PRESENCE_FIELD, DataType.JSON)
        if context or features.multi_vector:
            # The memory with its neighbouring episodes, for the context legs.
            schema.add_field("context_vector", DataType.FLOAT_VECTOR, dim=self.dim)
        if features.bm25 and not context:
            for source, target in (("lexical", "sparse"), ("context_lexical", "context_sparse")):
                # BM25 over opaque per-tenant tokens: split on spaces, nothing else.
                schema.add_field(
                    source,
                    DataType.VARCHAR,
                    max_length=65_535,
                    enable_analyzer=True,
                    analyzer_params={"tokenizer": "whitespace"},
                )
                schema.add_field(target, DataType.SPARSE_FLOAT_VECTOR)
                schema.add_function(
                    Function(
                        name=f"bm25_{target}",
                        function_type=FunctionType.BM25,
                        input_field_names=[source],
                        output_field_names=[target],
                    )
                )
        return schema

    def _probe(self) -> Features:
        """Ask the server what it can do: create a throwaway collection with everything and
        see what it kept (a server without BM25 drops the function silently); then whether a
        tenant-filtered search works on a partition key. Nothing of the first collection is
        indexed or loaded: a server before 2.4 crashes indexing a sparse vector field."""
        client = self._client
        wanted = Features(multi_vector=True, bm25=True, partition_key=True)
        with self._throwaway() as name:
            try:
                client.create_collection(
                    name, schema=self._schema(wanted), timeout=self._open_timeout
                )
            except Exception as exc:  # "multiple vector fields is not supported" before 2.4
                log.info("Milvus refused several vector fields per collection: %s", exc)
                wanted = dataclasses.replace(wanted, multi_vector=False)
                client.create_collection(
                    name, schema=self._schema(wanted), timeout=self._open_timeout
                )
            kept = _features_of(client.describe_collection(name, timeout=self._open_timeout))
        if kept.partition_key and not self.is_lite:
            kept = dataclasses.replace(kept, partition_key=self._filters_by_tenant())
        return kept

    @contextlib.contextmanager
    def _throwaway(self) -> Iterator[str]:
        name = f"sfm_probe_{uuid.uuid4().hex[:12]}"
        try:
            yield name
        finally:
            with contextlib.suppress(Exception):
                self._client.drop_collection(name, timeout=self._open_timeout)

    def _filters_by_tenant(self) -> bool:
        """Whether an upserted row is found by a tenant-filtered search with the tenant as
        partition key. Milvus Lite served over gRPC keeps the key in the schema, then rejects
        the filter; the Milvus 2.3.5 server finds nothing it upserted into such a collection."""
        from pymilvus import DataType

        client = self._client
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_ID_LENGTH)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("tenant", DataType.VARCHAR, max_length=_NAME_LENGTH, is_partition_key=True)
        schema.add_field("namespace", DataType.VARCHAR, max_length=_NAME_LENGTH)
        with self._throwaway() as name:
            try:
                client.create_collection(
                    name, schema=schema, consistency_level="Strong", timeout=self._open_timeout
                )
                self._build_index(name, "vector", "AUTOINDEX")
                client.load_collection(name, timeout=self._open_timeout)
                row = {"id": "p", "vector": [1.0] * self.dim, "tenant": "t", "namespace": "n"}
                client.upsert(name, [row], timeout=self._open_timeout)
                found = client.search(
                    name,
                    data=[[1.0] * self.dim],
                    anns_field="vector",
                    filter='tenant == "t" and namespace == "n"',
                    limit=1,
                    timeout=self._open_timeout,
                )
                if [h["id"] for h in found[0]] == ["p"]:
                    return True
                log.info("Milvus does not find rows upserted under a partition key")
                return False
            except Exception as exc:
                log.info("Milvus keeps a partition key but cannot filter by it: %s", exc)
                return False

    def _create(self, name: str, schema: Any) -> None:
        client = self._client
        try:
            client.create_collection(
                name, schema=schema, consistency_level="Strong", timeout=self._open_timeout
            )
        except Exception:
            # Another worker process may have created it a moment earlier.
            if not client.has_collection(name, timeout=self._open_timeout):
                raise
        fields = {f.name for f in schema.fields}
        held = set(client.list_indexes(name, timeout=self._open_timeout))
        for field in ("vector", "context_vector"):
            if field in fields and field not in held:
                self._build_index(name, field, self.index_type)
        for sparse in ("sparse", "context_sparse"):
            if sparse in fields and sparse not in held:
                index = client.prepare_index_params()
                index.add_index(sparse, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
                client.create_index(name, index, timeout=self._open_timeout)

    def _build_index(self, name: str, field: str, index_type: str) -> None:
        """`index_type` over `field`, or AUTOINDEX where the engine does not offer that type
        (Milvus Lite served over gRPC has no HNSW)."""
        if field == "context_vector" and self.is_lite:
            index_type = "AUTOINDEX"
        index = self._client.prepare_index_params()
        index.add_index(
            field, index_type=index_type, metric_type="COSINE", params=index_params(index_type)
        )
        try:
            self._client.create_index(name, index, timeout=self._open_timeout)
        except Exception as exc:
            if index_type == "AUTOINDEX":
                raise
            log.warning("%s.%s: no %s index here (%s); AUTOINDEX", name, field, index_type, exc)
            self._build_index(name, field, "AUTOINDEX")

    def _ensure_collection(self) -> None:
        client = self._client
        if client.has_collection(self.name, timeout=self._open_timeout):
            self.features = _features_of(
                client.describe_collection(self.name, timeout=self._open_timeout)
            )
            try:
                self._reindex_if_changed()
            except Exception as exc:  # e.g. other workers hold a server's collection loaded
                log.warning("memory vectors keep their index (re-indexing failed: %s)", exc)
        else:
            probed = self._probe()
            self.features = Features(
                multi_vector=probed.multi_vector,
                bm25=probed.bm25,
                partition_key=probed.partition_key and not self.is_lite,
            )
            self._create(self.name, self._schema(self.features))
        if not self.features.multi_vector:
            if not client.has_collection(self.context_name, timeout=self._open_timeout):
                self._create(self.context_name, self._schema(self.features, context=True))
            client.load_collection(self.context_name, timeout=self._open_timeout)
        client.load_collection(self.name, timeout=self._open_timeout)
        # Search parameters follow the indexes the collections hold.
        self.index_type = self._held(self.name, "vector")
        self.context_index_type = self._held(self.context_name, "context_vector")

    def _held(self, collection: str, field: str) -> str:
        held = self._client.describe_index(collection, field, timeout=self._open_timeout) or {}
        return str(held.get("index_type", ""))

    def held_index_type(self) -> str:
        """The index type the collection holds for the memory vectors."""
        return self._held(self.name, "vector")

    def _reindex_if_changed(self) -> None:
        """Build the memory vectors' index again when its type is not the configured one
        (Milvus keeps the vectors; FLAT over 100,000 takes seconds)."""
        client = self._client
        held = self.held_index_type()
        if held == self.index_type:
            return
        log.warning("re-indexing %s: memory vectors %s -> %s", self.name, held, self.index_type)
        client.release_collection(self.name, timeout=self._open_timeout)
        client.drop_index(self.name, "vector", timeout=self._open_timeout)
        self._build_index(self.name, "vector", self.index_type)

    def _call(self, what: str, method: str, *args: Any, collection: str = "", **kwargs: Any) -> Any:
        """The client's `method` on the collection; the client is looked up inside the gate
        (a scrub replaces it)."""
        try:
            with self._gate.shared():
                fn = getattr(self._client, method)
                return fn(collection or self.name, *args, timeout=self._timeout, **kwargs)
        except Exception as exc:
            log.warning("milvus %s failed: %s", what, exc)
            raise IndexUnavailable(f"vector index {what} failed: {exc}") from exc

    def _reads(self, collection: str) -> dict[str, Any]:
        """The consistency arguments of a read of `collection`: at Session, a guarantee
        timestamp that covers every write noted on the clock (by any worker sharing it)."""
        if self.consistency != "Session":
            return {"consistency_level": self.consistency}
        try:
            ms = self._clock.latest(self._clock_key(collection))
        except Exception as exc:  # the shared clock is down: wait a tick instead
            log.warning("write clock unreadable, this read is Strong: %s", exc)
            return {"consistency_level": "Strong"}
        return {"consistency_level": "Customized", "guarantee_timestamp": guarantee(ms)}

    def _wrote(self, collections: Sequence[str]) -> None:
        """Note acknowledged writes to `collections`: one timestamp the server allocates
        after the acknowledgements (its TSO is monotonic, so it follows the writes' own). Not
        a write's mutation timestamp, which pymilvus does not keep for a delete on the 2.3.5
        server, and never this machine's clock, which may differ from the server's."""
        if self.consistency != "Session" or not collections:
            return
        try:
            with self._gate.shared():
                allocated = _allocated_timestamp(self._client, self._timeout)
            times = dict.fromkeys(collections, allocated)
        except Exception as exc:  # an old server without the call: the writes' own, if kept
            from pymilvus.client import ts_utils

            log.warning("Milvus allocated no timestamp (%s): the write's own is noted", exc)
            address = self._client._get_connection().server_address
            times = {
                c: ts_utils.get_collection_ts(c, address, self.db_name or "") for c in collections
            }
        try:
            for collection, hybrid in times.items():
                self._clock.note(self._clock_key(collection), physical(hybrid))
        except Exception as exc:
            log.warning("write clock not updated (other workers may read a tick late): %s", exc)

    def _clock_key(self, collection: str) -> str:
        return f"{self.uri}/{self.db_name or 'default'}/{collection}"

    def _collections(self) -> list[str]:
        return list(dict.fromkeys([self.name, self.context_name]))

    def upsert(self, records: Sequence[VectorRecord]) -> None:
        features = self.features
        main: list[dict[str, Any]] = []
        context: list[dict[str, Any]] = []
        for r in records:
            row: dict[str, Any] = {
                "id": r.id,
                "tenant": r.tenant,
                "namespace": r.namespace,
                "type": r.type,
                "importance": float(r.importance),
                "created_at": int(r.created_at_ms),
                "metadata": r.metadata,
                PRESENCE_FIELD: presence_map(r.metadata),
            }
            around = np.asarray(
                r.vector if r.context_vector is None else r.context_vector, dtype=np.float32
            ).tolist()
            if features.multi_vector:
                row["context_vector"] = around
            else:
                context.append({**row, "context_vector": around})
            row["vector"] = np.asarray(r.vector, dtype=np.float32).tolist()
            row["embedding_id"] = r.embedding_id
            if features.bm25:
                row["lexical"] = r.lexical
                row["context_lexical"] = r.context_lexical or r.lexical
            main.append(row)
        # The context rows first: the memory collection's entry is what says "indexed".
        written: list[str] = []
        try:
            for rows, collection in ((context, self.context_name), (main, self.name)):
                for start in range(0, len(rows), _UPSERT_CHUNK):
                    chunk = rows[start : start + _UPSERT_CHUNK]
                    self._call("upsert", "upsert", chunk, collection=collection)
                    written.append(collection)
        finally:  # what was acknowledged, also when a later call failed
            self._wrote(list(dict.fromkeys(written)))

    def delete(self, ids: Sequence[str]) -> None:
        written: list[str] = []
        try:
            for collection in self._collections() if ids else []:
                self._call("delete", "delete", ids=list(ids), collection=collection)
                written.append(collection)
        finally:
            self._wrote(written)

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
        return self._search(
            np.asarray(vector, dtype=np.float32).tolist(),
            "context_vector" if context else "vector",
            "COSINE",
            tenant=tenant,
            namespace=namespace,
            where=where,
            top_k=top_k,
            collection=self.context_name if context else self.name,
        )

    def nearest(
        self, vectors: npt.NDArray[np.float32], *, tenant: str, namespace: str, top_k: int
    ) -> list[list[VectorHit]]:
        if len(vectors) == 0:
            return []
        result = self._call(
            "search",
            "search",
            data=np.asarray(vectors, dtype=np.float32).tolist(),
            anns_field="vector",
            filter=f"tenant == {milvus_literal(tenant)} and "
            f"namespace == {milvus_literal(namespace)}",
            limit=top_k,
            output_fields=["id"],
            search_params=search_params("COSINE", self.index_type, top_k, self.ef),
            **self._reads(self.name),
        )
        return [
            [VectorHit(id=str(h["id"]), score=float(h["distance"])) for h in row] for row in result
        ]

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
        if not self.features.bm25:
            raise IndexUnavailable("this Milvus has no BM25 function (the lexical legs are SQL's)")
        if not tokens:
            return []
        try:
            return self._search(
                tokens,
                "context_sparse" if context else "sparse",
                "BM25",
                tenant=tenant,
                namespace=namespace,
                where=where,
                top_k=top_k,
                collection=self.name,
            )
        except IndexUnavailable as exc:
            # Milvus Lite cannot score BM25 before the collection holds a document (its
            # average length is 0, the scores NaN): nothing to find is not a failure.
            if "NaN or Inf" in exc.message and self.count() == 0:
                return []
            raise

    def _search(
        self,
        query: Any,
        field: str,
        metric: str,
        *,
        tenant: str,
        namespace: str | None,
        where: Node | None,
        top_k: int,
        collection: str,
    ) -> list[VectorHit]:
        clauses = [f"tenant == {milvus_literal(tenant)}"]
        if namespace is not None:
            clauses.append(f"namespace == {milvus_literal(namespace)}")
        if where is not None:
            clauses.append(f"({to_milvus(where)})")
        index_type = self.context_index_type if field == "context_vector" else self.index_type
        result = self._call(
            "search",
            "search",
            data=[query],
            anns_field=field,
            filter=" and ".join(clauses),
            limit=top_k,
            output_fields=["id"],
            search_params=search_params(metric, index_type, top_k, self.ef),
            collection=collection,
            **self._reads(collection),
        )
        return [VectorHit(id=str(hit["id"]), score=float(hit["distance"])) for hit in result[0]]

    def _get(self, ids: Sequence[str], field: str) -> list[dict[str, Any]]:
        """`field` of those `ids` the index holds."""
        if not ids:
            return []
        rows: list[dict[str, Any]] = self._call(
            "get", "get", ids=list(ids), output_fields=[field], **self._reads(self.name)
        )
        return rows

    def vectors(self, ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        return {
            str(row["id"]): np.asarray(row["vector"], dtype=np.float32)
            for row in self._get(ids, "vector")
        }

    def embedding_ids(self, ids: Sequence[str]) -> dict[str, str]:
        """memory id -> embedding id, for the ids the index holds."""
        return {str(row["id"]): str(row["embedding_id"]) for row in self._get(ids, "embedding_id")}

    def entries(self, batch_size: int = 1000) -> Iterator[tuple[str, str]]:
        """Every (memory id, embedding id) the index holds, streamed."""
        try:
            iterator = self._client.query_iterator(
                self.name,
                batch_size=batch_size,
                filter='id != ""',
                output_fields=["id", "embedding_id"],
                timeout=self._timeout,
            )
            while rows := iterator.next():
                for row in rows:
                    yield str(row["id"]), str(row["embedding_id"])
            iterator.close()
        except IndexUnavailable:
            raise
        except Exception as exc:
            raise IndexUnavailable(f"vector index scan failed: {exc}") from exc

    def scrub(self) -> bool:
        """Remove the bytes of deleted entries from storage. Milvus Lite keeps them in its
        SQLite file's free pages: the file is vacuumed (rewritten without free pages) by a
        second SQLite connection while this process's calls wait; the engine keeps running
        and sees the same rows. A server compacts its segments (deleted entries go; object
        storage is cleaned by its garbage collection). Returns whether it was done."""
        try:
            if not self.is_lite:
                with self._gate.shared():
                    for collection in self._collections():
                        self._client.compact(collection, timeout=self._timeout)
                return True
            with self._gate.exclusive():
                path = Path(self.uri)
                with contextlib.closing(sqlite3.connect(path, timeout=self._timeout)) as db:
                    db.execute("PRAGMA secure_delete = ON")
                    db.execute("VACUUM")
            return True
        except Exception as exc:  # a served Milvus Lite cannot compact; a busy file waits
            log.warning("vector index scrub not done: %s", exc)
            return False

    def reset(self) -> None:
        """Drop the collections and create them empty."""
        with self._gate.exclusive():
            for collection in self._collections():
                self._client.drop_collection(collection, timeout=self._timeout)
            self._ensure_collection()

    def count(self) -> int:
        rows = self._call(
            "count",
            "query",
            filter="",
            output_fields=["count(*)"],
            **self._reads(self.name),
        )
        return int(rows[0]["count(*)"])

    def close(self) -> None:
        with self._gate.exclusive():
            self._client.close()
            if self.is_lite:
                # pymilvus keeps the Lite engine (a child process holding the file) until
                # the interpreter exits; stopping it lets another process open the file.
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.uri)
            self._release_lite_file()


def _allocated_timestamp(client: Any, timeout: float) -> int:
    """A fresh hybrid timestamp from the server's TSO (the AllocTimestamp call, which the
    MilvusClient API does not wrap)."""
    from pymilvus.grpc_gen import milvus_pb2

    stub = client._get_connection()._stub
    answer = stub.AllocTimestamp(milvus_pb2.AllocTimestampRequest(), timeout=timeout)
    if answer.status.code != 0 or not answer.timestamp:
        raise RuntimeError(answer.status.reason or "no timestamp")
    return int(answer.timestamp)


def _features_of(described: dict[str, Any]) -> Features:
    """The features a collection's schema shows (`describe_collection`)."""
    fields = {f["name"]: f for f in described.get("fields", [])}
    return Features(
        multi_vector="context_vector" in fields and "vector" in fields,
        # A server drops a function it does not know; Milvus Lite lists none but marks its
        # output fields.
        bm25=bool(described.get("functions"))
        or any(f.get("is_function_output") for f in fields.values()),
        partition_key=bool(fields.get("tenant", {}).get("is_partition_key")),
    )


def _claim(path: Path) -> IO[str]:
    """Hold our own lock on a Lite file while this process uses it.

    milvus-lite's own lock is not enough: a second process that fails to open the file
    deletes the lock file on its way out, and a third then opens it beside the first.
    """
    return shared.claim(path.with_name(path.name + ".owner"), f"the Milvus Lite file {path}")


class LiteServer:
    """Milvus Lite's own engine serving a Lite file over gRPC on `host:port`.

    Several processes (`sfm serve --workers N`) can then share one index through the same
    client code path as a Milvus server. One machine only, for development, tests and
    benchmarks: production runs Milvus standalone or a cluster.
    """

    def __init__(self, path: Path, host: str, port: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation inside milvus-lite
            from milvus_lite.server import Server

        self.uri = f"http://{host}:{port}"
        self._owner: IO[str] | None = _claim(path)
        self._server = Server(str(path), f"{host}:{port}")
        if not (self._server.init() and self._server.start()):
            self.stop()
            raise IndexUnavailable(f"Milvus Lite could not serve {path} on {host}:{port}")

    def running(self) -> bool:
        process = getattr(self._server, "_p", None)
        return process is not None and process.poll() is None

    def stop(self) -> None:
        process = getattr(self._server, "_p", None)
        if process is not None and process.poll() is None:
            process.terminate()  # the engine flushes and exits on SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        self._server.stop()  # SIGKILL if it still runs; removes milvus-lite's lock file
        if self._owner is not None:
            shared.release(self._owner)
            self._owner = None
