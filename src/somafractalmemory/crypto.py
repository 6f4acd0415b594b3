"""Envelope encryption: AES-256-GCM with a data key per tenant, wrapped by a master key.

A sealed value is `e1:<tenant>:<base64(nonce 12 bytes | ciphertext+tag)>`, with the tenant
and the field's name as associated data, so a value cannot be moved to another tenant or
field unnoticed. Data keys are wrapped the same way by the master key (`k1:<key id>:...`);
the key id (first 8 hex digits of the master key's SHA-256) tells which master key wrapped
it, so rotation re-wraps data keys without touching the data.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from somafractalmemory.conf import Config
from somafractalmemory.errors import ConfigError, SFMError

SEALED = "e1:"
WRAPPED = "k1:"
KEY_FILE = "master.key"


class DecryptionFailed(SFMError):
    """A value cannot be opened: wrong key, tampered data, or its tenant was shredded."""

    status = 503
    code = "decryption_failed"


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ConfigError(f"{where}: not base64") from None
    if len(key) != 32:
        raise ConfigError(f"{where}: a master key is 32 bytes (44 base64 characters)")
    return key


def master_keys(config: Config) -> list[bytes]:
    """The current master key first, then the previous one (during rotation).

    `master_key` (base64 of 32 bytes) when set; else `<data_dir>/master.key`, created with
    mode 0600 on first use (the embedded default)."""
    if config.master_key:
        current = _decode_key(config.master_key, "master_key")
    else:
        path = Path(config.data_dir) / KEY_FILE
        if not path.exists():
            _create_key_file(path)
        current = _decode_key(path.read_text(), str(path))
    keys = [current]
    if config.master_key_previous:
        keys.append(_decode_key(config.master_key_previous, "master_key_previous"))
    return keys


def _create_key_file(path: Path) -> None:
    """Write a new key to a private temporary file, then link it into place: processes
    starting at once all end up reading the one complete file that won."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process won
            os.link(draft, path)
    finally:
        draft.unlink(missing_ok=True)


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = secrets.token_bytes(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, aad)).decode()


def _open(key: bytes, sealed: str, aad: bytes) -> bytes:
    raw = base64.b64decode(sealed)
    return AESGCM(key).decrypt(raw[:12], raw[12:], aad)


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap(data_key: bytes, tenant: str, master: bytes) -> str:
    return f"{WRAPPED}{key_id(master)}:{_seal(master, data_key, f'sfm-dek:{tenant}'.encode())}"


def unwrap(wrapped: str, tenant: str, masters: list[bytes]) -> bytes:
    try:
        _, kid, sealed = wrapped.split(":", 2)
    except ValueError:
        raise DecryptionFailed(f"tenant {tenant!r}: malformed data key") from None
    for master in masters:
        if key_id(master) == kid:
            try:
                return _open(master, sealed, f"sfm-dek:{tenant}".encode())
            except InvalidTag:
                break
    raise DecryptionFailed(
        f"tenant {tenant!r}: its data key was wrapped by master key {kid}, which is not "
        "configured (set master_key_previous while rotating)"
    )


def seal(data_key: bytes, tenant: str, field: str, plaintext: str) -> str:
    aad = f"{tenant}:{field}".encode()
    return f"{SEALED}{tenant}:{_seal(data_key, plaintext.encode('utf-8'), aad)}"


def sealed_tenant(value: str) -> str | None:
    """The tenant of a sealed value, or None for plaintext (rows from before encryption)."""
    if not value.startswith(SEALED):
        return None
    return value[len(SEALED) :].split(":", 1)[0]


def open_sealed(data_key: bytes, field: str, value: str) -> str:
    tenant, sealed = value[len(SEALED) :].split(":", 1)
    try:
        return _open(data_key, sealed, f"{tenant}:{field}".encode()).decode("utf-8")
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed(f"a {field} of tenant {tenant!r} cannot be decrypted") from exc
