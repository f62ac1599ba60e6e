"""Transfer consents under /v1/transfer-consents: the tenant's record of consent to load
its events into another region (see tidegate.transfers)."""

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from tidegate import transfers
from tidegate.api.audit import AccessAudit
from tidegate.api.auth import Authenticator, Caller
from tidegate.api.views import Strict, iso
from tidegate.model import TransferConsent
from tidegate.runtime import Runtime


class ConsentIn(Strict):
    reference: str = Field(
        min_length=1,
        max_length=transfers.MAX_REFERENCE,
        description="The basis of the transfer, e.g. the contract clauses it relies on.",
    )


class ConsentOut(BaseModel):
    region: str
    reference: str
    recorded_by: str
    recorded_at: str | None


class ConsentWithdrawn(BaseModel):
    region: str
    disabled_destinations: list[str] = Field(
        description="Destinations in that region, now disabled (pending deliveries dead-lettered)."
    )


def consent_out(c: TransferConsent) -> ConsentOut:
    return ConsentOut(
        region=c.region,
        reference=c.reference,
        recorded_by=c.recorded_by,
        recorded_at=iso(c.recorded_at_ms),
    )


def build_consents_router(runtime: Runtime, auth: Authenticator, access: AccessAudit) -> APIRouter:
    router = APIRouter(prefix="/v1/transfer-consents", tags=["transfer consents"])
    Need_read = Annotated[Caller, Depends(auth.require("destinations:read"))]
    Need_write = Annotated[Caller, Depends(auth.require("transfers:write"))]

    @router.get("", response_model=list[ConsentOut])
    async def list_consents(caller: Need_read) -> list[ConsentOut]:
        """The regions outside its own the tenant has consented to load events into."""
        consents = await runtime.store.tenants.transfer_consents(caller.tenant.id)
        await access.allowed(caller, "transfer_consents.list")
        return [consent_out(c) for c in consents]

    @router.put("/{region}", response_model=ConsentOut)
    async def grant(caller: Need_write, region: str, body: ConsentIn) -> ConsentOut:
        """Record consent to transfers to `region` (renewing one replaces its reference).

        Without it, a destination in another region than the tenant's is refused (422).
        """
        consent = await transfers.grant(
            runtime,
            caller.tenant,
            region,
            reference=body.reference,
            recorded_by=caller.principal.subject,
        )
        await access.allowed(caller, "transfer_consent.grant", region, detail=consent.reference)
        return consent_out(consent)

    @router.delete("/{region}", response_model=ConsentWithdrawn)
    async def withdraw(caller: Need_write, region: str) -> ConsentWithdrawn:
        """Withdraw consent: the tenant's destinations in `region` are disabled at once and
        their pending deliveries become dead letters; 404 when there was no consent."""
        disabled = await transfers.withdraw(runtime, caller.tenant, region)
        await access.allowed(
            caller,
            "transfer_consent.withdraw",
            region,
            detail=f"{len(disabled)} destinations disabled",
        )
        return ConsentWithdrawn(region=region, disabled_destinations=list(disabled))

    return router


__all__ = ["build_consents_router"]
