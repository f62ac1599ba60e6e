"""The `tidegate` command: thin commands that parse, build, and call.

Each command's module is imported when that command runs, not for every command: the
server's (uvicorn, FastAPI) and the data commands' imports would otherwise add most of
a second to `tidegate tenants create`.
"""

from __future__ import annotations

import importlib

import click

__all__ = ["main"]

# Command name -> "module:attribute", in the order `tidegate --help` lists them.
_COMMANDS = {
    "serve": "tidegate.cli.serve:serve",
    "tenants": "tidegate.cli.admin:tenants",
    "sources": "tidegate.cli.admin:sources",
    "apikeys": "tidegate.cli.admin:apikeys",
    "destinations": "tidegate.cli.admin:destinations",
    "consents": "tidegate.cli.consents:consents",
    "keys": "tidegate.cli.admin:keys",
    "events": "tidegate.cli.data:events",
    "deliveries": "tidegate.cli.data:deliveries",
    "replay": "tidegate.cli.data:replay",
    "usage": "tidegate.cli.data:usage",
    "migrate": "tidegate.cli.migrate:migrate",
    "audit": "tidegate.cli.audit:audit",
    "dev": "tidegate.cli.dev:dev",
}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Tidegate: a multi-tenant event gateway.

    Settings come from TIDEGATE_* environment variables (see README, "Settings").
    """


def main() -> None:
    cli()
