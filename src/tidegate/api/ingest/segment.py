"""Segment's HTTP Tracking API: /v1/track, identify, page, screen, group, alias, batch.

Same message shape and limits as Segment (32 KB per event, 500 KB per batch), so the
Segment and RudderStack SDKs work unchanged. A batch is all or nothing: one invalid
message refuses the whole request and nothing is written.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tidegate.api.ingest.accept import Ingestor, Prepared
from tidegate.api.ingest.body import decode_json, header, read_body, require_media_type
from tidegate.errors import InvalidEvent, PayloadTooLarge, TidegateError
from tidegate.ids import now_ms

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_MESSAGE_ID = 256
MAX_BATCH_EVENTS = 2_500
TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})
_JSON = ("application/json", "text/plain")
_encode = msgspec.json.Encoder().encode
OK = Response(b'{"success":true}', media_type="application/json")


@functools.lru_cache(maxsize=4)
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _iso(ms: int) -> str:
    """`receivedAt`: ISO 8601 UTC to the millisecond. The date and time to the second are
    made once a second (single events rarely share a millisecond)."""
    second, milli = divmod(ms, 1000)
    return f"{_iso_second(second)}.{milli:03d}Z"


def prepare(message: Any, *, where: str, received_at_ms: int, received_at: str) -> Prepared:
    """Validate one Segment message and give it a messageId and receivedAt
    (`received_at`: `received_at_ms` in ISO 8601, made once for a whole batch)."""
    if not isinstance(message, dict):
        raise InvalidEvent(f"{where}: a message must be a JSON object")
    kind = message.get("type")
    if kind not in TYPES:
        raise InvalidEvent(f"{where}: type must be one of {', '.join(sorted(TYPES))}")
    user_id, anonymous_id = message.get("userId"), message.get("anonymousId")
    for field, value in (("userId", user_id), ("anonymousId", anonymous_id)):
        if value is not None and not isinstance(value, (str, int)):
            raise InvalidEvent(f"{where}: {field} must be a string")
    if user_id in (None, "") and anonymous_id in (None, ""):
        raise InvalidEvent(f"{where}: userId or anonymousId is required")
    name: str | None = None
    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name:
            raise InvalidEvent(f"{where}: track needs a non-empty string 'event'")
    elif kind in ("page", "screen"):
        raw = message.get("name")
        name = raw if isinstance(raw, str) else None
    elif kind == "alias" and not isinstance(message.get("previousId"), (str, int)):
        raise InvalidEvent(f"{where}: alias needs previousId")
    for field in ("properties", "traits", "context", "integrations"):
        if field in message and message[field] is not None and not isinstance(message[field], dict):
            raise InvalidEvent(f"{where}: {field} must be an object")
    message_id = message.get("messageId")
    if message_id is None or message_id == "":
        message_id = new_message_id()
    elif not isinstance(message_id, str):
        raise InvalidEvent(f"{where}: messageId must be a string")
    elif len(message_id) > MAX_MESSAGE_ID:
        raise InvalidEvent(f"{where}: messageId is longer than {MAX_MESSAGE_ID} characters")
    message.pop("writeKey", None)
    message["messageId"] = message_id
    message["receivedAt"] = received_at
    payload = _encode(message)
    if len(payload) > MAX_EVENT_BYTES:
        raise PayloadTooLarge(
            f"{where}: message is {len(payload)} bytes; the limit is {MAX_EVENT_BYTES} bytes"
        )
    return Prepared(
        kind="segment",
        type=kind,
        name=name,
        dedupe_key=message_id,
        message_id=message_id,
        payload=payload,
        received_at_ms=received_at_ms,
    )


def new_message_id() -> str:
    from tidegate.ids import new_event_id

    return f"tg-{new_event_id()}"


class SegmentEndpoints:
    """The Starlette handlers; `ingestor` does the durable part."""

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    def single(self, kind: str) -> Callable[[Request], Awaitable[Response]]:
        """The handler of /v1/<kind> (track, identify, ...)."""

        async def endpoint(request: Request) -> Response:
            return await self._handle(request, kind)

        endpoint.__name__ = f"segment_{kind}"
        return endpoint

    async def batch(self, request: Request) -> Response:
        return await self._handle(request, None)

    async def _handle(self, request: Request, kind: str | None) -> Response:
        require_media_type(request, *_JSON)
        # Authenticate before reading a stranger's body, when the credential is a header.
        from_header = await self._ingestor.authenticate_header(header(request, b"authorization"))
        if from_header is not None:
            source, _tenant = from_header
        limit = MAX_EVENT_BYTES if kind else MAX_BATCH_BYTES
        try:
            body = decode_json(await read_body(request, limit=limit))
            if not isinstance(body, dict):
                raise InvalidEvent("the body must be a JSON object")
        except TidegateError:
            if from_header is not None:
                self._ingestor.reject(source.tenant_id, 1)
            raise
        if from_header is None:
            body_key = body.get("writeKey")
            source, _tenant = await self._ingestor.authenticate(
                body_key if isinstance(body_key, str) else None
            )
        received = now_ms()
        try:
            if kind is not None:
                if body.get("type", kind) != kind:
                    raise InvalidEvent(f"type {body.get('type')!r} sent to /v1/{kind}")
                body["type"] = kind
                events = [
                    prepare(
                        body, where="message", received_at_ms=received, received_at=_iso(received)
                    )
                ]
            else:
                events = self._prepare_batch(body, received)
        except TidegateError:
            self._ingestor.reject(source.tenant_id, 1 if kind else _batch_size(body))
            raise
        await self._ingestor.accept(source, events)
        return OK

    def _prepare_batch(self, body: dict[str, Any], received: int) -> list[Prepared]:
        messages = body.get("batch")
        if not isinstance(messages, list) or not messages:
            raise InvalidEvent("batch must be a non-empty array of messages")
        if len(messages) > MAX_BATCH_EVENTS:
            raise PayloadTooLarge(f"batch has over {MAX_BATCH_EVENTS} messages")
        shared = {k: body[k] for k in ("context", "integrations") if isinstance(body.get(k), dict)}
        prepared = []
        received_at = _iso(received)
        for index, message in enumerate(messages):
            if isinstance(message, dict):
                for key, value in shared.items():
                    message.setdefault(key, value)
            prepared.append(
                prepare(
                    message,
                    where=f"batch[{index}]",
                    received_at_ms=received,
                    received_at=received_at,
                )
            )
        return prepared


def _batch_size(body: Any) -> int:
    batch = body.get("batch") if isinstance(body, dict) else None
    return len(batch) if isinstance(batch, list) else 1
