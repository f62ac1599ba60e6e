"""The demo webhook receiver that `make run` points its demo destination at.

It verifies each delivery's Standard Webhooks signature, as a real receiver would,
logs one line per delivery (ids and verification result, never the payload) and
keeps the last 100 for `GET /demo/webhook`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidegate.security import signing

log = structlog.get_logger(__name__)


class DemoReceiver:
    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        self.received: deque[dict[str, Any]] = deque(maxlen=100)

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
        verified = bool(self.secret) and signing.verify(
            self.secret or "", headers, body, now=int(time.time())
        )
        entry = {
            "webhook_id": headers.get("webhook-id"),
            "webhook_timestamp": headers.get("webhook-timestamp"),
            "signature_verified": verified,
            "bytes": len(body),
        }
        self.received.append(entry)
        log.info("demo.webhook_received", **entry)
        return Response(status_code=204 if verified else 401)

    async def recent(self, request: Request) -> Response:
        return JSONResponse(list(self.received))
