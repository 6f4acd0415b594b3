"""SQL is the source of truth: every memory, tenant and pending vector write lives here."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from somafractalmemory import crypto
from somafractalmemory.conf import get_config
from somafractalmemory.memories import identity
from somafractalmemory.retrieval import filters

DEFAULT_TENANT = "default"
EPISODE_ORDER = ("created_at", "stored_at", "id")
"""An episode's place in its namespace: event time, then arrival, then id."""


def episodes_of(tenant: str, namespace: str) -> models.Q:
    """A namespace's episodes. Level 0, which every episode is, lets the planner seek the
    (tenant, namespace, level, created_at) index with a time range beside it: with the
    tenant and type alone SQLite walked every episode of the tenant."""
    return models.Q(tenant_id=tenant, namespace=namespace, level=0, type="episodic")


DELETE_ATTEMPTS = 5
T = TypeVar("T")


class MemoryType(models.TextChoices):
    EPISODIC = "episodic"
    SEMANTIC = "semantic"
    SUMMARY = "summary"


class Tenant(models.Model):
    """Owner of namespaces, memories and API keys. The built-in `default` tenant serves
    requests without a key when authentication is optional (the embedded default)."""

    id = models.CharField(primary_key=True, max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    wrapped_key = models.TextField(
        blank=True, default="", help_text="The tenant's data key, wrapped by the master key."
    )
    max_memories = models.PositiveIntegerField(null=True, blank=True)
    max_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return self.id


# -- encryption at rest -------------------------------------------------------------------

_keys: dict[str, tuple[str, bytes]] = {}  # tenant -> (wrapped key, data key)
_keys_lock = threading.Lock()


def data_key(tenant: str, *, check: bool = False, create: bool = True) -> bytes:
    """The tenant's data key (made and wrapped on first use; cached in this process).

    `check` re-reads the wrapped key from the database (one query), so that a tenant
    deleted and created again by another process is not sealed with its old key: stores
    check, reads of existing rows use the cache."""
    held = _keys.get(tenant)
    if held is not None and not check:
        return held[1]
    with _keys_lock:
        wrapped = Tenant.objects.filter(id=tenant).values_list("wrapped_key", flat=True).first()
        if held is not None and wrapped == held[0]:
            return held[1]
        masters = crypto.master_keys(get_config())
        made = 0
        if not wrapped and not create:
            raise crypto.DecryptionFailed(f"tenant {tenant!r} has no data key")
        if not wrapped:
            Tenant.objects.get_or_create(id=tenant)
            # Only the first writer's key is kept: concurrent first uses all read it back.
            made = Tenant.objects.filter(id=tenant, wrapped_key="").update(
                wrapped_key=crypto.wrap(crypto.new_data_key(), tenant, masters[0])
            )
            wrapped = Tenant.objects.values_list("wrapped_key", flat=True).get(id=tenant)
        key = crypto.unwrap(wrapped, tenant, masters)
        # A key made inside a transaction is not kept until it is committed: a rollback
        # would otherwise leave this process sealing with a key the database never stored.
        if not (made and transaction.get_connection().in_atomic_block):
            _keys[tenant] = (wrapped, key)
        else:
            _keys.pop(tenant, None)
        return key


def forget_data_key(tenant: str) -> None:
    with _keys_lock:
        _keys.pop(tenant, None)


class SealedTextField(models.TextField):
    """Text stored sealed with its row's tenant's data key; plaintext in Python."""

    def pre_save(self, model_instance: Any, add: bool) -> Any:
        value = getattr(model_instance, self.attname)
        if value is None:
            return None
        tenant = model_instance.tenant_id
        return crypto.seal(data_key(tenant), tenant, self.name, self.to_text(value))

    def to_text(self, value: Any) -> str:
        return str(value)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None:
            return None
        tenant = crypto.sealed_tenant(value)
        if tenant is None:
            return self.from_text(value)
        try:
            text = crypto.open_sealed(data_key(tenant, create=False), self.name, value)
        except crypto.DecryptionFailed:
            # Another process may have replaced the tenant's key (deleted and re-created):
            # read it again before giving up.
            text = crypto.open_sealed(data_key(tenant, check=True, create=False), self.name, value)
        return self.from_text(text)

    def from_text(self, text: str) -> Any:
        return text


class SealedJSONField(SealedTextField):
    """A JSON object stored sealed (see SealedTextField); a dict in Python."""

    _pyi_private_set_type: dict[str, Any]  # type: ignore[assignment]  # for django-stubs
    _pyi_private_get_type: dict[str, Any]  # type: ignore[assignment]

    def to_text(self, value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    def from_text(self, text: str) -> Any:
        return json.loads(text)

    def get_prep_value(self, value: Any) -> Any:
        # pre_save has sealed it already; anything else is serialised as it is.
        return value if value is None or isinstance(value, str) else self.to_text(value)


class SpeakerField(models.CharField):
    """The keyed tokens of `metadata.speaker` (identity.speaker_tokens), derived from the
    metadata on every save and bulk insert, so no write path leaves them stale."""

    def pre_save(self, model_instance: Any, add: bool) -> Any:
        value = identity.speaker_tokens(model_instance.metadata, model_instance.tenant_id)
        setattr(model_instance, self.attname, value)
        return value


class ValidFromField(models.DateTimeField):
    """When a memory becomes valid; left unset, its event time, or when it was recorded if
    that is earlier (a memory about a future event is valid from when the service learned
    it). Filled on every save and bulk insert, so no write path leaves it unset."""

    def pre_save(self, model_instance: Any, add: bool) -> Any:
        value = getattr(model_instance, self.attname)
        if value is None:
            value = default_valid_from(model_instance.created_at, model_instance.stored_at)
            setattr(model_instance, self.attname, value)
        return value


def default_valid_from(created_at: datetime, recorded_at: datetime) -> datetime:
    """When a memory without a `valid_from` of its own becomes valid: its event time, or
    when it was recorded if that is earlier."""
    return min(created_at, recorded_at)


SUPERSEDES = "supersedes"
"""The link from a memory to the version it replaced (a `key`'s previous one, or a store's
`supersedes`)."""


def hidden_because(
    valid_from: datetime,
    valid_until: datetime | None,
    expires_at: datetime | None,
    *,
    as_of: datetime,
    now: datetime,
) -> str | None:
    """Why a memory is out of searches and listings at `as_of` (None: it is in): `expired`
    (its expiry has passed; always checked against `now`), `not_yet_valid` (valid from
    later than `as_of`) or `no_longer_valid` (superseded or closed at or before `as_of`)."""
    if expires_at is not None and expires_at <= now:
        return "expired"
    if valid_from > as_of:
        return "not_yet_valid"
    if valid_until is not None and valid_until <= as_of:
        return "no_longer_valid"
    return None


VALIDITY_FIELDS = ("valid_from", "valid_until", "expires_at")
"""The columns `hidden_because` reads."""


def valid_at(as_of: datetime, now: datetime) -> models.Q:
    """`hidden_because` is None, in SQL: the rows valid at `as_of` and not expired `now`."""
    return (
        models.Q(valid_from__lte=as_of)
        & (models.Q(valid_until__isnull=True) | models.Q(valid_until__gt=as_of))
        & (models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now))
    )


def last_seen(created_at: datetime, last_accessed_at: datetime | None) -> datetime:
    """A memory's event time or its last recall, the later (Memory.last_seen, from fields)."""
    if last_accessed_at and last_accessed_at > created_at:
        return last_accessed_at
    return created_at


class Memory(models.Model):
    id = models.CharField(primary_key=True, max_length=40)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memories")
    namespace = models.CharField(max_length=128)
    type = models.CharField(max_length=16, choices=MemoryType.choices, default=MemoryType.EPISODIC)
    content = SealedTextField()
    metadata = SealedJSONField(default=dict)
    size = models.PositiveIntegerField(
        default=0, help_text="UTF-8 bytes of the content (quotas count this, not ciphertext)."
    )
    tokens = models.TextField(
        blank=True, default="", help_text="Keyed lexical tokens (SQL full text, no plaintext)."
    )
    context_tokens = models.TextField(
        blank=True,
        default="",
        help_text="Keyed tokens of the memory with its neighbouring episodes, written with its "
        "vector where SQL full text serves the lexical legs (lexical_engine, no Milvus BM25).",
    )
    speaker = SpeakerField(
        max_length=80,
        blank=True,
        default="",
        help_text="Keyed tokens of metadata.speaker (who said it; ranking's speaker signal).",
    )
    importance = models.FloatField(default=0.5)
    embedding_id = models.CharField(max_length=40)
    created_at = models.DateTimeField(help_text="Event time: when the memory happened.")
    stored_at = models.DateTimeField(
        default=timezone.now,
        help_text="When the service recorded it (the API's `recorded_at`, never set by "
        "clients; an import keeps the original's); orders episodes with one event time.",
    )
    key = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="A client's identity for a fact: a new memory with the same key in the "
        "namespace is its next version (the previous one's validity ends).",
    )
    valid_from = ValidFromField(
        help_text="Valid from (default: its event time, or when it was recorded if earlier)."
    )
    valid_until = models.DateTimeField(
        null=True, blank=True, help_text="Valid until (exclusive); null: still valid."
    )
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Out of searches and listings from this instant."
    )
    updated_at = models.DateTimeField(auto_now=True)
    access_count = models.PositiveIntegerField(default=0)
    last_accessed_at = models.DateTimeField(null=True, blank=True)
    strength = models.FloatField(default=1.0, help_text="Grows when recalled, fades with time.")
    content_hash = models.CharField(max_length=64, db_index=True, default="")
    level = models.PositiveSmallIntegerField(
        default=0, help_text="0 episodes, 1 semantic memories, 2 and up summaries."
    )
    span_end = models.DateTimeField(
        null=True, blank=True, help_text="Consolidated: event time of the latest child."
    )
    sources_hash = models.CharField(
        max_length=64, blank=True, default="", help_text="Consolidated: children it summarizes."
    )
    archived_at = models.DateTimeField(
        null=True, blank=True, help_text="Archived by forgetting: out of search, restorable."
    )
    considered_at = models.DateTimeField(
        null=True, blank=True, help_text="When consolidation last grouped this memory's level."
    )

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "namespace", "-created_at", "-id"], name="mem_list"),
            models.Index(fields=["tenant", "type", "-created_at", "-id"], name="mem_type"),
            models.Index(fields=["tenant", "namespace", "level", "created_at"], name="mem_level"),
            models.Index(
                fields=["tenant", "namespace", "key", "valid_from"],
                name="mem_key",
                condition=~models.Q(key=""),
            ),
        ]
        constraints = [
            # One open version per key: concurrent stores of a key cannot both leave theirs
            # open (the loser's transaction fails, and is tried again on what won).
            models.UniqueConstraint(
                fields=["tenant", "namespace", "key"],
                name="key_open_once",
                condition=~models.Q(key="") & models.Q(valid_until__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def last_seen(self) -> datetime:
        """When the memory last mattered: its event time or its last recall, the later."""
        return last_seen(self.created_at, self.last_accessed_at)

    def hidden_because(self, *, as_of: datetime, now: datetime) -> str | None:
        """Why it is out of searches at `as_of` (module function `hidden_because`)."""
        return hidden_because(
            self.valid_from, self.valid_until, self.expires_at, as_of=as_of, now=now
        )

    @property
    def recorded_at(self) -> datetime:
        """When the service stored it (the API's name for `stored_at`)."""
        return self.stored_at

    @property
    def status(self) -> str:
        """Now: `valid`, or why searches and listings leave it out (`hidden_because`)."""
        now = timezone.now()
        return self.hidden_because(as_of=now, now=now) or "valid"

    @property
    def place(self) -> tuple[datetime, datetime, str]:
        """Its place among episodes (EPISODE_ORDER)."""
        return (self.created_at, self.stored_at, self.id)

    def set_content(self, text: str) -> None:
        """Set the content and what derives from it: keyed hash and tokens, size, a new
        embedding id; consolidation looks at the memory again."""
        self.content = text
        self.content_hash = identity.content_hash(text, self.tenant_id)
        self.tokens = identity.tokens_of(text, self.tenant_id)
        self.size = len(text.encode("utf-8"))
        self.embedding_id = identity.new_id("vec")
        self.considered_at = None

    def facts(self) -> filters.Facts:
        """What the filter language sees of this memory (`filters.matches`)."""
        return filters.Facts(
            columns={
                "id": self.id,
                "type": self.type,
                "importance": self.importance,
                "created_at": int(self.created_at.timestamp() * 1000),
            },
            metadata=self.metadata,
        )


def retry_integrity(work: Callable[[], T], attempts: int = DELETE_ATTEMPTS) -> T:
    """Run `work` (a transaction that deletes rows) again when it fails on an IntegrityError:
    a link to a row was committed between Django collecting the row's links and deleting
    the row (auto-linking of a concurrent store). Collecting again finds it."""
    for attempt in range(attempts):
        try:
            return work()
        except IntegrityError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class VectorTask(models.Model):
    """Outbox: a vector write owed to the index, committed with the SQL change it mirrors."""

    class Action(models.TextChoices):
        UPSERT = "upsert"
        DELETE = "delete"

    memory_id = models.CharField(max_length=40, db_index=True)
    action = models.CharField(max_length=8, choices=Action.choices)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    dead_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Dead-lettered: failed DEAD_AFTER times while the index answered; kept "
        "with its last error for `sfm doctor`, no longer retried.",
    )


class Link(models.Model):
    """A typed, directed edge between two memories of one tenant.

    Kinds the service makes: `derived_from` (parent -> child, by consolidation), `similar`
    (a new memory -> its close neighbours), `follows` (an episode -> the one before it).
    Clients add their own kinds. Deleting either end deletes the link.
    """

    DERIVED_FROM = "derived_from"
    SIMILAR = "similar"
    FOLLOWS = "follows"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="links")
    source = models.ForeignKey(Memory, on_delete=models.CASCADE, related_name="links_out")
    target = models.ForeignKey(Memory, on_delete=models.CASCADE, related_name="links_in")
    kind = models.CharField(max_length=64)
    weight = models.FloatField(default=1.0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "target", "kind"], name="link_once"),
        ]
        indexes = [models.Index(fields=["target", "kind"], name="link_in")]


class Job(models.Model):
    """Background work (consolidation, forgetting): status, progress and result."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    id = models.CharField(primary_key=True, max_length=40)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=32)
    params = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)


class Lease(models.Model):
    """A named lock with an expiry, held in SQL so that every worker process sees it."""

    name = models.CharField(primary_key=True, max_length=200)
    holder = models.CharField(max_length=64)
    expires_at = models.DateTimeField()


class NamespacePolicy(models.Model):
    """A namespace's rules for what it stores: a default time to live, and what forgetting
    does with memories once they expire (they leave searches at once either way)."""

    ARCHIVE = "archive"
    ERASE = "erase"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="policies")
    namespace = models.CharField(max_length=128)
    ttl_seconds = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Stores without an expiry of their own expire after this."
    )
    on_expiry = models.CharField(
        max_length=16,
        default=ARCHIVE,
        choices=[(ARCHIVE, "archive"), (ERASE, "erase")],
        help_text="What forgetting does with an expired memory: archive it, or erase it.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "namespace"], name="policy_once"),
        ]


class Setting(models.Model):
    """A fact about the data itself, kept with it: `embedding_model`, the model whose
    vectors the index holds (a different configured model needs `sfm reindex --reembed`)."""

    key = models.CharField(primary_key=True, max_length=100)
    value = models.TextField()


class ApiKey(models.Model):
    """A tenant's key: only its SHA-256 is stored; the key itself is shown once."""

    id = models.CharField(primary_key=True, max_length=40)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=128, blank=True, default="")
    prefix = models.CharField(
        max_length=16, help_text="The key's first characters, to tell keys apart."
    )
    digest = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    namespaces = models.JSONField(default=list, help_text="Allowed namespaces; empty: all.")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)


class AuditEntry(models.Model):
    """Who did what: admin actions, denials and deletions (never content)."""

    tenant = models.CharField(max_length=64, db_index=True)
    actor = models.CharField(max_length=64)
    action = models.CharField(max_length=64)
    resource = models.CharField(max_length=200, blank=True, default="")
    outcome = models.CharField(max_length=16, default="ok")
    details = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
