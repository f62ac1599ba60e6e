"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

    webhook-signature: v1,<base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))>

where `key` is the base64-decoded part of a `whsec_` secret. Several secrets (a
rotation overlap) give several space-separated signatures; receivers accept any.
"""

from __future__ import annotations

import base64
import functools
import hmac
from collections.abc import Sequence

from tidegate.errors import ValidationFailed
from tidegate.security.mac import HmacSha256

_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret."""
    if not secret.startswith(_PREFIX):
        raise ValidationFailed("webhook secrets have the form whsec_<base64>")
    try:
        key = base64.b64decode(secret.removeprefix(_PREFIX), validate=True)
    except ValueError as exc:
        raise ValidationFailed("webhook secret is not valid base64 after whsec_") from exc
    if not 24 <= len(key) <= 64:
        raise ValidationFailed("webhook secret must decode to 24-64 bytes")
    return key


@functools.lru_cache(maxsize=1024)
def _mac(secret: str) -> HmacSha256:
    """The HMAC of a secret, kept: a delivery signs with the same few secrets each time,
    and decoding one and keying the HMAC cost more than the MAC itself."""
    return HmacSha256(secret_key(secret))


def sign(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for `body`."""
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    return " ".join("v1," + base64.b64encode(_mac(s).digest(signed)).decode() for s in secrets)


def headers(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, webhook_id, timestamp, body),
    }


def verify(
    secret: str, headers: dict[str, str], body: bytes, *, now: int, tolerance_s: int = 300
) -> bool:
    """Check a Standard Webhooks signature as a receiver would (used by the demo receiver)."""
    webhook_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not webhook_id or not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance_s:
        return False
    expected = sign([secret], webhook_id, int(timestamp), body).split(",", 1)[1]
    return any(
        part.startswith("v1,") and hmac.compare_digest(part[3:], expected)
        for part in headers.get("webhook-signature", "").split()
    )
