"""build_app: the api role as an ASGI application (FastAPI on Starlette)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidegate.api import problems
from tidegate.api.auth import ApiKeys
from tidegate.api.demo import DemoReceiver
from tidegate.api.ingest.accept import Ingestor
from tidegate.api.ingest.cloudevents import BATCH, STRUCTURED, CloudEventsEndpoint
from tidegate.api.ingest.segment import TYPES, SegmentEndpoints
from tidegate.api.read import build_read_router
from tidegate.errors import TidegateError
from tidegate.pipeline.runner import Worker
from tidegate.runtime import Runtime

log = structlog.get_logger(__name__)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

_SEGMENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}}
        },
    },
    "security": [{"writeKey": []}],
    "responses": {"200": {"description": 'Accepted and durably stored: {"success": true}'}},
}
_CLOUDEVENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            STRUCTURED: {"schema": {"type": "object"}},
            BATCH: {"schema": {"type": "array", "items": {"type": "object"}}},
            "*/*": {"schema": {}, "description": "binary mode: ce-* headers, body is data"},
        },
    },
    "security": [{"writeKey": []}],
}


class RequestIds:
    """Pure ASGI middleware: a request id per request (X-Request-Id in and out), one log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = (
            incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        )
        scope["tidegate.request_id"] = request_id
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if status >= 400:
                log.info(
                    "request.refused", method=scope["method"], path=scope["path"], status=status
                )
            structlog.contextvars.unbind_contextvars("request_id")


def build_app(runtime: Runtime) -> FastAPI:
    settings = runtime.settings
    worker: Worker | None = Worker(runtime) if "worker" in settings.roles else None
    draining = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        meter_task = asyncio.create_task(runtime.meter.run())
        if worker is not None:
            worker.start()
        log.info("tidegate.started", region=settings.region, roles=sorted(settings.roles))
        try:
            yield
        finally:
            draining.set()
            if worker is not None:
                await worker.stop()
            meter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await meter_task
            await runtime.aclose()
            log.info("tidegate.stopped")

    app = FastAPI(
        title="Tidegate",
        version="0.1.0",
        summary="Multi-tenant event gateway",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.add_exception_handler(TidegateError, problems.on_tidegate_error)
    app.add_exception_handler(HTTPException, problems.on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, problems.on_unexpected)

    ingestor = Ingestor(runtime)
    segment = SegmentEndpoints(ingestor)
    for kind in sorted(TYPES):
        app.add_api_route(
            f"/v1/{kind}",
            _bind_kind(segment, kind),
            methods=["POST"],
            tags=["ingest"],
            summary=f"Segment {kind}",
            openapi_extra=_SEGMENT_BODY,
            name=f"segment_{kind}",
        )
    app.add_api_route(
        "/v1/batch",
        segment.batch,
        methods=["POST"],
        tags=["ingest"],
        summary="Segment batch",
        openapi_extra=_SEGMENT_BODY,
    )
    app.add_api_route(
        "/v1/cloudevents",
        CloudEventsEndpoint(ingestor).receive,
        methods=["POST"],
        tags=["ingest"],
        summary="CloudEvents (structured, binary, batch)",
        openapi_extra=_CLOUDEVENTS_BODY,
    )

    app.include_router(
        build_read_router(runtime, ApiKeys(runtime), worker.wake if worker else _noop)
    )

    async def livez(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        if draining.is_set():
            return JSONResponse({"status": "draining"}, status_code=503)
        try:
            await runtime.store.ping()
        except TidegateError as exc:
            return JSONResponse({"status": "unavailable", "detail": exc.detail}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for path, endpoint in (("/livez", livez), ("/readyz", readyz), ("/metrics", metrics)):
        app.add_api_route(
            path, endpoint, methods=["GET"], tags=["operations"], include_in_schema=True
        )

    if settings.demo:
        receiver = DemoReceiver(secret=None)
        app.state.demo_receiver = receiver
        app.add_api_route(
            "/demo/webhook", receiver.receive, methods=["POST"], include_in_schema=False
        )
        app.add_api_route(
            "/demo/webhook", receiver.recent, methods=["GET"], include_in_schema=False
        )

    app.add_middleware(RequestIds)
    app.state.worker = worker
    app.state.runtime = runtime
    return app


def _bind_kind(segment: SegmentEndpoints, kind: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        request.path_params["kind"] = kind
        return await segment.single(request)

    endpoint.__name__ = f"segment_{kind}"
    return endpoint


def _noop() -> None:
    return None


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    details = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in exc.errors()
    )
    return problems.problem(400, "invalid_request", "Invalid request", details, request)
