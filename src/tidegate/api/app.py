"""build_app: the api role as an ASGI application (FastAPI on Starlette)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidegate import telemetry
from tidegate.api import problems
from tidegate.api.audit import AccessAudit
from tidegate.api.auth import SCOPES, Authenticator
from tidegate.api.consents import build_consents_router
from tidegate.api.demo import DemoReceiver
from tidegate.api.ingest.accept import Ingestor
from tidegate.api.ingest.cloudevents import BATCH, STRUCTURED, CloudEventsEndpoint
from tidegate.api.ingest.segment import TYPES, SegmentEndpoints
from tidegate.api.manage import build_manage_router
from tidegate.api.operate import build_operate_router
from tidegate.api.read import build_read_router
from tidegate.errors import TidegateError
from tidegate.pipeline.runner import Worker, guarded, trim_log
from tidegate.runtime import Runtime
from tidegate.security import devissuer
from tidegate.security.audit import Auditor
from tidegate.security.devissuer import DevIssuer
from tidegate.security.tokens import IssuerConfig, TokenValidator
from tidegate.settings import Settings

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


Endpoint = Callable[[Request], Awaitable[Response]]
_REQUEST_PREFIX = secrets.token_hex(4)
MAX_HEADER_BYTES = 16 * 1024
_request_numbers = itertools.count(1)


class Front:
    """The outermost ASGI layer: request ids, and a short path for ingest.

    Every request gets a request id (X-Request-Id in and out, bound in the logs and
    named as `instance` in problem bodies). POSTs to the ingest endpoints go straight
    to their handlers, skipping the framework's middleware stack: they are the hot
    path, and they need nothing from it. Everything else is served by FastAPI.
    """

    def __init__(
        self, api: FastAPI, fast: dict[str, Endpoint], access: AccessAudit | None = None
    ) -> None:
        self.api = api
        self.fast = fast
        self.access = access

    @property
    def state(self) -> Any:
        return self.api.state

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        # One pass over the headers: their size, and the first value of each name, which
        # the ingest handlers read (Starlette's Headers scans the list on each lookup and
        # raises and catches a KeyError for an absent name).
        header_bytes = 0
        first: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            first.setdefault(name, value)
        incoming = first.get(b"x-request-id", b"").decode("latin-1")
        request_id = (
            incoming
            if 0 < len(incoming) <= 64 and incoming.isprintable()
            else f"{_REQUEST_PREFIX}{next(_request_numbers):x}"
        )
        scope["tidegate.request_id"] = request_id
        scope["tidegate.headers"] = first
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            endpoint = self.fast.get(scope["path"]) if scope["method"] == "POST" else None
            if header_bytes > MAX_HEADER_BYTES:
                request = Request(scope, receive)
                response = problems.problem(
                    431, "headers_too_large", "Request header fields too large",
                    f"request headers total {header_bytes} bytes; the limit is"
                    f" {MAX_HEADER_BYTES}", request,
                )  # fmt: skip
                await response(scope, receive, send_with_id)
            elif endpoint is None:
                await self.api(scope, receive, send_with_id)
            else:
                request = Request(scope, receive)
                try:
                    response = await endpoint(request)
                except TidegateError as exc:
                    telemetry.REJECTED.labels(exc.code).inc()
                    response = await problems.on_tidegate_error(request, exc)
                except Exception as exc:  # noqa: BLE001 - rendered as a 500 and logged
                    response = await problems.on_unexpected(request, exc)
                await response(scope, receive, send_with_id)
        finally:
            if status >= 400:
                log.info(
                    "request.refused", method=scope["method"], path=scope["path"], status=status
                )
            if status in (401, 403) and self.access is not None:
                try:
                    await self.access.denied(scope, status)
                except Exception:
                    log.exception("audit.write_failed", action="auth.failed")
            structlog.contextvars.unbind_contextvars("request_id")


def build_app(runtime: Runtime) -> Front:
    settings = runtime.settings
    worker: Worker | None = Worker(runtime) if "worker" in settings.roles else None
    draining = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        meter_task = asyncio.create_task(runtime.meter.run())
        background = [meter_task]
        if worker is not None:
            worker.start()
        elif settings.process_index > 0:  # an extra api process trims its own log partition
            background.append(asyncio.create_task(guarded("trim", partial(trim_log, runtime))))
        log.info("tidegate.started", region=settings.region, roles=sorted(settings.roles))
        try:
            yield
        finally:
            draining.set()
            if worker is not None:
                await worker.stop()
            await validator.aclose()
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
    app.state.route_scopes = {}
    app.add_exception_handler(TidegateError, problems.on_tidegate_error)
    app.add_exception_handler(HTTPException, problems.on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, problems.on_unexpected)

    validator = build_validator(settings)
    auth = Authenticator(runtime, validator)
    access = AccessAudit(Auditor(runtime.store.audit))
    fast = _mount_api(app, runtime, worker, auth, access) if "api" in settings.roles else {}
    app.openapi = lambda: _openapi_with_scopes(app)  # type: ignore[method-assign]

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
        return Response(
            generate_latest(telemetry.metrics_registry()), media_type=CONTENT_TYPE_LATEST
        )

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

    app.state.worker = worker
    app.state.runtime = runtime
    return Front(app, fast, access)


def _mount_api(
    app: FastAPI,
    runtime: Runtime,
    worker: Worker | None,
    auth: Authenticator,
    access: AccessAudit,
) -> dict[str, Endpoint]:
    """The api role: ingest and the /v1 API. Returns the ingest fast paths for Front."""
    ingestor = Ingestor(runtime, auth)
    segment = SegmentEndpoints(ingestor)
    for kind in sorted(TYPES):
        app.add_api_route(
            f"/v1/{kind}",
            segment.single(kind),
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
    cloudevents = CloudEventsEndpoint(ingestor)
    app.add_api_route(
        "/v1/cloudevents",
        cloudevents.receive,
        methods=["POST"],
        tags=["ingest"],
        summary="CloudEvents (structured, binary, batch)",
        openapi_extra=_CLOUDEVENTS_BODY,
    )

    routers = [
        build_read_router(runtime, auth, access, worker.wake if worker else _noop),
        build_manage_router(runtime, auth, access),
        build_consents_router(runtime, auth, access),
        build_operate_router(runtime, auth, access),
    ]
    scopes: dict[tuple[str, str], str] = app.state.route_scopes
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                needed = _scope_of(route)
                for method in route.methods or ():
                    if needed:
                        scopes[(route.path, method.lower())] = needed
        app.include_router(router)

    fast: dict[str, Endpoint] = {f"/v1/{kind}": segment.single(kind) for kind in TYPES}
    fast["/v1/batch"] = segment.batch
    fast["/v1/cloudevents"] = cloudevents.receive
    return fast


def build_validator(settings: Settings) -> TokenValidator:
    """Trusted issuers from settings, plus the development issuer when it is on."""
    validator = TokenValidator([IssuerConfig(**raw) for raw in settings.oidc_issuers])
    if settings.dev_tokens:
        dev = DevIssuer(settings.data_dir)
        validator.trust_static(
            IssuerConfig(issuer=devissuer.ISSUER, audience=devissuer.AUDIENCE), [dev.public_jwk]
        )
    return validator


def _scope_of(route: APIRoute) -> str | None:
    """The scope a route's `require_<scope>` dependency asks for (see Authenticator)."""
    for dependency in route.dependant.dependencies:
        name = getattr(dependency.call, "__name__", "")
        if name == "require_operator":
            return "tidegate:admin"
        if name.startswith("require_"):
            return name.removeprefix("require_").replace("_", ":", 1)
    return None


def _openapi_with_scopes(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the one scope each endpoint needs as its security."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    schema.setdefault("components", {})["securitySchemes"] = {
        "oauth2": {
            "type": "oauth2",
            "description": "JWT access tokens from the identity provider (RFC 9068), or an"
            " API key (tgk_...) as the bearer token.",
            "flows": {"clientCredentials": {"tokenUrl": "/", "scopes": SCOPES}},
        },
        "writeKey": {"type": "http", "scheme": "basic", "description": "Segment write key"},
    }
    for (path, method), scope in app.state.route_scopes.items():
        operation = schema["paths"].get(path, {}).get(method)
        if operation is not None:
            operation["security"] = [{"oauth2": [scope]}]
            operation["description"] = (
                operation.get("description", "") + f"\n\nScope: `{scope}`."
            ).strip()
    app.openapi_schema = schema
    return app.openapi_schema


def _noop() -> None:
    return None


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    details = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in exc.errors()
    )
    return problems.problem(400, "invalid_request", "Invalid request", details, request)
