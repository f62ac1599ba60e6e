"""Key backends: the master key that wraps per-tenant data keys."""

from __future__ import annotations

from pathlib import Path

from tidegate.keys.base import KeyRing

__all__ = ["KeyRing", "open_key_ring"]


def open_key_ring(path_or_url: str | Path) -> KeyRing:
    """Pick the key backend: a local file path (default) or, later, an AWS KMS URL."""
    text = str(path_or_url)
    if text.startswith("kms://"):
        from tidegate.errors import ConfigError

        raise ConfigError("TIDEGATE_KMS_URL: the AWS KMS key ring is not built yet")
    from tidegate.keys.localfile import LocalFileKeyRing

    return LocalFileKeyRing(Path(text.removeprefix("file://")))
