"""The ingest path remembers Basic Authorization headers that authenticated
(api/ingest/accept.py), for as long as their write key's lookup: but only short ones,
since the password part of a header is the caller's to vary."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tidegate import admin
from tidegate.api.ingest.accept import Ingestor
from tidegate.cli.common import load_settings
from tidegate.errors import Unauthorized
from tidegate.runtime import open_runtime


def _basic(username: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def test_headers_of_one_write_key_authenticate_and_only_short_ones_are_kept(
    tmp_path: Path,
) -> None:
    rt = open_runtime(load_settings(data_dir=tmp_path / "data", region="eu"))
    try:
        tenant = await admin.create_tenant(rt, "t", "eu")
        source, write_key = await admin.create_source(rt, tenant.id, "web")
        ingestor = Ingestor(rt, auth=None)  # type: ignore[arg-type] # Basic only here
        short, long = _basic(write_key), _basic(write_key, "p" * 300)
        for header in (short, long, short, long):
            found = await ingestor.authenticate_header(header)
            assert found is not None and found[0].id == source.id
        assert set(ingestor._headers) == {short}
        with pytest.raises(Unauthorized):
            await ingestor.authenticate_header(_basic("wk_eu_" + "x" * 40))
        assert set(ingestor._headers) == {short}
    finally:
        await rt.aclose()
