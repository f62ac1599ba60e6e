"""The fake Snowflake the tests load into: fakesnow's server behind the real connector,
with the database and schema a customer would create before pointing Tidegate at it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import snowflake.connector
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# Bound at import: starting a server imports the `fakesnow.server` submodule, which then
# shadows the `fakesnow.server()` function of the same name.
from fakesnow import server as _fake_server

DATABASE, SCHEMA = "ANALYTICS", "RAW"


@contextmanager
def fake_warehouse(**server_options: Any) -> Iterator[dict[str, Any]]:
    """A running fake warehouse (connection kwargs), DATABASE.SCHEMA created."""
    with _fake_server(**server_options) as kwargs:
        with snowflake.connector.connect(**kwargs) as conn:
            conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
            conn.cursor().execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{SCHEMA}")
        yield kwargs


def private_key_pem() -> str:
    """A fresh RSA key pair's private key, unencrypted PKCS#8 PEM (key-pair auth)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
