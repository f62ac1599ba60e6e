"""The TidegateError tree: expected failures we can explain to the caller.

No HTTP imports here: `api/problems.py` renders these as RFC 9457 problem+json,
the CLI prints them. Engines translate driver errors into these at their boundary.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar


class TidegateError(Exception):
    """An expected failure we can explain to the caller."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions


class ConfigError(TidegateError):
    code, title = "config", "Invalid configuration"


class InvalidRequest(TidegateError):
    status, code, title = 400, "invalid_request", "Invalid request"


class InvalidEvent(InvalidRequest):
    code, title = "invalid_event", "Invalid event"


class PayloadTooLarge(InvalidRequest):
    """Over Segment's limits; Segment answers 400, so do we."""

    code, title = "payload_too_large", "Payload too large"


class Unauthorized(TidegateError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(TidegateError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(TidegateError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(TidegateError):
    status, code, title = 409, "conflict", "Conflict"


class UnsupportedMediaType(TidegateError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class MisdirectedRequest(TidegateError):
    """The tenant is pinned to another region: nothing is written here."""

    status, code, title = 421, "misdirected_request", "Tenant pinned to another region"


class ValidationFailed(TidegateError):
    """A well-formed request whose content is refused (bad URL, bad filter...)."""

    status, code, title = 422, "validation_failed", "Validation failed"


class UnsafeUrl(ValidationFailed):
    code, title = "unsafe_url", "Unsafe destination URL"


class BackendUnavailable(TidegateError):
    status, code, title = 503, "backend_unavailable", "Storage backend unavailable"


class DecryptionFailed(TidegateError):
    code, title = "decryption_failed", "Decryption failed"


class RetryLater(Exception):
    """Raised by a deliverer to ask for another attempt after `after`."""

    def __init__(self, after: timedelta) -> None:
        super().__init__(f"retry after {after}")
        self.after = after
