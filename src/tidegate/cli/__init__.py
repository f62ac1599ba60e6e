"""The `tidegate` command: thin commands that parse, build, and call."""

from __future__ import annotations

import click

from tidegate.cli.admin import apikeys, destinations, keys, sources, tenants
from tidegate.cli.audit import audit
from tidegate.cli.consents import consents
from tidegate.cli.data import deliveries, events, replay, usage
from tidegate.cli.dev import dev
from tidegate.cli.migrate import migrate
from tidegate.cli.serve import serve

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Tidegate: a multi-tenant event gateway.

    Settings come from TIDEGATE_* environment variables (see README, "Settings").
    """


for command in (
    serve,
    tenants,
    sources,
    apikeys,
    destinations,
    consents,
    keys,
    events,
    deliveries,
    replay,
    usage,
    migrate,
    audit,
    dev,
):
    cli.add_command(command)


def main() -> None:
    cli()
