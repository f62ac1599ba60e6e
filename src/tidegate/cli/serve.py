"""tidegate serve: the api and worker roles in one process (the embedded default), or with
--processes N, the worker here and N-1 api processes on the port (cli/processes.py)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import uvicorn

from tidegate import admin
from tidegate.api.app import build_app
from tidegate.api.protocol import HttpProtocol
from tidegate.cli.common import load_settings
from tidegate.cli.processes import (
    ApiProcesses,
    listening_socket,
    on_lifeline_closed,
    port_holder,
)
from tidegate.embedded import lower_thread_priority
from tidegate.errors import TidegateError
from tidegate.model import DestinationId, TenantId
from tidegate.runtime import Runtime, open_runtime
from tidegate.settings import Settings
from tidegate.telemetry import configure_logging


@click.command()
@click.option("--host", help="Listen address (TIDEGATE_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Listen port (TIDEGATE_PORT, default 8000).")
@click.option("--demo", is_flag=True, help="Create a demo tenant, source and destination.")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    help="Processes (TIDEGATE_PROCESSES, default 1: api and worker roles in one). With N > 1"
    " this one runs the worker and starts N-1 api processes on the port.",
)
@click.option("--lifeline-fd", type=int, hidden=True, help="Set by process 0 for the others.")
def serve(
    host: str | None,
    port: int | None,
    demo: bool,
    processes: int | None,
    lifeline_fd: int | None,
) -> None:
    """Run the api and worker roles (SIGTERM drains and exits 0)."""
    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if processes is not None:
        overrides["processes"] = processes
    base = load_settings(**overrides)
    if (demo or base.demo) and base.processes > 1:
        raise click.UsageError(
            "--demo runs in one process (its receiver keeps what it got in memory)"
        )
    if base.processes > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        _restart_with_shared_metrics(base.data_dir / "metrics")
    if base.processes > 1 and base.process_index == 0:
        # Process 0 runs the worker; the api processes it starts serve the port.
        if "worker" not in base.roles:
            raise click.UsageError(
                "--processes N runs the worker in process 0: TIDEGATE_ROLES must include worker"
            )
        overrides["roles"] = frozenset({"worker"})
    if demo or base.demo:
        # The demo destination is this process's own receiver on http://127.0.0.1.
        overrides["demo"] = True
        overrides["https_only"] = False
        if not base.oidc_issuers and base.resolved_store_url.startswith("sqlite"):
            overrides["dev_tokens"] = True
        overrides["ssrf_allow_cidrs"] = (*base.ssrf_allow_cidrs, "127.0.0.1/32")
    settings = load_settings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    try:
        import uvloop

        uvloop.run(_serve(settings, lifeline_fd))
    except TidegateError as exc:
        raise click.ClickException(exc.detail) from exc


def _restart_with_shared_metrics(directory: Path) -> NoReturn:
    """Run this command again (same pid) with every process's metrics in `directory`, so
    /metrics sums the processes whichever answers. prometheus_client picks where metric
    values live when it is imported, which has happened by now; hence the exec. The
    directory is emptied first: the previous run's counts are not this run's."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    # Our own interpreter and arguments, no shell.
    os.execv(sys.executable, [sys.executable, "-m", "tidegate", *sys.argv[1:]])  # noqa: S606


async def _serve(settings: Settings, lifeline_fd: int | None) -> None:
    sockets: list[socket.socket] | None = None
    port = settings.port
    if settings.processes > 1 and settings.process_index == 0:
        # Process 0 serves no connections: it holds the port (bound with SO_REUSEPORT, not
        # listening, so the kernel hands it none) for the api processes it starts.
        held = port_holder(settings.host, settings.port)
        port = held.getsockname()[1]
        sockets = []
        # Acknowledging events comes before routing them when the cores are all busy: the
        # log keeps what is acknowledged, and routing catches up after (ADR 0014).
        lower_thread_priority(settings.worker_nice)
    elif settings.processes > 1:
        # Each api process listens on the port; the kernel spreads connections by a hash.
        sockets = [listening_socket(settings.host, settings.port)]
    runtime = open_runtime(settings)
    app = build_app(runtime)
    if settings.demo:
        demo = await ensure_demo(runtime)
        app.state.demo_receiver.secret = demo["secret"]
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        loop="none",
        http=HttpProtocol,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
        timeout_keep_alive=settings.keep_alive_s,
        server_header=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    _tune_gc()
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handlers it found:
    # make those no-ops, so a drained shutdown exits 0 as a deployment expects.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if settings.demo:
        asyncio.get_running_loop().call_later(0.5, _print_demo, settings, demo)
    if lifeline_fd is not None:
        on_lifeline_closed(lifeline_fd, lambda: setattr(server, "should_exit", True))
    if sockets is None or settings.process_index > 0:
        await server.serve(sockets=sockets)
        return
    others = ApiProcesses(settings, port=port)
    serving = asyncio.create_task(server.serve(sockets=sockets))
    # uvicorn.Server tells start and exit by attributes only (its own main loop polls them).
    try:
        while not server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if server.started:  # its start-up (migrations, keys) is done: theirs finds it done
            await others.start()
        while not server.should_exit and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        await others.stop()
        # Set already unless starting the api processes failed: then stop serving too,
        # rather than wait for a signal with none of them running.
        server.should_exit = True
        await serving


async def ensure_demo(runtime: Runtime) -> dict[str, str]:
    """The demo tenant's credentials, created on first run and kept in data_dir/demo.json (0600)."""
    settings = runtime.settings
    path: Path = settings.data_dir / "demo.json"
    url = f"http://127.0.0.1:{settings.port}/demo/webhook"
    saved = await asyncio.to_thread(lambda: path.read_text() if path.exists() else None)
    if saved is not None:
        demo: dict[str, str] = json.loads(saved)
        tenant = await runtime.store.tenants.get_tenant(TenantId(demo["tenant_id"]))
        found = await runtime.store.destinations.get_destination(
            TenantId(demo["tenant_id"]), DestinationId(demo["destination_id"])
        )
        if tenant is not None and found is not None and found.url == url:
            return demo
    tenant = await admin.create_tenant(runtime, "Demo tenant", settings.region)
    source, write_key = await admin.create_source(runtime, tenant.id, "demo")
    api_key = await admin.create_api_key(runtime, tenant.id, "demo")
    destination, secret = await admin.create_destination(
        runtime, tenant.id, url=url, name="demo receiver"
    )
    demo = {
        "tenant_id": tenant.id,
        "source_id": source.id,
        "write_key": write_key,
        "api_key": api_key,
        "destination_id": destination.id,
        "secret": secret,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(demo, handle, indent=2)
    return demo


def _print_demo(settings: Settings, demo: dict[str, str]) -> None:
    base = f"http://{settings.host}:{settings.port}"
    click.echo(
        f"""
Tidegate is running on {base} (region {settings.region}, embedded SQLite in {settings.data_dir}/)

Send a first event (Segment track call, write key as the Basic username):

  curl -s -u '{demo["write_key"]}:' {base}/v1/track \\
    -H 'content-type: application/json' \\
    -d '{{"userId": "user-1", "event": "Order Completed", "properties": {{"total": 42}}}}'

It is delivered, signed (Standard Webhooks), to the demo receiver; see what arrived:

  curl -s {base}/demo/webhook

Read it back through the API with an OAuth access token from the development issuer
(or with the demo API key, {demo["api_key"][:12]}..., in .tidegate/demo.json):

  TOKEN=$(TIDEGATE_DEV_TOKENS=true .venv/bin/tidegate dev token --tenant {demo["tenant_id"]})
  curl -s -H "authorization: Bearer $TOKEN" '{base}/v1/events?limit=5'
  curl -s -H "authorization: Bearer $TOKEN" '{base}/v1/deliveries?limit=5'

Demo tenant {demo["tenant_id"]}; credentials in {settings.data_dir}/demo.json. Ctrl-C stops.
""",
        err=True,
    )


def _tune_gc() -> None:
    """Keep the collector from pausing the event loop under load.

    With CPython's defaults (a young collection every 700 allocations) a process
    handling ~1,000 events/s ran a full collection about once a second, each pausing the
    loop for up to ~100 ms: the whole ingest-to-delivery tail (bench, docs/benchmarks.md).
    The objects alive at start-up (modules, settings, the app) move to the permanent
    generation, so no collection scans them again, and young collections run per 50,000
    allocations; cyclic garbage is still collected, later and in fewer passes.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
