"""What every CLI command shares: settings, a runtime, output as text or --json."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from tidegate.errors import TidegateError
from tidegate.runtime import Runtime, open_runtime
from tidegate.settings import Settings

T = TypeVar("T")

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def run(action: Callable[[Runtime], Awaitable[T]]) -> T:
    """Open the engines, run `action`, close them; errors exit 1 with their detail."""

    async def main() -> T:
        runtime = open_runtime(Settings())
        try:
            return await action(runtime)
        finally:
            await runtime.aclose()

    try:
        return asyncio.run(main())
    except TidegateError as exc:
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(1)


def emit(data: Any, as_json: bool, text: str | Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(text() if callable(text) else text)
