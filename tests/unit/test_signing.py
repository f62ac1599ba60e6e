"""Our Standard Webhooks signatures verify with the reference `standardwebhooks` library."""

from __future__ import annotations

import hmac
import os
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tidegate.errors import ValidationFailed
from tidegate.ids import new_delivery_id, new_webhook_secret
from tidegate.security import signing
from tidegate.security.mac import HmacSha256


def test_signature_verifies_with_reference_library() -> None:
    """A receiver using the standardwebhooks library accepts our headers."""
    secret = new_webhook_secret()
    body = b'{"type":"track","event":"Order Completed"}'
    headers = signing.headers([secret], new_delivery_id(), int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == {"type": "track", "event": "Order Completed"}


def test_tampered_body_fails_reference_verification() -> None:
    secret = new_webhook_secret()
    headers = signing.headers([secret], new_delivery_id(), int(time.time()), b"{}")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":1}', headers)


def test_two_secrets_give_two_signatures_each_verifying() -> None:
    """During a rotation overlap both the old and the new secret verify."""
    old, new = new_webhook_secret(), new_webhook_secret()
    headers = signing.headers([old, new], new_delivery_id(), int(time.time()), b"{}")
    assert len(headers["webhook-signature"].split()) == 2
    Webhook(old).verify(b"{}", headers)
    Webhook(new).verify(b"{}", headers)


def test_own_verify_matches_and_rejects_stale_timestamps() -> None:
    secret = new_webhook_secret()
    now = int(time.time())
    headers = signing.headers([secret], "msg_1", now, b"x")
    assert signing.verify(secret, headers, b"x", now=now)
    assert not signing.verify(secret, headers, b"y", now=now)
    assert not signing.verify(secret, headers, b"x", now=now + 3600)


@pytest.mark.parametrize("bad", ["secret", "whsec_!!!", "whsec_" + "QUJD"])
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        signing.secret_key(bad)


@pytest.mark.parametrize("key_bytes", [0, 1, 24, 32, 63, 64, 65, 200])
def test_precomputed_hmac_equals_the_standard_library(key_bytes: int) -> None:
    """Keys shorter than, equal to and longer than SHA-256's 64-byte block."""
    key = os.urandom(key_bytes)
    mac = HmacSha256(key)
    for message in (b"", b"x", os.urandom(300), os.urandom(5000)):
        assert mac.digest(message) == hmac.digest(key, message, "sha256")
