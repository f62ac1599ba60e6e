"""Identifier and credential minting. Ids are time-ordered (UUIDv7) so they sort by time."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time

import uuid_utils

from tidegate.model import DeliveryId, DestinationId, EventId, SourceId, TenantId


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _uuid7() -> str:
    return str(uuid_utils.uuid7())


def new_event_id() -> EventId:
    return EventId(_uuid7())


def new_tenant_id() -> TenantId:
    return TenantId(f"ten_{uuid_utils.uuid7().hex}")


def new_source_id() -> SourceId:
    return SourceId(f"src_{uuid_utils.uuid7().hex}")


def new_destination_id() -> DestinationId:
    return DestinationId(f"dst_{uuid_utils.uuid7().hex}")


def new_delivery_id() -> DeliveryId:
    """The webhook-id: `msg_` + a UUIDv7, stable for every attempt of one delivery."""
    return DeliveryId(f"msg_{uuid_utils.uuid7().hex}")


def new_attempt_id() -> str:
    return f"att_{uuid_utils.uuid7().hex}"


def new_write_key(region: str) -> str:
    """`wk_<region>_<random>`: any cell can tell at once where the key belongs."""
    return f"wk_{region}_{secrets.token_urlsafe(24)}"


def new_api_key(region: str) -> str:
    return f"tgk_{region}_{secrets.token_urlsafe(32)}"


def credential_region(credential: str) -> str | None:
    """The region a credential was minted in (`wk_eu_...` -> "eu"), if it names one."""
    parts = credential.split("_", 2)
    if len(parts) == 3 and parts[0] in ("wk", "tgk") and parts[1] in ("eu", "us"):
        return parts[1]
    return None


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def credential_hash(credential: str) -> str:
    """Lookup hash of a high-entropy credential (write keys, API keys).

    Credentials carry 192+ random bits, so a fast unsalted hash is the right tool:
    it cannot be brute-forced, and it allows an indexed lookup.
    """
    return hashlib.sha256(credential.encode()).hexdigest()
