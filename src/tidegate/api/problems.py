"""The only place that renders RFC 9457 application/problem+json.

Bodies also carry `code` and `message` (the RudderStack SDK retries a 4xx whose
body lacks them). Unexpected exceptions become a generic 500 that names the request
id and nothing else; the detail goes to the log, never to the client.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from tidegate.errors import TidegateError

log = structlog.get_logger(__name__)
_encode = msgspec.json.Encoder().encode
MEDIA_TYPE = "application/problem+json"


def problem(
    status: int, code: str, title: str, detail: str, request: Request, **extensions: Any
) -> Response:
    body: dict[str, Any] = {
        "type": f"https://docs.tidegate.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.scope.get("tidegate.request_id", ""),
        "code": code,
        "message": detail,
        **extensions,
    }
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="tidegate", Bearer realm="tidegate"'
    if status == 503:
        headers["Retry-After"] = "1"
    return Response(_encode(body), status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def on_tidegate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TidegateError)  # noqa: S101 - registered for this type only
    if exc.status >= 500:
        log.warning("request.failed", code=exc.code, detail=exc.detail)
    request.scope["tidegate.problem"] = exc.detail
    return problem(exc.status, exc.code, exc.title, exc.detail, request, **exc.extensions)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return problem(exc.status_code, code, str(exc.detail), str(exc.detail), request)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("request.crashed", error_type=type(exc).__name__)
    return problem(
        500,
        "internal",
        "Internal error",
        "an unexpected error occurred; quote the instance id when reporting it",
        request,
    )
