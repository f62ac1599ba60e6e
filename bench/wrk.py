"""The same closed loops under wrk, a load generator in C, when it is installed.

The Python generator (loadgen.py) costs 17-25 µs of CPU per request on the machine
under test; a generator's CPU is taken from the server's two cores. wrk answers whether
the generator bounds a figure: the baseline and (a) run again under it, with the same
request bodies (a unique messageId per request, from a Lua script) and the same check of
each answer (200 and `{"success":true}`), so its count of acknowledged events is a
ledger too. wrk's own CPU is read from /proc before it is reaped.

wrk is not a Python package: `apt-get install wrk` (Debian) or `brew install wrk`. When
it is not on PATH the run says so and goes on without these rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import procstat

# One thread: the machine has two cores, and one wrk thread drives a few hundred
# connections at well over the rates measured here.
THREADS = 1

# request(): a track event with a messageId unique per run, thread and request;
# response(): counts answers that are exactly what Tidegate acknowledges with;
# done(): one JSON line with the counts and wrk's latency percentiles (µs).
_SCRIPT = r"""
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  prefix = args[1] .. "-" .. id .. "-"
  ok = 0
  bad = 0
  i = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = args[2]
end
function request()
  i = i + 1
  local body = '{"type":"track","userId":"u-' .. (i % 1000) .. '","event":"Bench Event",'
    .. '"messageId":"' .. prefix .. i .. '","properties":{"i":' .. i .. '}}'
  return wrk.format(nil, nil, nil, body)
end
function response(status, headers, body)
  if status == 200 and body == '{"success":true}' then ok = ok + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local tok, tbad = 0, 0
  for _, t in ipairs(threads) do
    tok = tok + t:get("ok")
    tbad = tbad + t:get("bad")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"ok":%d,"bad":%d,"requests":%d,"duration_us":%d,'
    .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
    .. '"latency_us":{"p50":%d,"p95":%d,"p99":%d,"p99_9":%d,"max":%d}}\n',
    tok, tbad, summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""


class WrkFailed(RuntimeError):
    """wrk itself failed (no result, an error exit): the run reports it and goes on."""


def executable() -> str | None:
    return shutil.which("wrk")


def parse(stdout: str, connections: int, seconds: float, threads: int = THREADS) -> dict[str, Any]:
    """One wrk run's figures, in the shape of run.closed_summary."""
    line = next((x for x in stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    if line is None:
        raise WrkFailed(f"wrk printed no result:\n{stdout[-2000:]}")
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    elapsed = raw["duration_us"] / 1e6
    rate = round(raw["ok"] / elapsed, 1) if elapsed else 0.0
    sockets = {k: v for k, v in raw["socket_errors"].items() if v}
    return {
        "mode": "closed",
        "generator": "wrk",
        "offered": (
            f"{connections} connections, {seconds:g} s"
            f" (wrk, {threads} thread{'s' if threads > 1 else ''})"
        ),
        "elapsed_s": round(elapsed, 2),
        "requests_sent": raw["requests"],
        "requests_ok": raw["ok"],
        "requests_per_s": rate,
        "events_sent": raw["requests"],
        "events_acked": raw["ok"],
        "events_per_s": rate,
        "errors": {**({"not acknowledged": raw["bad"]} if raw["bad"] else {}), **sockets},
        "latency_ms": {k: round(v / 1000, 2) for k, v in raw["latency_us"].items()},
    }


def closed(
    url: str,
    authorization: str,
    prefix: str,
    *,
    connections: int,
    seconds: float,
    pids: Callable[[], Mapping[str, int | Sequence[int]]],
    threads: int = THREADS,
) -> dict[str, Any]:
    """wrk against `url` for `seconds` (blocking: run it in a thread). The CPU of `pids()`
    and of wrk itself (as "wrk") is measured over exactly wrk's lifetime."""
    wrk = executable()
    if wrk is None:
        raise WrkFailed("wrk is not installed")
    with tempfile.TemporaryDirectory(prefix="tidegate-wrk-") as tmp:
        script = Path(tmp) / "track.lua"
        script.write_text(_SCRIPT)
        argv = [
            wrk,
            *("-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s"),
            *("--timeout", "10s", "-s", str(script), url, "--", prefix, authorization),
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        meter = procstat.ProcessMeter({**pids(), "wrk": proc.pid})
        meter.start(time.monotonic())
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        # exited but not reaped: its /proc entry still holds its CPU time
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        resources = meter.stop(time.monotonic())
        if proc.wait() != 0:
            raise WrkFailed(f"wrk exited with {proc.returncode}: {stdout.strip()[-2000:]}")
    summary = parse(stdout, connections, seconds, threads)
    summary["resources"] = resources
    return summary
