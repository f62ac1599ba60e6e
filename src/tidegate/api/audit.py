"""Recording API access in the audit log.

`allowed` is awaited before a handler returns data or reports a change: if the record
cannot be written, the request fails (503) and returns nothing. `denied` records
authentication and authorization failures (401, 403) after the fact, from Front.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from tidegate.api.auth import Caller
from tidegate.ids import now_ms
from tidegate.security.audit import AuditEntry, Auditor
from tidegate.security.tokens import Principal


class AccessAudit:
    def __init__(self, auditor: Auditor) -> None:
        self._auditor = auditor

    async def allowed(
        self, caller: Caller, action: str, resource: str | None = None, *, detail: str | None = None
    ) -> None:
        """Record a successful access or change by `caller` (before answering)."""
        principal = caller.principal
        await self._auditor.record(
            AuditEntry(
                at_ms=now_ms(),
                tenant_id=caller.tenant.id,
                actor=principal.subject,
                client_id=principal.client_id,
                source_ip=caller.source_ip,
                action=action,
                resource=resource,
                outcome="success",
                request_id=caller.request_id,
                detail=detail,
            )
        )

    async def operator(
        self,
        principal: Principal,
        scope: MutableMapping[str, Any],
        action: str,
        resource: str | None,
    ) -> None:
        """Record an operator action (no tenant of its own)."""
        await self._auditor.record(
            AuditEntry(
                at_ms=now_ms(),
                tenant_id=None,
                actor=principal.subject,
                client_id=principal.client_id,
                source_ip=_client_ip(scope),
                action=action,
                resource=resource,
                outcome="success",
                request_id=scope.get("tidegate.request_id"),
            )
        )

    async def denied(self, scope: MutableMapping[str, Any], status: int) -> None:
        """Record a 401/403: who tried (if known), what, and why."""
        principal: Principal | None = scope.get("tidegate.principal")
        await self._auditor.record(
            AuditEntry(
                at_ms=now_ms(),
                tenant_id=principal.tenant_id if principal else None,
                actor=principal.subject if principal else "anonymous",
                client_id=principal.client_id if principal else None,
                source_ip=_client_ip(scope),
                action="auth.failed",
                resource=f"{scope.get('method')} {scope.get('path')}",
                outcome="denied",
                request_id=scope.get("tidegate.request_id"),
                detail=f"{status}: {scope.get('tidegate.problem', '')}"[:300],
            )
        )


def _client_ip(scope: MutableMapping[str, Any]) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None
