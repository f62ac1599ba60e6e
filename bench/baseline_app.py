"""The machine's ceiling: the smallest ASGI app, under uvicorn with httptools and uvloop.

    python bench/baseline_app.py --port PORT [--workers N]

Reads the request body and answers 200 {"success":true}, like Tidegate's ingest, with
none of its work. The benchmark hits it with the same generator as Tidegate, and runs
it in as many processes (uvicorn workers) as Tidegate's `serve --processes`.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn

Message = MutableMapping[str, Any]
_BODY = b'{"success":true}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"16")]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the body, as a real endpoint must
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        # uvicorn starts workers from an import string
        "baseline_app:app" if args.workers > 1 else app,
        app_dir=str(Path(__file__).parent),
        workers=args.workers,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
