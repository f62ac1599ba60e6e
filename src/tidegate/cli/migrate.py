"""tidegate migrate: bring the store's schema up to this release."""

from __future__ import annotations

import asyncio

import click

from tidegate.cli.common import emit, json_option
from tidegate.errors import TidegateError
from tidegate.settings import Settings
from tidegate.store.migrations import migrate_store


@click.command()
@json_option
def migrate(as_json: bool) -> None:
    """Apply pending store migrations (safe to run from several processes at once).

    Run it before rolling out a release whose store URL has migrate=false.
    """
    try:
        report = asyncio.run(migrate_store(Settings().resolved_store_url))
    except TidegateError as exc:
        raise click.ClickException(exc.detail) from exc
    if report.version is None:
        text = f"{report.engine}: the schema is created when the store opens; nothing to migrate"
    elif report.applied:
        text = "\n".join(
            [*(f"applied {v:04d}" for v in report.applied), f"schema at version {report.version}"]
        )
    else:
        text = f"schema at version {report.version}: nothing to apply"
    emit(
        {"engine": report.engine, "applied": list(report.applied), "version": report.version},
        as_json,
        text,
    )
