"""CloudEvents 1.0 over HTTP: structured, binary and batched modes.

Every event is stored in the structured JSON form (`data` for JSON data,
`data_base64` otherwise) and delivered that way. Deduplication uses (source, id),
as the spec says consumers may.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tidegate.api.ingest.accept import Ingestor, Prepared
from tidegate.api.ingest.body import decode_json, header, read_body, require_media_type
from tidegate.api.ingest.segment import MAX_BATCH_BYTES, MAX_EVENT_BYTES, OK
from tidegate.errors import InvalidEvent, PayloadTooLarge, TidegateError, Unauthorized
from tidegate.ids import now_ms

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_ATTRIBUTE = re.compile(r"^[a-z0-9]{1,20}$")
_REQUIRED = ("id", "source", "type")
_MAX_ATTR = 1024
_encode = msgspec.json.Encoder().encode


def prepare(event: Any, *, where: str, received_at_ms: int) -> Prepared:
    if not isinstance(event, dict):
        raise InvalidEvent(f"{where}: a CloudEvent must be a JSON object")
    if event.get("specversion") != "1.0":
        raise InvalidEvent(f'{where}: specversion must be "1.0"')
    for name in _REQUIRED:
        value = event.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidEvent(f"{where}: required attribute {name!r} must be a non-empty string")
        if len(value) > _MAX_ATTR:
            raise InvalidEvent(f"{where}: attribute {name!r} is longer than {_MAX_ATTR}")
    for name, value in event.items():
        if name in ("data", "data_base64"):
            continue
        if not _ATTRIBUTE.match(name):
            raise InvalidEvent(
                f"{where}: attribute name {name[:40]!r} must be 1-20 lowercase letters or digits"
            )
        if value is not None and not isinstance(value, (str, int, bool)):
            raise InvalidEvent(f"{where}: attribute {name!r} must be a string, integer or boolean")
    if "data" in event and "data_base64" in event:
        raise InvalidEvent(f"{where}: data and data_base64 are mutually exclusive")
    if "data_base64" in event:
        encoded = event["data_base64"]
        if not isinstance(encoded, str):
            raise InvalidEvent(f"{where}: data_base64 must be a string")
        try:
            base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise InvalidEvent(f"{where}: data_base64 is not valid base64") from exc
    payload = _encode(event)
    if len(payload) > MAX_EVENT_BYTES:
        raise PayloadTooLarge(
            f"{where}: event is {len(payload)} bytes; the limit is {MAX_EVENT_BYTES} bytes"
        )
    return Prepared(
        kind="cloudevents",
        type="cloudevent",
        name=event["type"],
        dedupe_key=f"{event['source']}\x00{event['id']}",
        message_id=event["id"],
        payload=payload,
        received_at_ms=received_at_ms,
    )


def from_binary(request: Request, body: bytes) -> dict[str, Any]:
    """Rebuild the structured form from `ce-*` headers and the body as data."""
    event: dict[str, Any] = {}
    for key, value in request.headers.items():
        if key.startswith("ce-"):
            event[key[3:]] = value
    if not event:
        raise InvalidEvent("binary mode needs ce-specversion, ce-id, ce-source and ce-type headers")
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media:
        event["datacontenttype"] = request.headers["content-type"]
    if body:
        if media == "application/json" or media.endswith("+json"):
            event["data"] = decode_json(body)
        else:
            event["data_base64"] = base64.b64encode(body).decode()
    return event


class CloudEventsEndpoint:
    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    async def receive(self, request: Request) -> Response:
        found = await self._ingestor.authenticate_header(header(request, b"authorization"))
        if found is None:
            raise Unauthorized(
                "send the write key as the HTTP Basic username, or a Bearer access token"
            )
        source, _tenant = found
        media = (header(request, b"content-type") or "").split(";", 1)[0].strip().lower()
        received = now_ms()
        try:
            if media == STRUCTURED:
                body = await read_body(request, limit=MAX_EVENT_BYTES)
                events = [prepare(decode_json(body), where="event", received_at_ms=received)]
            elif media == BATCH:
                batch = decode_json(await read_body(request, limit=MAX_BATCH_BYTES))
                if not isinstance(batch, list) or not batch:
                    raise InvalidEvent("a CloudEvents batch must be a non-empty JSON array")
                events = [
                    prepare(item, where=f"batch[{i}]", received_at_ms=received)
                    for i, item in enumerate(batch)
                ]
            elif "ce-specversion" in request.headers:
                body = await read_body(request, limit=MAX_EVENT_BYTES)
                events = [
                    prepare(from_binary(request, body), where="event", received_at_ms=received)
                ]
            else:
                require_media_type(request, STRUCTURED, BATCH)
                return OK  # unreachable: require_media_type raised
        except TidegateError:
            self._ingestor.reject(source.tenant_id, 1)
            raise
        await self._ingestor.accept(source, events)
        return OK
