"""What every CLI command shares: settings, a runtime, output as text or --json."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from tidegate.errors import TidegateError
from tidegate.ids import now_ms
from tidegate.runtime import Runtime, open_runtime
from tidegate.security.audit import AuditEntry
from tidegate.settings import Settings

T = TypeVar("T")

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def run(
    action: Callable[[Runtime], Awaitable[T]],
    *,
    audited: str | None = None,
    target: Callable[[T], tuple[str | None, str | None]] | None = None,
    detail: str | None = None,
) -> T:
    """Open the engines, run `action`, close them; errors exit 1 with their detail.

    A change names itself with `audited` (the action), `target` (result -> tenant id
    and resource) and optionally `detail` (e.g. which fields changed, never values): it
    is recorded in the audit log before its result is printed.
    """
    settings = load_settings()

    async def main() -> T:
        runtime = open_runtime(settings)
        try:
            result = await action(runtime)
            if audited is not None:
                tenant_id, resource = target(result) if target else (None, None)
                await record(runtime, audited, tenant_id, resource, detail)
            return result
        finally:
            await runtime.aclose()

    try:
        return asyncio.run(main())
    except TidegateError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(1)


async def record(
    rt: Runtime, action: str, tenant_id: str | None, resource: str | None, detail: str | None = None
) -> None:
    """Audit an operator's CLI action (actor `cli:<OS user>`), before printing its result."""
    await rt.store.audit.append_audit(
        [
            AuditEntry(
                at_ms=now_ms(),
                tenant_id=tenant_id,
                actor=f"cli:{getpass.getuser()}",
                client_id=None,
                source_ip=None,
                action=action,
                resource=resource,
                outcome="success",
                request_id=None,
                detail=detail,
            )
        ]
    )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; an invalid one exits 2 naming its variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            name = "TIDEGATE_" + "_".join(str(p) for p in error["loc"]).upper()
            click.echo(f"error: {name}: {error['msg']}", err=True)
        sys.exit(2)


def emit(data: Any, as_json: bool, text: str | Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(text() if callable(text) else text)
