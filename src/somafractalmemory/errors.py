"""One exception tree. Each error carries an HTTP status and a stable machine-readable code.

The API turns any :class:`SFMError` into ``{"error": {"code", "message", "details"}}``; the
codes are part of the public contract (docs/api.md lists them) and never change meaning.
"""

from __future__ import annotations

from typing import Any


class SFMError(Exception):
    """Base of every error the service raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ConfigError(SFMError):
    """Settings are invalid; the process refuses to start."""

    code = "config_error"


class VectorDimMismatch(ConfigError):
    code = "vector_dim_mismatch"


class ModelNotInstalled(ConfigError):
    code = "embedding_model_not_installed"


class ModelChecksumMismatch(ConfigError):
    """A model's weights are not the bytes they must be; nothing loads them."""

    code = "embedding_model_checksum_mismatch"


class EmbeddingModelChanged(ConfigError):
    """The configured model is not the one the stored memories' vectors were made by."""

    code = "embedding_model_changed"


class BadRequest(SFMError):
    status = 400
    code = "bad_request"


class MalformedJSON(BadRequest):
    code = "malformed_json"


class InvalidFilter(BadRequest):
    code = "invalid_filter"


class InvalidCursor(BadRequest):
    code = "invalid_cursor"


class Unauthorized(SFMError):
    """No key, or a key that is unknown or revoked."""

    status = 401
    code = "unauthorized"


class Forbidden(SFMError):
    """The access policy denies the request; the message is the policy's reason."""

    status = 403
    code = "forbidden"


class QuotaExceeded(SFMError):
    status = 403
    code = "quota_exceeded"


class RateLimited(SFMError):
    """Too many requests; `retry_after` seconds until the next one is accepted."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, details: object = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class ValidationFailed(SFMError):
    status = 422
    code = "validation_error"


class FilterRequired(ValidationFailed):
    code = "filter_required"


class InvalidValidity(ValidationFailed):
    """Times that cannot hold together: `valid_until` not after `valid_from`, an expiry
    already past, `expires_at` with `ttl_seconds`."""

    code = "invalid_validity"


class NotFound(SFMError):
    status = 404
    code = "not_found"


class MemoryNotFound(NotFound):
    code = "memory_not_found"


class LinkNotFound(NotFound):
    code = "link_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class Conflict(SFMError):
    status = 409
    code = "conflict"


class ConsolidationBusy(Conflict):
    code = "consolidation_running"


class KeyContended(Conflict):
    """Stores of one key kept racing: the store changed nothing and may be retried."""

    code = "key_contended"


class MethodNotAllowed(SFMError):
    status = 405
    code = "method_not_allowed"


class UnsupportedMediaType(SFMError):
    """A request body that is not `application/json` (a web page can send text/plain to
    any address without asking first)."""

    status = 415
    code = "unsupported_media_type"


class LengthRequired(SFMError):
    """A chunked request body without Content-Length: the WSGI server would pass it on
    empty, so it is refused rather than read as missing fields."""

    status = 411
    code = "length_required"


class ForeignOrigin(SFMError):
    """Without keys (auth optional) the service answers loopback hosts and origins only:
    a web page elsewhere must not drive it, nor read it through DNS rebinding."""

    status = 403
    code = "foreign_origin"


class PayloadTooLarge(SFMError):
    status = 413
    code = "payload_too_large"


class ContentTooLarge(PayloadTooLarge):
    code = "content_too_large"


class MetadataTooLarge(PayloadTooLarge):
    code = "metadata_too_large"


class BatchTooLarge(PayloadTooLarge):
    code = "batch_too_large"


class Unavailable(SFMError):
    """A dependency failed; the request may succeed when retried."""

    status = 503
    code = "unavailable"


class DatabaseUnavailable(Unavailable):
    """The SQL database cannot be reached; nothing was written."""

    code = "database_unavailable"


class EmbeddingUnavailable(Unavailable):
    code = "embedding_unavailable"


class SummarizerUnavailable(Unavailable):
    code = "summarizer_unavailable"


class IndexUnavailable(Unavailable):
    code = "vector_index_unavailable"


class IndexLocked(IndexUnavailable):
    """Another process holds the Milvus Lite file."""

    code = "vector_index_locked"
