"""`tidegate consents`: a tenant's consent to load its events into another region."""

from __future__ import annotations

import getpass

import click

from tidegate import transfers
from tidegate.admin import require_tenant
from tidegate.cli.common import emit, json_option, run
from tidegate.model import TransferConsent
from tidegate.runtime import Runtime
from tidegate.settings import REGIONS


def _consent(c: TransferConsent) -> dict[str, object]:
    return {
        "tenant_id": c.tenant_id,
        "region": c.region,
        "reference": c.reference,
        "recorded_by": c.recorded_by,
        "recorded_at_ms": c.recorded_at_ms,
    }


@click.group()
def consents() -> None:
    """Record, list and withdraw consent to cross-region transfers."""


@consents.command("grant")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--region", required=True, type=click.Choice(REGIONS))
@click.option("--reference", required=True, help="The basis of the transfer (e.g. the SCCs).")
@json_option
def grant(tenant_id: str, region: str, reference: str, as_json: bool) -> None:
    """Record the tenant's consent to load its events into REGION's accounts."""

    async def action(rt: Runtime) -> TransferConsent:
        tenant = await require_tenant(rt, tenant_id)
        return await transfers.grant(
            rt, tenant, region, reference=reference, recorded_by=f"cli:{getpass.getuser()}"
        )

    consent = run(
        action, audited="transfer_consent.grant", target=lambda c: (c.tenant_id, c.region)
    )
    emit(_consent(consent), as_json, f"consent to {region} recorded for {tenant_id}")


@consents.command("withdraw")
@click.option("--tenant", "tenant_id", required=True)
@click.option("--region", required=True, type=click.Choice(REGIONS))
@json_option
def withdraw(tenant_id: str, region: str, as_json: bool) -> None:
    """Withdraw consent; the tenant's destinations in REGION are disabled at once."""

    async def action(rt: Runtime) -> list[str]:
        tenant = await require_tenant(rt, tenant_id)
        return list(await transfers.withdraw(rt, tenant, region))

    disabled = run(
        action, audited="transfer_consent.withdraw", target=lambda _: (tenant_id, region)
    )
    emit(
        {"region": region, "disabled_destinations": disabled},
        as_json,
        f"consent to {region} withdrawn; {len(disabled)} destinations disabled",
    )


@consents.command("list")
@click.option("--tenant", "tenant_id", required=True)
@json_option
def list_consents(tenant_id: str, as_json: bool) -> None:
    """The regions the tenant has consented to transfer events to."""

    async def action(rt: Runtime) -> list[TransferConsent]:
        tenant = await require_tenant(rt, tenant_id)
        return await rt.store.tenants.transfer_consents(tenant.id)

    rows = run(action)
    emit(
        [_consent(c) for c in rows], as_json, "\n".join(f"{c.region}\t{c.reference}" for c in rows)
    )
