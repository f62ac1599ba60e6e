"""The audit log over HTTP, and operator endpoints (tenants) that need admin + MFA."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from tidegate import admin
from tidegate.api.audit import AccessAudit
from tidegate.api.auth import Authenticator, Caller
from tidegate.api.views import AuditPage, TenantIn, TenantOut, audit_out, iso
from tidegate.runtime import Runtime
from tidegate.security.tokens import Principal


def build_operate_router(runtime: Runtime, auth: Authenticator, access: AccessAudit) -> APIRouter:
    router = APIRouter(prefix="/v1")
    store = runtime.store
    NeedAudit = Annotated[Caller, Depends(auth.require("audit:read"))]
    Operator = Annotated[Principal, Depends(auth.require_operator())]
    Limit = Annotated[int, Query(ge=1, le=500)]

    @router.get("/audit", response_model=AuditPage, tags=["audit"])
    async def tenant_audit(
        caller: NeedAudit, cursor: int | None = None, limit: Limit = 100
    ) -> AuditPage:
        """The tenant's own audit records, newest first (reading them is audited too)."""
        rows = await store.audit.list_audit(caller.tenant.id, after_seq=cursor, limit=limit)
        await access.allowed(caller, "audit.read")
        nxt = rows[-1].seq if len(rows) == limit else None
        return AuditPage(data=[audit_out(r) for r in rows], next_cursor=nxt)

    @router.get("/admin/audit", response_model=AuditPage, tags=["operator"])
    async def all_audit(
        principal: Operator,
        request: Request,
        tenant_id: str | None = None,
        cursor: int | None = None,
        limit: Limit = 100,
    ) -> AuditPage:
        """Every tenant's audit records, or one tenant's (operators, MFA required)."""
        rows = await store.audit.list_audit(tenant_id, after_seq=cursor, limit=limit)
        await access.operator(principal, request.scope, "audit.read_all", tenant_id)
        nxt = rows[-1].seq if len(rows) == limit else None
        return AuditPage(data=[audit_out(r) for r in rows], next_cursor=nxt)

    @router.get("/admin/tenants", response_model=list[TenantOut], tags=["operator"])
    async def list_tenants(principal: Operator, request: Request) -> list[TenantOut]:
        """Every tenant of this cell (operators, MFA required)."""
        rows = await store.tenants.list_tenants()
        await access.operator(principal, request.scope, "tenants.list", None)
        return [
            TenantOut(id=t.id, name=t.name, region=t.region, created_at=iso(t.created_at_ms))
            for t in rows
        ]

    @router.post("/admin/tenants", response_model=TenantOut, status_code=201, tags=["operator"])
    async def create_tenant(principal: Operator, request: Request, body: TenantIn) -> TenantOut:
        """Create a tenant pinned to this cell's region (operators, MFA required)."""
        tenant = await admin.create_tenant(runtime, body.name, body.region)
        await access.operator(principal, request.scope, "tenant.create", tenant.id)
        return TenantOut(
            id=tenant.id,
            name=tenant.name,
            region=tenant.region,
            created_at=iso(tenant.created_at_ms),
        )

    return router
