"""tidegate audit: verify the hash chain, list records."""

from __future__ import annotations

import sys
from typing import Any

import click

from tidegate.api.views import audit_out
from tidegate.cli.common import emit, json_option, run
from tidegate.runtime import Runtime
from tidegate.security.audit import VerifyResult, verify


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("verify")
@json_option
def audit_verify(as_json: bool) -> None:
    """Walk the hash chain; exit 1 and name the first broken record if any."""

    async def action(rt: Runtime) -> VerifyResult:
        return await verify(rt.store.audit)

    result = run(action)
    text = (
        f"audit chain intact: {result.checked} records verified"
        if result.ok
        else f"audit chain BROKEN at record {result.first_broken_seq}: {result.reason}"
        f" ({result.checked} records verified before it)"
    )
    emit(
        {"ok": result.ok, "checked": result.checked, "first_broken_seq": result.first_broken_seq,
         "reason": result.reason},
        as_json,
        text,
    )  # fmt: skip
    if not result.ok:
        sys.exit(1)


@audit.command("list")
@click.option("--tenant", help="Only this tenant's records (default: all).")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
def audit_list(tenant: str | None, limit: int, as_json: bool) -> None:
    """The newest audit records."""

    async def action(rt: Runtime) -> list[dict[str, Any]]:
        rows = await rt.store.audit.list_audit(tenant, after_seq=None, limit=limit)
        return [audit_out(r).model_dump() for r in rows]

    data = run(action)
    emit(
        data,
        as_json,
        lambda: "\n".join(
            f"{r['seq']:>6}  {r['at']}  {r['outcome']:<7} {r['action']:<22} "
            f"{r['actor']}  {r['resource'] or ''}"
            for r in data
        ),
    )
