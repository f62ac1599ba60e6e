"""The Markdown report of one run, and docs/benchmarks.md (created with its header once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_HEADER = """# Benchmarks

What Tidegate sustains on one machine, measured by `bench/run.py`. Each section under
"Runs" is one run, appended by the benchmark itself. Compare runs on the same machine
only, and read every figure next to the baseline of the same run: the machines these
runs use are shared and noisy, so absolute numbers drift from run to run; ratios measured
within one run drift much less.

## Command

```sh
make bench                            # = .venv/bin/python bench/run.py: everything, with the
                                      #   10-minute soak (about 15-20 minutes)
make bench SOAK=0                     # everything but the soak (about 5 minutes)
make bench QUICK=1                    # = bench/run.py --quick: shorter windows, no steps, no soak
make bench ENGINE=postgres+kafka      # = bench/run.py --engine postgres+kafka
make bench ENGINE=both                # embedded and PostgreSQL + Kafka side by side (no soak)
make bench SOAK_RATE=2000             # the soak at 2,000 events/s instead of 5,000
make bench PROCESSES=1                # tidegate serve in one process (default: cores + 1)
```

`--engine` (embedded, postgres+kafka, both), `--processes` (default: the machine's
cores + 1), `--rate`, `--e2e-seconds`, `--burst-seconds`,
`--concurrency`, `--batch-concurrency`, `--read-rate`, `--sustained-rate`,
`--sustained-seconds`, `--step-rates`, `--soak-seconds`, `--soak-rate`, `--max-in-flight`,
`--no-docs`, `--keep-data`: see `bench/run.py --help`. Every run also writes every figure
(and the timelines and RSS samples) to `bench/results/<timestamp>.json` (git-ignored).

## Method

Everything runs on 127.0.0.1, each in its own process: `tidegate serve --processes N`
(N = the machine's cores + 1 by default: the worker in process 0, an api process per
core; embedded SQLite, in a fresh temporary data dir, log level warning), a
webhook receiver (`bench/receiver.py`, an asyncio server parsing with httptools, answers
204 and records the arrival time of each messageId), a minimal ASGI app under uvicorn with
httptools and uvloop (`bench/baseline_app.py`, answers `{"success":true}` and does nothing
else), and the load generator (the `bench/run.py` process on uvloop: keep-alive HTTP/1.1
connections on raw asyncio with httptools, `bench/rawhttp.py`). Tenants, sources,
API keys and the destination are created with the `tidegate` CLI.

- **Baseline**: the minimal ASGI app under the same closed-loop generator as (a), run
  just before and just after (a). It is the ceiling of this machine *with this
  generator*: the generator and the server share the same cores; windows where the
  generator used >= 90% of a core are flagged "generator-bound". (a) is reported as a
  ratio to the mean of the two baseline runs. The minimal app runs in as many uvicorn
  workers as Tidegate has processes.
- **(a) single-event ingest**: `POST /v1/track`, closed loop (64 senders by default, each sends
  its next request when the previous one is answered) for 10 s after a 2 s warm-up, then
  again with 256 senders (`--wide-concurrency`) for 5 s: with 64, each process has about
  30 requests in flight and the rate is bounded by the ack latency (a durable commit per
  group) with cores to spare; 256 measures it at saturation. Both are reported.
  Events/s counts `200 {"success":true}` answers only; latencies are service times
  under that saturation.
- **(b) batched ingest**: `POST /v1/batch` with 100 track events per request, closed
  loop (8 senders), 10 s, then again with 32 (`--wide-batch-concurrency`) for 5 s, for
  the same reason as (a). The wide runs are half as long because every event stays in
  the store, and a larger store slows the end-to-end scenarios after them. Latency is
  per request (100 events).
- (a) and (b) use a tenant with no destination, so they measure ingest (and the router
  storing the events). After each, the run waits until Tidegate's counter of events the
  router has recorded (`tidegate_events_routed_total`) reaches its counter of events
  acknowledged (up to 180 s; quick 60): "router catch-up" is how far storing lagged
  behind acknowledging, and the next scenario starts only then. (Until 2026-12-06 it
  waited for a sentinel event to show in the read API, which showed only the log
  partition the sentinel landed in.)
- **(c) end to end**: `POST /v1/track` **open loop** at a fixed rate (default 1,200
  events/s for 20 s) to a second tenant with one webhook destination (the receiver).
  Request *i* is due at t0 + i/rate whatever happened before; its latency is measured
  from that intended send time, not from when it was sent, so stalls are counted rather
  than hidden (no coordinated omission). Ingest→delivery latency is the receiver's
  arrival time (time.time()) minus the intended send time, for each acknowledged event.
  The generator's own lateness (dispatch lag) is reported so a saturated generator
  cannot pass for a slow server. After sending stops the run waits up to 90 s (quick:
  30 s) for the remaining deliveries: longer than Tidegate's 60 s delivery lease, so a
  delivery that waits for its lease to lapse still arrives within the wait.
- **Ledger (c)**: sent, acknowledged (200), errors, delivered (distinct messageIds
  seen by the receiver), **lost = acknowledged - delivered** at the end of the wait.
  If anything is missing, Tidegate's read API is asked where it is (deliveries still
  pending or dead, event stored or not). A sample of deliveries is checked against the
  destination secret (Standard Webhooks signature).
- **Kept up?** Tidegate kept pace with the offered rate when every request was
  acknowledged (no errors, none left unsent at the generator's in-flight cap), the
  delivery rate while sending is at least 0.9 of the ack rate, and the delivery p50 of
  the last 2-second slice of send times is not more than twice (and 0.5 s above) that
  of the first.
- **(d) read API**: `GET /v1/events?limit=20` with the API key, open loop at 20 req/s,
  while (c) runs.
- **(c) steps and (c) sustained**: the end-to-end scenario at rising rates (1,200, 2,400,
  3,600 events/s, 10 s each, stopping at the first that does not keep up), then at the
  issue's target rate (5,000 events/s, 30 s) whatever the steps gave. Events carry their
  intended send time; the receiver and the generator aggregate (a bit per event for the
  ledger, latency histograms with 1%-wide buckets per window), and at most 4,096 requests
  are in flight: one due beyond that is not sent and counts as an error.
- **(e) soak**: the same at 5,000 events/s for 10 minutes; RSS (VmRSS) and CPU of
  Tidegate, the receiver and the generator every 10 s; per-minute table; growth as a
  linear fit over the last 8 minutes and as the end minus minute 2; ledger after a wait
  of up to 180 s.
- The scenarios run in this order against one `tidegate serve --processes N` (process 0
  runs the worker, the N-1 others the api role on one port; with N = 1 one process runs
  both): (c) and (d) run against a store that already holds the events of (a) and (b).
- **Resources**: CPU seconds of each process from `/proc/<pid>/stat` (utime + stime)
  over each measured window, machine busy and steal % from `/proc/stat` ("other
  processes" = machine busy minus this run's processes: the noise of a shared
  machine), Tidegate's peak resident memory from `/proc/<pid>/status` (VmHWM; with
  several processes, CPU is their sum and RSS the largest process's, the sum beside it).
- Percentiles are nearest-rank over every sample (no histogram buckets); a percentile
  the sample count cannot resolve (p99.9 of fewer than 1,000 samples) is shown as "n/a".

"""


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _lat(summary: dict[str, Any]) -> str:
    return " | ".join(_n(summary.get(k), 1) for k in ("p50", "p95", "p99", "p99_9", "max"))


def _errors(scenario: dict[str, Any]) -> str:
    errors: dict[str, int] = scenario.get("errors", {})
    total = sum(errors.values()) + int(scenario.get("unfinished", 0))
    if not total:
        return "0"
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
    if scenario.get("unfinished"):
        detail += f", unfinished: {scenario['unfinished']}"
    return f"**{total}** ({detail})"


def _res(scenario: dict[str, Any], name: str) -> dict[str, Any]:
    resources: dict[str, Any] = scenario.get("resources", {})
    value: dict[str, Any] = resources.get(name, {})
    return value


def _generator_pct(scenario: dict[str, Any]) -> int | None:
    """The load generator's CPU in % of one core: this Python process, plus wrk when
    wrk sent the load."""
    shares = [_res(scenario, name).get("cpu_pct_of_one_core") for name in ("load_generator", "wrk")]
    known = [v for v in shares if v is not None]
    return sum(known) if known else None


def machine_line(machine: dict[str, Any]) -> str:
    total = "?"
    for line in str(machine.get("free_g", "")).splitlines():
        if line.startswith("Mem:"):
            total = line.split()[1]
    return (
        f"{machine.get('nproc')} x {machine.get('cpu_model')}, {total} GiB RAM, "
        f"Python {machine.get('python')}, {machine.get('event_loop')}, "
        f"kernel {machine.get('kernel')}, load average at start "
        f"{' '.join(machine.get('loadavg_at_start', []))}"
    )


def markdown(doc: dict[str, Any]) -> str:
    """The section of one run: every engine it measured (side by side when several)."""
    plan = doc["plan"]
    runs: list[dict[str, Any]] = doc.get("engines", [])
    commit = (doc.get("commit") or "unknown")[:12]
    lines = [
        f"### {doc['started_utc'].replace('T', ' ').replace('+00:00', ' UTC')}"
        f" · `{doc['command']}` · HEAD {commit}",
        "",
        f"Machine: {machine_line(doc['machine'])}.",
        "",
    ]
    if doc.get("failure"):
        lines += [f"**Run failed**: {doc['failure']}", ""]
    processes = plan.get("processes", 1)
    lines += [
        f"Server: `tidegate serve --processes {processes}`"
        + (
            " (process 0: the worker; the others: the api role on the port; CPU below is"
            " summed over them, peak RSS is the largest process's)."
            if processes > 1
            else " (api and worker roles in one process)."
        ),
        "",
    ]
    if len(runs) == 1:
        lines += [f"Engine: {runs[0]['engine']}: {_engine_setup(runs[0])}.", ""]
        lines += _engine_body(plan, runs[0])
        lines += [f"Run took {doc.get('elapsed_s')} s.", ""]
        return "\n".join(lines)
    lines += [
        "Engines, one after the other in this order, each on a `tidegate serve` (and"
        " receiver) of its own; the baseline app and the load generator are shared. (b) is"
        " not part of a multi-engine run.",
        "",
        *[f"- **{r['engine']}**: {_engine_setup(r)}." for r in runs],
        "",
        *_comparison(plan, runs),
    ]
    for run in runs:
        lines += [f"#### {run['engine']}", ""]
        if run.get("failure"):
            lines += [f"**Failed**: {run['failure']}", ""]
        lines += _engine_body(plan, run)
    lines += [f"Run took {doc.get('elapsed_s')} s in all.", ""]
    return "\n".join(lines)


def _engine_setup(run: dict[str, Any]) -> str:
    info = run.get("info", {})
    text = str(run.get("description", run["engine"]))
    if info.get("postgres_server"):
        text += f"; {info['postgres_server']}"
    return text


def _engine_body(plan: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """Every figure of one engine's part of the run."""
    s: dict[str, Any] = run.get("scenarios", {})
    lines: list[str] = [
        "| Scenario | Load | Throughput | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | Errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    base_rates = [s[k]["events_per_s"] for k in ("baseline_before", "baseline_after") if k in s]
    base = sum(base_rates) / len(base_rates) if base_rates else None
    for key, label in (("baseline_before", "before"), ("baseline_after", "after")):
        if key in s:
            b = s[key]
            lines.append(
                f"| Baseline: minimal ASGI app ({label} (a)) | closed, {plan['concurrency']}"
                f" senders, {plan['burst_s']:g} s | {_n(b['requests_per_s'])} req/s"
                f" | {_lat(b['latency_ms'])} | {_errors(b)} |"
            )
    wide_s = plan.get("wide_s", plan["burst_s"])
    for key, senders, seconds in (
        ("a_track", plan["concurrency"], plan["burst_s"]),
        ("a_wide", plan.get("wide_concurrency"), wide_s),
    ):
        if key in s:
            a = s[key]
            ratio = f" = **{a['events_per_s'] / base:.2f}x** baseline" if base else ""
            lines.append(
                f"| (a) `POST /v1/track`, ack | closed, {senders} senders, {seconds:g} s"
                f" | {_n(a['events_per_s'])} events/s{ratio}"
                f" | {_lat(a['latency_ms'])} | {_errors(a)} |"
            )
    wrk_base = s.get("baseline_wrk", {}).get("events_per_s")
    nginx = s.get("nginx_wrk", {}).get("events_per_s")
    for key, label in (
        ("nginx_wrk", "Machine: nginx answering the request itself, under wrk"),
        ("baseline_wrk", "Baseline: minimal ASGI app, under wrk"),
        ("a_wrk", "(a) `POST /v1/track`, ack, under wrk"),
    ):
        if key in s:
            w = s[key]
            ratios = []
            if key == "a_wrk" and wrk_base:
                ratios.append(f"**{w['events_per_s'] / wrk_base:.2f}x** baseline under wrk")
            if key != "nginx_wrk" and nginx:
                ratios.append(f"{w['events_per_s'] / nginx:.2f}x nginx")
            lines.append(
                f"| {label} | closed, {w['offered']} | {_n(w['events_per_s'])}"
                f" {'events' if key == 'a_wrk' else 'req'}/s"
                + (" = " + ", ".join(ratios) if ratios else "")
                + f" | {_lat(w['latency_ms'])} | {_errors(w)} |"
            )
    for key, senders, seconds in (
        ("b_batch", plan["batch_concurrency"], plan["burst_s"]),
        ("b_wide", plan.get("wide_batch_concurrency"), wide_s),
    ):
        if key in s:
            b = s[key]
            lines.append(
                f"| (b) `POST /v1/batch` x{plan['batch_size']}, per request | closed,"
                f" {senders} senders, {seconds:g} s"
                f" | {_n(b['events_per_s'])} events/s ({_n(b['requests_per_s'])} req/s)"
                f" | {_lat(b['latency_ms'])} | {_errors(b)} |"
            )
    if "c_e2e" in s:
        c = s["c_e2e"]
        ledger = c["ledger"]
        lines.append(
            f"| (c) `POST /v1/track`, ack from intended send | open, {_n(plan['rate'])}"
            f" events/s, {plan['e2e_s']:g} s | {_n(c['events_per_s'])} events/s acked"
            f" | {_lat(c['ack_latency_ms'])} | {_errors(c)} |"
        )
        lines.append(
            f"| (c) ingest → delivery (receiver arrival - intended send) | same"
            f" | {_n(ledger['delivered'])} of {_n(ledger['acknowledged'])} delivered"
            f" | {_lat(c['delivery_latency_ms'])} | lost **{ledger['lost']}** |"
        )
    if "d_read" in s:
        d = s["d_read"]
        lines.append(
            f"| (d) `GET /v1/events?limit=20` during (c) | open, {plan['read_rate']:g} req/s,"
            f" {plan['e2e_s']:g} s | {_n(d['requests_per_s'], 1)} req/s"
            f" | {_lat(d['latency_ms'])} | {_errors(d)} |"
        )
    for key, label in (("c_sustained", "(c) sustained"), ("e_soak", "(e) soak")):
        if key in s:
            lines += _windowed_rows(label, s[key])
    lines.append("")
    if "skipped" in s.get("wrk", {}):
        lines += [f"The baseline and (a) under wrk: not run ({s['wrk']['skipped']}).", ""]
    elif "skipped" in s.get("nginx", {}):
        lines += [f"nginx under wrk: not run ({s['nginx']['skipped']}).", ""]
    if "c_e2e" in s:
        c = s["c_e2e"]
        ledger = c["ledger"]
        drain = c["drain"]
        lines += [
            f"Ledger (c): sent {_n(ledger['sent'])} · acknowledged {_n(ledger['acknowledged'])}"
            f" · errors {ledger['errors']} · unfinished {ledger['unfinished']}"
            f" · delivered {_n(ledger['delivered'])} · **lost {ledger['lost']}**"
            f" · duplicate deliveries {ledger['duplicate_deliveries']}"
            f" · delivered but not acknowledged {ledger['delivered_but_not_acknowledged']}."
            f" {_n(c['delivered_at_end_of_sending'])} were delivered when sending stopped;"
            f" the rest took {drain['waited_s']} s (limit {drain['limit_s']:g} s)."
            f" Delivery rate: {_n(c['delivery_rate_while_sending_per_s'])}/s while sending,"
            f" {_n(drain['delivery_rate_per_s'])}/s after."
            f" Generator dispatch lag p99 {_n(c['dispatch_lag_ms'].get('p99'), 1)} ms,"
            f" max {_n(c['dispatch_lag_ms'].get('max'), 1)} ms.",
            "",
        ]
        verdict = c.get("verdict", {})
        signatures = c.get("signatures", {})
        if verdict:
            lines += [
                f"Did delivery keep up at {_n(plan['rate'])} events/s? "
                f"**{'yes' if verdict['kept_up'] else 'no'}**: delivered/acked rate while"
                f" sending {verdict['delivery_to_ack_rate_ratio']}, delivery p50"
                f" {_n(verdict['first_slice_p50_ms'])} ms in the first 2 s slice,"
                f" {_n(verdict['last_slice_p50_ms'])} ms in the last."
                f" Signatures: {signatures.get('verified', 0)} of"
                f" {signatures.get('checked', 0)} sampled deliveries verify"
                " (Standard Webhooks).",
                "",
            ]
        means = c.get("tidegate_histogram_means_ms", {})
        if means:
            lines += [
                "Tidegate's own histograms over (c) and the wait after it: "
                + ", ".join(
                    f"`{k}` mean {_n(v['mean_ms'], 1)} ms over {_n(v['observations'])} observations"
                    for k, v in sorted(means.items())
                )
                + ".",
                "",
            ]
        accounting = c.get("lost_accounting", {})
        if accounting:
            late = ""
            if ledger["lost"] and accounting.get("deliveries_pending"):
                late = (
                    f" The {ledger['lost']} not delivered within the wait are late rather"
                    " than dropped if Tidegate still lists them as pending."
                )
            lines += [
                "Tidegate's own view at the end (read API): "
                + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in accounting.items())
                + "."
                + late,
                "",
            ]
        buckets = c.get("timeline_2s", [])
        if buckets:
            lines += [
                "(c) ingest → delivery p50 / p99 by 2-second slice of intended send time (s): "
                + ", ".join(
                    f"{_n(b['delivery_p50_ms'] and b['delivery_p50_ms'] / 1000, 2)}"
                    f" / {_n(b['delivery_p99_ms'] and b['delivery_p99_ms'] / 1000, 2)}"
                    for b in buckets
                )
                + ".",
                "",
            ]
    lines += _long_runs(plan, s, base)
    lines += _targets(plan, s, base)
    catch = [
        f"{label} {s[k].get('router_catch_up_s')} s"
        for k, label in (
            ("a_track", "(a)"),
            ("a_wide", "(a) wide"),
            ("a_wrk", "(a) under wrk"),
            ("b_batch", "(b)"),
            ("b_wide", "(b) wide"),
        )
        if k in s
    ]
    if catch:
        lines += [
            "Router catch-up (acknowledged → recorded by the router, after the scenario): "
            + ", ".join(catch)
            + " (None = not within the limit).",
            "",
        ]
    rows = [
        ("baseline_before", "Baseline (before)", "baseline"),
        ("a_track", "(a) track", "tidegate"),
        ("a_wide", "(a) track, more senders", "tidegate"),
        ("baseline_after", "Baseline (after)", "baseline"),
        ("nginx_wrk", "nginx under wrk", "nginx"),
        ("baseline_wrk", "Baseline under wrk", "baseline"),
        ("a_wrk", "(a) track under wrk", "tidegate"),
        ("b_batch", "(b) batch", "tidegate"),
        ("b_wide", "(b) batch, more senders", "tidegate"),
        ("c_e2e", "(c)+(d) end to end, while sending", "tidegate"),
        ("c_drain", "(c) after sending: remaining deliveries", "tidegate"),
        ("c_sustained", "(c) sustained, while sending", "tidegate"),
        ("sustained_drain", "(c) sustained, after sending", "tidegate"),
        ("e_soak", "(e) soak, while sending", "tidegate"),
        ("soak_drain", "(e) soak, after sending", "tidegate"),
    ]
    for key, drain_key in (("c_sustained", "sustained_drain"), ("e_soak", "soak_drain")):
        if key in s:
            drain = s[key]["drain"]
            s = {
                **s,
                drain_key: {
                    "resources": drain["resources"],
                    "events_acked": drain["delivered_during_drain"],
                },
            }
    if "c_e2e" in s:
        drain = s["c_e2e"]["drain"]
        s = {
            **s,
            "c_drain": {
                "resources": drain["resources"],
                "events_acked": drain["delivered_during_drain"],
            },
        }
    # the engine's own processes (PostgreSQL backends, Kafka broker), when it has any
    extra = [
        (name, label)
        for name, label in (("postgres", "PostgreSQL backends"), ("kafka", "Kafka broker"))
        if any(name in sc.get("resources", {}) for sc in s.values() if isinstance(sc, dict))
    ]
    table = [
        "| Window | Server CPU s (% of one core) | Server CPU ms / 1k events"
        + "".join(f" | {label} % core" for _name, label in extra)
        + " | Generator % core | Receiver % core | Other processes % core"
        " | Machine busy % (all cores) | Steal % |",
        "|---|---:|---:" + "|---:" * len(extra) + "|---:|---:|---:|---:|---:|",
    ]
    for key, label, server in rows:
        if key not in s:
            continue
        sc = s[key]
        srv = _res(sc, server)
        events = sc.get("events_acked") or 0
        per_k = 1000 * srv.get("cpu_s", 0) * 1000 / events if events else None
        table.append(
            f"| {label} | {_n(srv.get('cpu_s'), 1)} ({_n(srv.get('cpu_pct_of_one_core'))}%)"
            f" | {_n(per_k, 0)}"
            + "".join(
                f" | {_n(_res(sc, name).get('cpu_pct_of_one_core'))}" for name, _label in extra
            )
            + f" | {_n(_generator_pct(sc))}"
            f" | {_n(_res(sc, 'receiver').get('cpu_pct_of_one_core'))}"
            f" | {_n(_res(sc, 'machine').get('others_pct_of_one_core'))}"
            f" | {_n(_res(sc, 'machine').get('busy_pct'), 1)}"
            f" | {_n(_res(sc, 'machine').get('steal_pct'), 1)} |"
        )
    lines += [*table, ""]
    bound = [
        label for key, label, _server in rows if key in s and (_generator_pct(s[key]) or 0) >= 90
    ]
    if bound:
        lines += [
            "Generator-bound windows (the load generator used >= 90% of a core, so these"
            " figures are the generator's limit, not the server's): " + ", ".join(bound) + ".",
            "",
        ]
    tg = run.get("tidegate", {})
    mem = tg.get("memory_mib", {})
    log = tg.get("log", {})
    levels = log.get("by_level", {})
    several = (
        f" (largest of {mem['processes']}; sum at end {_n(mem.get('VmRSS_sum'), 1)} MiB)"
        if mem.get("processes", 1) > 1
        else ""
    )
    lines += [
        f"Tidegate process: peak RSS (VmHWM) {_n(mem.get('VmHWM'), 1)} MiB, RSS at end"
        f" {_n(mem.get('VmRSS'), 1)} MiB{several},"
        f" CPU {_n(tg.get('pid_cpu_s_total'), 1)} s over the whole run;"
        f" SIGTERM → exit code {tg.get('sigterm_exit_code')} after"
        f" {tg.get('sigterm_stop_s')} s; log: {levels.get('warning', 0)} warnings,"
        f" {levels.get('error', 0)} errors, {log.get('non_json_lines', 0)} other lines."
        f" This engine's part took {run.get('elapsed_s')} s.",
        "",
    ]
    samples: list[str] = log.get("samples", [])
    if samples:
        lines += [
            "First distinct warnings and errors in Tidegate's log:",
            "",
            "```",
            *samples[:8],
            "```",
            "",
        ]
    at_end = run.get("engine_at_end", {})
    if at_end:
        size = _n(at_end.get("postgres_database_size_mib"), 1)
        connections = at_end.get("postgres_connections_at_end")
        lines += [
            f"PostgreSQL at the end: database size {size} MiB,"
            f" {connections} connections from Tidegate.",
            "",
        ]
    if run.get("teardown_error"):
        lines += [f"Tearing the engine down failed: {run['teardown_error']}", ""]
    return lines


def _windowed_rows(label: str, w: dict[str, Any]) -> list[str]:
    """The two rows of a windowed run (sustained, soak) in the scenario table."""
    ledger = w["ledger"]
    load = f"open, {_n(w['rate'])} events/s, {w['duration_s']:g} s"
    return [
        f"| {label} `POST /v1/track`, ack from intended send | {load}"
        f" | {_n(w['events_per_s'])} events/s acked | {_lat(w['ack_latency_ms'])}"
        f" | {_errors(w)} |",
        f"| {label} ingest → delivery | same | {_n(ledger['delivered'])} of"
        f" {_n(ledger['acknowledged'])} delivered"
        f" ({_n(w['delivery_rate_while_sending_per_s'])}/s while sending)"
        f" | {_lat(w['delivery_latency_ms'])} | lost **{ledger['lost']}** |",
    ]


def _ledger_line(label: str, w: dict[str, Any]) -> str:
    ledger, drain, verdict = w["ledger"], w["drain"], w["verdict"]
    counters = w.get("tidegate_counters", {})
    late = ""
    if ledger["lost"]:
        accounting = w.get("lost_accounting", {})
        late = (
            " Lost here means not delivered by the end of the wait, which is not necessarily"
            " dropped: Tidegate's own counters over the run and the wait leave"
            f" {_n(counters.get('pending_by_counters'))} pending (accepted"
            f" {_n(counters.get('events_ingested'))} - delivered"
            f" {_n(counters.get('attempts_succeeded'))} - dead letters"
            f" {_n(counters.get('dead_letters'))}), so"
            f" {_n(ledger.get('still_pending_per_tidegate'))} of the"
            f" {_n(ledger['lost'])} are late rather than dropped and"
            f" **{_n(ledger.get('unaccounted'))}** are unaccounted for."
        )
        if accounting:
            late += (
                " Read API: "
                + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in accounting.items())
                + "."
            )
    return (
        f"Ledger {label}: due {_n(w['due'])} · sent {_n(ledger['sent'])} · acknowledged"
        f" {_n(ledger['acknowledged'])} · errors {_n(ledger['errors'])} · unfinished"
        f" {ledger['unfinished']} · delivered {_n(ledger['delivered'])} · **lost"
        f" {_n(ledger['lost'])}** · duplicate deliveries {ledger['duplicate_deliveries']}"
        f" · delivered but not acknowledged {_n(ledger['delivered_but_not_acknowledged'])}."
        f" {_n(w['delivered_at_end_of_sending'])} were delivered when sending stopped; the"
        f" wait after it took {drain['waited_s']} s (limit {drain['limit_s']:g} s, ended:"
        f" {drain['ended']}), {_n(drain['delivery_rate_per_s'])} deliveries/s."
        f" Kept up: **{'yes' if verdict['kept_up'] else 'no'}** (delivered/acked rate while"
        f" sending {verdict['delivery_to_ack_rate_ratio']}, delivery p50"
        f" {_n(verdict['first_slice_p50_ms'])} ms in the first window,"
        f" {_n(verdict['last_slice_p50_ms'])} ms in the last). Generator: dispatch lag p99"
        f" {_n(w['dispatch_lag_ms'].get('p99'), 1)} ms, max"
        f" {_n(w['dispatch_lag_ms'].get('max'), 1)} ms; at most {_n(w['peak_in_flight'])}"
        f" requests in flight (cap {_n(w['max_in_flight'])})."
        + (
            f" Deliveries the destination's full lane spilled into the store (sent from"
            f" there, oldest first): {_n(counters['spilled'])}."
            if "spilled" in counters
            else ""
        )
        + late
    )


def _long_runs(plan: dict[str, Any], s: dict[str, Any], base: float | None) -> list[str]:
    """The step search, the sustained run, the soak, and the targets they answer."""
    lines: list[str] = []
    if not any(k in s for k in ("c_steps", "c_sustained", "e_soak")):
        return lines
    lines += [
        "Sustained runs, step search and soak: open loop to the tenant with one webhook"
        " destination, like (c), but each event carries its intended send time, so the"
        " receiver and the generator aggregate (a bit per event for the ledger, latency"
        " histograms with 1%-wide buckets per window) instead of keeping each event: memory"
        " stays bounded over any duration. At most"
        f" {_n(plan.get('max_in_flight'))} requests are outstanding; one due beyond that is"
        " not sent and counts as an error, so a server that cannot take the offered rate"
        " shows as errors, not as a lower rate. After sending, the run waits for the"
        " remaining deliveries until all arrived, none arrived for 75 s, or the limit.",
        "",
    ]
    steps: list[dict[str, Any]] = s.get("c_steps", [])
    runs = [*steps, *([s["c_sustained"]] if "c_sustained" in s else [])]
    if runs:
        lines += [
            "(c) step search, then the sustained run (stops at the first step that does not"
            " keep up; the sustained rate runs regardless):",
            "",
            "| Offered events/s | s | Acked events/s | Errors | Delivered while sending /s"
            " | Delivered ÷ acked | Delivery p50 first → last window, ms | Delivery p99 ms"
            " | Lost | Kept up? |",
            "|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        for w in runs:
            v = w["verdict"]
            lines.append(
                f"| {_n(w['rate'])} | {w['duration_s']:g} | {_n(w['events_per_s'])}"
                f" | {_errors(w)} | {_n(w['delivery_rate_while_sending_per_s'])}"
                f" | {v['delivery_to_ack_rate_ratio']}"
                f" | {_n(v['first_slice_p50_ms'])} → {_n(v['last_slice_p50_ms'])}"
                f" | {_n(w['delivery_latency_ms'].get('p99'))} | {_lost(w)}"
                f" | **{'yes' if v['kept_up'] else 'no'}** |"
            )
        best = s.get("c_max_kept_up", {}).get("highest_rate_kept_up")
        lines += [
            "",
            f"Highest offered rate that kept up: **{_n(best)}"
            f"{' events/s' if best else ''}**"
            + (f" = {best / base:.2f}x the baseline's req/s" if best and base else "")
            + ".",
            "",
        ]
    if "c_sustained" in s:
        lines += [_ledger_line("(c) sustained", s["c_sustained"]), ""]
        timeline = s["c_sustained"].get("timeline", [])
        if timeline:
            lines += [
                "(c) sustained, per 2-second window of intended send time, acked / errors:"
                " delivery p50 / p99 (s): "
                + "; ".join(
                    f"{_n(b['acked'])} / {_n(b['errors'])}:"
                    f" {_n(b['delivery_p50_ms'] and b['delivery_p50_ms'] / 1000, 2)}"
                    f" / {_n(b['delivery_p99_ms'] and b['delivery_p99_ms'] / 1000, 2)}"
                    for b in timeline
                )
                + ".",
                "",
            ]
    if "e_soak" in s:
        lines += _soak(s["e_soak"])
    return lines


def _soak(w: dict[str, Any]) -> list[str]:
    lines = [
        f"(e) soak: {_n(w['rate'])} events/s offered for {w['duration_s']:g} s; RSS"
        " (VmRSS) and CPU of each process sampled every 10 s. Per minute (RSS at the end of"
        " the minute, the 0 row is the start; traffic figures are for the events due in that"
        " minute):",
        "",
        "| Minute | Tidegate RSS MiB | Tidegate CPU % core | Receiver RSS MiB"
        " | Generator RSS MiB | Due | Acked | Errors | Delivered | Ack p50 / p99 ms"
        " | Delivery p50 / p99 / max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    samples: list[dict[str, Any]] = w.get("samples", [])
    timeline: list[dict[str, Any]] = w.get("timeline", [])
    memory: dict[str, Any] = w.get("memory", {})
    minutes = len(memory.get("tidegate", {}).get("per_minute_mib", []))

    def cpu(minute: int) -> str:
        values = [
            r["tidegate"]["cpu_pct_of_one_core"]
            for r in samples
            if r["phase"] == "sending"
            and 60 * (minute - 1) < r["t_s"] <= 60 * minute + 1
            and r["tidegate"].get("cpu_pct_of_one_core") is not None
        ]
        return _n(sum(values) / len(values)) if values else "n/a"

    for m in range(minutes):

        def rss(name: str, minute: int = m) -> str:
            return _n(memory.get(name, {}).get("per_minute_mib", [None] * minutes)[minute], 1)

        row = timeline[m - 1] if 0 < m <= len(timeline) else None
        traffic = (
            f" | {_n(row['due'])} | {_n(row['acked'])} | {_n(row['errors'])}"
            f" | {_n(row['delivered'])} | {_n(row['ack_p50_ms'], 1)} / {_n(row['ack_p99_ms'], 1)}"
            f" | {_n(row['delivery_p50_ms'], 1)} / {_n(row['delivery_p99_ms'], 1)}"
            f" / {_n(row['delivery_max_ms'], 1)}"
            if row
            else " | | | | | |"
        )
        lines.append(
            f"| {m} | {rss('tidegate')} | {cpu(m) if m else ''} | {rss('receiver')}"
            f" | {rss('load_generator')}{traffic} |"
        )
    lines.append("")
    for name, label in (
        ("tidegate", "Tidegate"),
        ("receiver", "Receiver"),
        ("load_generator", "Load generator"),
    ):
        g = memory.get(name, {})
        if not g:
            continue
        verdict = ""
        if name == "tidegate":
            verdict = (
                f" Within 250 MB: **{_yes(g.get('within_250_mb'))}**; no growth"
                f" (fitted growth <= 5% of the minute-2 RSS): **{_yes(g.get('no_growth'))}**."
            )
        lines.append(
            f"- {label} RSS, while sending: start {_n(g.get('first_mib'), 1)} MiB, minute 2"
            f" {_n(g.get('minute_2_mib'), 1)}, peak {_n(g.get('peak_mib'), 1)}, end"
            f" {_n(g.get('last_mib'), 1)} MiB; end - minute 2"
            f" {_n(g.get('end_minus_minute_2_mib'), 1)} MiB; linear fit from"
            f" {_n(g.get('fit_from_s'))} s ({g.get('fit_points')} samples)"
            f" {_n(g.get('slope_mib_per_min'), 2)} MiB/min"
            f" ({_n(g.get('fitted_growth_mib'), 1)} MiB over the fit)." + verdict
        )
    series = [
        f"{r['t_s']:.0f}:{_n(r['tidegate'].get('rss_mib'), 1)}"
        for r in samples
        if isinstance(r.get("tidegate"), dict)
    ]
    lines += [
        "",
        "Tidegate RSS every 10 s (s:MiB, sending then the wait after it): "
        + ", ".join(series)
        + ".",
        "",
        _ledger_line("(e) soak", w),
        "",
    ]
    return lines


def _lost(w: dict[str, Any]) -> str:
    """Lost at the end of the wait, with how many of those Tidegate still holds."""
    ledger = w["ledger"]
    if not ledger["lost"]:
        return "0"
    return (
        f"{_n(ledger['lost'])} not delivered by the end of the wait"
        f" ({_n(ledger.get('still_pending_per_tidegate'))} still pending in Tidegate,"
        f" {_n(ledger.get('unaccounted'))} unaccounted)"
    )


def _yes(value: Any) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def _targets(plan: dict[str, Any], s: dict[str, Any], base: float | None) -> list[str]:
    """Every target of the issue that this run answers, next to what it measured, as a
    ratio to the target and to the machine's ceilings measured in the same run: the
    minimal ASGI app under the same generator, and nginx under wrk."""
    nginx = s.get("nginx_wrk", {}).get("events_per_s")
    wrk_base = s.get("baseline_wrk", {}).get("events_per_s")
    ceilings = [
        f"the minimal ASGI app {_n(base)} req/s" if base else "minimal app not measured",
        *([f"under wrk {_n(wrk_base)} req/s"] if wrk_base else []),
        *([f"nginx under wrk {_n(nginx)} req/s"] if nginx else []),
    ]
    lines = [
        f"Targets against this run (the machine's ceilings: {', '.join(ceilings)}):",
        "",
        "| Target | Wanted | Measured in this run | Measured ÷ wanted | Met? | ÷ machine ceiling |",
        "|---|---|---|---:|---|---:|",
    ]

    def ratio(value: float | None, of: float | None) -> str:
        return f"{value / of:.2f}" if value is not None and of else "n/a"

    def met(value: float | None, wanted: float, *, at_least: bool = True) -> str:
        if value is None:
            return "n/a"
        return "**yes**" if (value >= wanted if at_least else value <= wanted) else "no"

    singles = [
        (s[key]["events_per_s"], key, label, ceiling)
        for key, label, ceiling in (
            ("a_track", f"{plan['concurrency']} senders", base),
            ("a_wide", f"{plan.get('wide_concurrency')} senders", base),
            ("a_wrk", f"{plan.get('wide_concurrency')} connections under wrk", wrk_base),
        )
        if key in s
    ]
    if singles:
        rate, key, label, ceiling = max(singles, key=lambda x: x[0])
        others = ", ".join(f"{_n(r)} with {lab}" for r, k, lab, _c in singles if k != key)
        lines.append(
            "| Single-event ingest, durable (a) | ≥ 15,000 events/s"
            f" | {_n(rate)} events/s with {label}, p99 {_n(s[key]['latency_ms'].get('p99'), 1)}"
            f" ms"
            + (f" ({others})" if others else "")
            + f" | {ratio(rate, 15000)} | {met(rate, 15000)}"
            f" | {ratio(rate, ceiling)} minimal app"
            + (f" · {ratio(rate, nginx)} nginx" if nginx else "")
            + " |"
        )
    batches = [
        (s[key], senders)
        for key, senders in (
            ("b_batch", plan["batch_concurrency"]),
            ("b_wide", plan.get("wide_batch_concurrency")),
        )
        if key in s
    ]
    if batches:
        b, senders = max(batches, key=lambda x: x[0]["events_per_s"])
        rate = b["events_per_s"]
        lines.append(
            f"| Batched ingest, durable (b), {plan['batch_size']} events per request"
            f" | ≥ 150,000 events/s | {_n(rate)} events/s ({_n(b['requests_per_s'])} req/s)"
            f" with {senders} senders | {ratio(rate, 150000)} | {met(rate, 150000)}"
            f" | req/s {ratio(b['requests_per_s'], base)} minimal app |"
        )
    if "c_sustained" in s:
        w = s["c_sustained"]
        best = s.get("c_max_kept_up", {}).get("highest_rate_kept_up")
        delivered = w["delivery_rate_while_sending_per_s"]
        # kept up at 5,000/s offered: every request acknowledged, delivery at the ack
        # rate (run.py's verdict), nothing lost
        ok = (
            w["rate"] >= 5000
            and w["verdict"]["kept_up"]
            and not w["ledger"]["lost"]
            and not w["ledger"]["errors"]
        )
        lines.append(
            "| End to end sustained, one webhook per event | ≥ 5,000 events/s, 0 lost"
            f" | at {_n(w['rate'])}/s offered for {w['duration_s']:g} s: {_n(w['events_per_s'])}"
            f" acked/s, {_n(delivered)} delivered/s while sending, errors"
            f" {_n(w['ledger']['errors'])}, lost {_lost(w)}, kept up"
            f" {_yes(w['verdict']['kept_up'])}; highest rate that kept up: {_n(best)}"
            f" | delivered {ratio(delivered, 5000)} · highest kept up {ratio(best, 5000)}"
            f" | {'**yes**' if ok else 'no'}"
            f" | target {ratio(5000, base)} · delivered {ratio(delivered, base)}"
            f" · highest kept up {ratio(best, base)} |"
        )
    if "c_e2e" in s:
        c = s["c_e2e"]
        p99 = c["delivery_latency_ms"].get("p99")
        lost = c["ledger"]["lost"]
        lines.append(
            f"| Ingest → delivery p99 at 1,200 events/s (c) | ≤ 50 ms | {_n(p99, 1)} ms at"
            f" {_n(plan['rate'])}/s offered for {plan['e2e_s']:g} s,"
            f" {_n(c['ledger']['delivered'])} of {_n(c['ledger']['acknowledged'])} delivered"
            f" | {ratio(p99, 50)}"
            f" | {met(p99, 50, at_least=False) if plan['rate'] >= 1200 and not lost else 'no'}"
            " | n/a |"
        )
    if "d_read" in s:
        p95 = s["d_read"]["latency_ms"].get("p95")
        lines.append(
            f"| Read API p95 under that load (d) | ≤ 20 ms | {_n(p95, 1)} ms,"
            f" {_n(plan['read_rate'], 1)} req/s of `GET /v1/events?limit=20` during (c),"
            f" errors {_errors(s['d_read'])} | {ratio(p95, 20)} | {met(p95, 20, at_least=False)}"
            " | n/a |"
        )
    if "e_soak" in s:
        w = s["e_soak"]
        g = w.get("memory", {}).get("tidegate", {})
        peak = g.get("peak_mib")
        peak_mb = None if peak is None else peak * 1.048576
        ok = bool(g.get("within_250_mb") and g.get("no_growth"))
        lines.append(
            "| Memory per process, 10-minute soak at 5,000 events/s | ≤ 250 MB RSS, no growth"
            f" | soak of {w['duration_s']:g} s at {_n(w['rate'])}/s offered"
            f" ({_n(w['events_per_s'])} acked/s, errors {_n(w['ledger']['errors'])}, lost"
            f" {_lost(w)}): Tidegate peak RSS {_n(peak, 1)} MiB"
            f" = {_n(peak_mb, 1)} MB, end - minute 2 {_n(g.get('end_minus_minute_2_mib'), 1)}"
            f" MiB, fit {_n(g.get('slope_mib_per_min'), 2)} MiB/min; no growth"
            f" {_yes(g.get('no_growth'))}"
            f" | RSS {ratio(peak_mb, 250)} | {'**yes**' if ok else 'no'}"
            f" | acked rate {ratio(w['events_per_s'], base)} |"
        )
    elif plan.get("soak_s", 0) == 0:
        lines.append(
            "| Memory per process, 10-minute soak at 5,000 events/s | ≤ 250 MB RSS, no growth"
            " | not measured (soak skipped in this run) | n/a | n/a | n/a |"
        )
    return [*lines, ""]


def _pct(scenario: dict[str, Any], name: str) -> str:
    return _n(_res(scenario, name).get("cpu_pct_of_one_core"))


def _comparison(plan: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """One row per figure, one column per engine."""

    def row(label: str, cell: Any) -> str:
        cells = []
        for run in runs:
            try:
                cells.append(str(cell(run.get("scenarios", {}), run)))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("n/a")
        return f"| {label} | " + " | ".join(cells) + " |"

    def lat(summary: dict[str, Any]) -> str:
        return " / ".join(_n(summary.get(k), 1) for k in ("p50", "p95", "p99", "p99_9", "max"))

    def ratio(s: dict[str, Any], _run: dict[str, Any]) -> str:
        rates = [s[k]["events_per_s"] for k in ("baseline_before", "baseline_after") if k in s]
        return f"**{s['a_track']['events_per_s'] / (sum(rates) / len(rates)):.2f}x**"

    def per_k(s: dict[str, Any], key: str, *names: str) -> str:
        used = sum(_res(s[key], name).get("cpu_s", 0.0) for name in names)
        return _n(1e6 * used / s[key]["events_acked"])

    def kept_up(s: dict[str, Any], _run: dict[str, Any]) -> str:
        v = s["c_e2e"]["verdict"]
        return (
            f"**{'yes' if v['kept_up'] else 'no'}** (rate ratio {v['delivery_to_ack_rate_ratio']},"
            f" p50 {_n(v['first_slice_p50_ms'])} → {_n(v['last_slice_p50_ms'])} ms)"
        )

    def log_line(_s: dict[str, Any], run: dict[str, Any]) -> str:
        log = run["tidegate"]["log"]
        levels = log.get("by_level", {})
        return (
            f"{levels.get('warning', 0)} / {levels.get('error', 0)}"
            f" / {log.get('non_json_lines', 0)}"
        )

    rate = _n(plan["rate"])
    senders = f"{plan['concurrency']} senders, {plan['burst_s']:g} s"
    header = "| Figure | " + " | ".join(f"{r['engine']}" for r in runs) + " |"
    lines = [
        header,
        "|---|" + "---:|" * len(runs),
        row(
            "Baseline (minimal ASGI app) before / after (a), req/s",
            lambda s, _r: (
                f"{_n(s['baseline_before']['requests_per_s'])}"
                f" / {_n(s['baseline_after']['requests_per_s'])}"
            ),
        ),
        row(
            f"(a) `POST /v1/track` ack, closed loop, {senders}: events/s",
            lambda s, _r: _n(s["a_track"]["events_per_s"]),
        ),
        row("(a) ÷ mean baseline of the same engine's part", ratio),
        row(
            "(a) latency p50 / p95 / p99 / p99.9 / max, ms",
            lambda s, _r: lat(s["a_track"]["latency_ms"]),
        ),
        row("(a) errors", lambda s, _r: _errors(s["a_track"])),
        row(
            "(a) router catch-up (acked → recorded by the router), s",
            lambda s, _r: _n(s["a_track"]["router_catch_up_s"], 2),
        ),
        row(
            "(a) Tidegate CPU, % of one core · ms per 1k events",
            lambda s, _r: f"{_pct(s['a_track'], 'tidegate')}% · {per_k(s, 'a_track', 'tidegate')}",
        ),
        row(
            "(a) PostgreSQL backends / Kafka broker CPU, % of one core",
            lambda s, _r: f"{_pct(s['a_track'], 'postgres')} / {_pct(s['a_track'], 'kafka')}",
        ),
        row(
            "(a) Tidegate + PostgreSQL backends + Kafka broker CPU, ms per 1k events",
            lambda s, _r: per_k(s, "a_track", "tidegate", "postgres", "kafka"),
        ),
        row(
            f"(c) `POST /v1/track` open loop at {rate}/s, {plan['e2e_s']:g} s: acked events/s",
            lambda s, _r: _n(s["c_e2e"]["events_per_s"]),
        ),
        row(
            "(c) ack latency from intended send p50 / p95 / p99 / p99.9 / max, ms",
            lambda s, _r: lat(s["c_e2e"]["ack_latency_ms"]),
        ),
        row(
            "(c) ingest → delivery p50 / p95 / p99 / p99.9 / max, ms",
            lambda s, _r: lat(s["c_e2e"]["delivery_latency_ms"]),
        ),
        row(
            "(c) sent / acknowledged / delivered",
            lambda s, _r: " / ".join(
                _n(s["c_e2e"]["ledger"][k]) for k in ("sent", "acknowledged", "delivered")
            ),
        ),
        row(
            "(c) **lost** (acknowledged, not delivered)", lambda s, _r: s["c_e2e"]["ledger"]["lost"]
        ),
        row(
            "(c) errors · duplicate deliveries · delivered but not acknowledged",
            lambda s, _r: (
                f"{_errors(s['c_e2e'])} · {s['c_e2e']['ledger']['duplicate_deliveries']}"
                f" · {s['c_e2e']['ledger']['delivered_but_not_acknowledged']}"
            ),
        ),
        row(
            "(c) delivery rate while sending · after, per s",
            lambda s, _r: (
                f"{_n(s['c_e2e']['delivery_rate_while_sending_per_s'])}"
                f" · {_n(s['c_e2e']['drain']['delivery_rate_per_s'])}"
            ),
        ),
        row(
            "(c) delivered when sending stopped · the rest took, s",
            lambda s, _r: (
                f"{_n(s['c_e2e']['delivered_at_end_of_sending'])}"
                f" · {s['c_e2e']['drain']['waited_s']}"
            ),
        ),
        row(f"(c) delivery kept up at {rate}/s?", kept_up),
        row(
            "(c) deliveries pending / dead at the end (read API)",
            lambda s, _r: (
                f"{s['c_e2e']['lost_accounting'].get('deliveries_pending')}"
                f" / {s['c_e2e']['lost_accounting'].get('deliveries_dead')}"
            ),
        ),
        row(
            "(c) signatures verified (sampled deliveries)",
            lambda s, _r: (
                f"{s['c_e2e']['signatures'].get('verified', 0)} of"
                f" {s['c_e2e']['signatures'].get('checked', 0)}"
            ),
        ),
        row(
            "(c) generator dispatch lag p99 / max, ms",
            lambda s, _r: (
                f"{_n(s['c_e2e']['dispatch_lag_ms'].get('p99'), 1)}"
                f" / {_n(s['c_e2e']['dispatch_lag_ms'].get('max'), 1)}"
            ),
        ),
        row(
            f"(d) `GET /v1/events?limit=20` during (c), {plan['read_rate']:g} req/s:"
            " p50 / p95 / p99 / p99.9 / max, ms",
            lambda s, _r: lat(s["d_read"]["latency_ms"]),
        ),
        row("(d) errors", lambda s, _r: _errors(s["d_read"])),
        row(
            "(c)+(d) Tidegate CPU, % of one core · ms per 1k events",
            lambda s, _r: f"{_pct(s['c_e2e'], 'tidegate')}% · {per_k(s, 'c_e2e', 'tidegate')}",
        ),
        row(
            "(c)+(d) PostgreSQL backends / Kafka broker CPU, % of one core",
            lambda s, _r: f"{_pct(s['c_e2e'], 'postgres')} / {_pct(s['c_e2e'], 'kafka')}",
        ),
        row(
            "(c)+(d) Tidegate + PostgreSQL backends + Kafka broker CPU, ms per 1k events",
            lambda s, _r: per_k(s, "c_e2e", "tidegate", "postgres", "kafka"),
        ),
        row(
            "(c)+(d) other processes % of one core · machine busy %",
            lambda s, _r: (
                f"{_n(_res(s['c_e2e'], 'machine').get('others_pct_of_one_core'))}"
                f" · {_n(_res(s['c_e2e'], 'machine').get('busy_pct'), 1)}"
            ),
        ),
        row(
            f"(c) sustained at {_n(plan.get('sustained_rate'))}/s offered,"
            f" {plan.get('sustained_s', 0):g} s: acked · delivered while sending, per s",
            lambda s, _r: (
                f"{_n(s['c_sustained']['events_per_s'])}"
                f" · {_n(s['c_sustained']['delivery_rate_while_sending_per_s'])}"
            ),
        ),
        row(
            "(c) sustained errors · **lost** · kept up?",
            lambda s, _r: (
                f"{_errors(s['c_sustained'])} · {_n(s['c_sustained']['ledger']['lost'])}"
                f" · {_yes(s['c_sustained']['verdict']['kept_up'])}"
            ),
        ),
        row(
            "(c) sustained ingest → delivery p50 / p95 / p99 / p99.9 / max, ms",
            lambda s, _r: lat(s["c_sustained"]["delivery_latency_ms"]),
        ),
        row(
            "Tidegate peak RSS (VmHWM), MiB",
            lambda _s, r: _n(r["tidegate"]["memory_mib"].get("VmHWM"), 1),
        ),
        row("Tidegate log: warnings / errors / other lines", log_line),
        row(
            "Tidegate SIGTERM → exit code (s)",
            lambda _s, r: (
                f"{r['tidegate']['sigterm_exit_code']} ({r['tidegate']['sigterm_stop_s']})"
            ),
        ),
        row("This engine's part of the run, s", lambda _s, r: r["elapsed_s"]),
        "",
        "The engines' full figures follow.",
        "",
    ]
    return lines


def append_to_docs(path: Path, doc: dict[str, Any], section: str) -> None:
    if not path.exists():
        machine = doc["machine"]
        header = (
            _HEADER
            + "## Machine\n\n"
            + "The machine of the first run (each run repeats its own in one line):\n\n"
            + f"- `nproc`: {machine['nproc']}\n"
            + f"- CPU (`/proc/cpuinfo` model name): {machine['cpu_model']}\n"
            + f"- Python {machine['python']}, kernel {machine['kernel']}\n"
            + "- `free -g`:\n\n```\n"
            + str(machine["free_g"])
            + "\n```\n\n## Runs\n"
        )
        path.write_text(header)
    with path.open("a") as handle:
        handle.write("\n" + section + "\n")
