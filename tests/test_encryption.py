"""Content and metadata are sealed at rest: raw SQL holds no plaintext; keys rotate; a
deleted tenant's data cannot be read again."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from somafractalmemory import crypto
from somafractalmemory.conf import get_config
from somafractalmemory.memories import models, tenancy
from somafractalmemory.memories.models import Memory, Tenant
from tests.conftest import Api

SECRET_WORDS = ("Xylophagous", "quokka", "Zanzibar-7741")


def raw_dump() -> str:
    """Every row of every table, as the database stores it."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = [row[0] for row in cursor.fetchall()]
        dump = []
        for table in tables:
            cursor.execute(f'SELECT * FROM "{table}"')
            dump += [repr(row) for row in cursor.fetchall()]
    return "\n".join(dump)


def test_raw_rows_hold_no_plaintext(api: Api, namespace: str) -> None:
    content = f"The {SECRET_WORDS[0]} {SECRET_WORDS[1]} hides in {SECRET_WORDS[2]}."
    stored = api.ok(
        "POST",
        "/memory/store",
        {"content": content, "namespace": namespace, "metadata": {"place": SECRET_WORDS[2]}},
    )
    dump = raw_dump()
    for word in SECRET_WORDS:
        assert word.lower() not in dump.lower(), word
    row = Memory.objects.get(id=stored["id"])
    assert row.content == content and row.metadata == {"place": SECRET_WORDS[2]}
    with connection.cursor() as cursor:
        cursor.execute("SELECT content, metadata FROM memories_memory WHERE id = %s", [row.id])
        sealed_content, sealed_metadata = cursor.fetchone()
    assert sealed_content.startswith("e1:default:") and sealed_metadata.startswith("e1:")
    # The lexical fallback still finds it through keyed tokens.
    assert api.ok("GET", f"/memory/{row.id}")["content"] == content


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def use(current: bytes, previous: bytes | None = None) -> None:
        monkeypatch.setenv("SFM_MASTER_KEY", base64.b64encode(current).decode())
        if previous is None:
            monkeypatch.delenv("SFM_MASTER_KEY_PREVIOUS", raising=False)
        else:
            monkeypatch.setenv("SFM_MASTER_KEY_PREVIOUS", base64.b64encode(previous).decode())
        get_config.cache_clear()
        models._keys.clear()

    yield use
    monkeypatch.undo()
    get_config.cache_clear()
    models._keys.clear()


def test_master_key_rotation_rewraps_data_keys(db: None, master: Any, namespace: str) -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    master(old)
    tenancy.create_tenant("rotating")
    alice = Api(tenancy.create_key("rotating", ["read", "write"]).secret)
    made = alice.ok("POST", "/memory/store", {"content": "Rotate me", "namespace": namespace})
    master(new)  # the new key alone cannot open the old wrapping
    with pytest.raises(crypto.DecryptionFailed):
        Memory.objects.get(id=made["id"])
    master(new, previous=old)
    assert tenancy.rotate_master_key()["rewrapped"] >= 1
    master(new)  # now the new key alone suffices, and the memory was not re-encrypted
    assert Memory.objects.get(id=made["id"]).content == "Rotate me"
    wrapped = Tenant.objects.get(id="rotating").wrapped_key
    assert wrapped.startswith(f"k1:{crypto.key_id(new)}:")


def test_deleting_a_tenant_shreds_its_key(db: None, namespace: str) -> None:
    tenancy.create_tenant("doomed")
    doomed = Api(tenancy.create_key("doomed", ["read", "write"]).secret)
    made = doomed.ok("POST", "/memory/store", {"content": "Gone soon", "namespace": namespace})
    with connection.cursor() as cursor:
        cursor.execute("SELECT content FROM memories_memory WHERE id = %s", [made["id"]])
        (copy,) = cursor.fetchone()  # e.g. a backup taken before the deletion
    counts = tenancy.delete_tenant("doomed")
    assert counts["memories"] == 1 and not Memory.objects.filter(tenant_id="doomed").exists()
    tenancy.create_tenant("doomed")  # the same name again gets a new key
    with pytest.raises(crypto.DecryptionFailed):
        crypto.open_sealed(models.data_key("doomed"), "content", copy)


def test_master_key_file_is_private_and_one_under_concurrent_first_use(tmp_path: Any) -> None:
    import os
    from concurrent.futures import ThreadPoolExecutor

    from somafractalmemory.conf import Config

    config = Config(data_dir=tmp_path / "data")
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: crypto.master_keys(config)[0], range(16)))
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    path = tmp_path / "data" / crypto.KEY_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path / "data") == [crypto.KEY_FILE]  # no drafts left behind


def test_readyz_is_unavailable_when_the_master_key_cannot_open_data_keys(
    db: None, master: Any, namespace: str
) -> None:
    old = secrets.token_bytes(32)
    master(old)
    api = Api()
    api.ok("POST", "/memory/store", {"content": "Sealed with the old key", "namespace": namespace})
    assert api.ok("GET", "/readyz")["checks"]["keys"] == "ok"
    master(secrets.token_bytes(32))  # a wrong master key configured
    ready = api.call("GET", "/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["keys"].startswith("error")
    body = {"content": "cannot be sealed", "namespace": namespace}
    assert api.error(503, "POST", "/memory/store", body) == "decryption_failed"
