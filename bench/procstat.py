"""Resource readings from /proc: a process's CPU seconds and memory, the machine's CPU."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
# Windows shorter than this get no CPU share (see `ProcessMeter.stop`).
_MIN_WINDOW_S = 0.5


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICK


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak resident set) of `pid`, in MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


@dataclass(frozen=True)
class MachineCpu:
    """Cumulative /proc/stat "cpu" line, in ticks."""

    busy: int
    idle: int
    steal: int

    @staticmethod
    def read() -> MachineCpu:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                user, nice, system, idle, iowait, irq, softirq = v[:7]
                steal = v[7] if len(v) > 7 else 0
                return MachineCpu(
                    busy=user + nice + system + irq + softirq, idle=idle + iowait, steal=steal
                )
        raise RuntimeError("no cpu line in /proc/stat")

    def since(self, earlier: MachineCpu) -> dict[str, float]:
        """Share of all cores busy / stolen between two readings, in percent."""
        busy = self.busy - earlier.busy
        idle = self.idle - earlier.idle
        steal = self.steal - earlier.steal
        total = max(1, busy + idle + steal)
        return {
            "busy_pct": round(100 * busy / total, 1),
            "steal_pct": round(100 * steal / total, 1),
        }


class ProcessMeter:
    """CPU used by a set of processes and by the machine over a window.

    Each name stands for one process or a group of them (PostgreSQL backends): a
    group's CPU is the sum over its processes that were there at the start of the
    window and still are at its end (one that comes or goes meanwhile is not counted).
    """

    def __init__(self, pids: Mapping[str, int | Sequence[int]]) -> None:
        self.pids = _as_groups(pids)
        self._groups = {name for name, pid in pids.items() if not isinstance(pid, int)}
        self._cpu: dict[str, dict[int, float]] = {}
        self._machine = MachineCpu.read()
        self._self_cpu = 0.0
        self._wall = 0.0

    def start(self, wall: float) -> None:
        self._cpu = {}
        for name, group in self.pids.items():
            readings = {pid: safe_cpu(pid) for pid in group}
            self._cpu[name] = {pid: cpu for pid, cpu in readings.items() if cpu is not None}
        self._self_cpu = cpu_seconds(os.getpid())
        self._machine = MachineCpu.read()
        self._wall = wall

    def stop(self, wall: float) -> dict[str, object]:
        elapsed = max(1e-9, wall - self._wall)
        out: dict[str, object] = {}

        def pct(used: float) -> int | None:
            # CPU time comes in clock ticks (10 ms): over a window this short a share of
            # a core would be mostly rounding (a 0.01 s window once showed 228%).
            return round(100 * used / elapsed) if elapsed >= _MIN_WINDOW_S else None

        for name, started in self._cpu.items():
            used = 0.0
            for pid, before in started.items():
                now = safe_cpu(pid)
                if now is not None:
                    used += max(0.0, now - before)
            out[name] = {
                "cpu_s": round(used, 2),
                "cpu_pct_of_one_core": pct(used),
                **({"processes": len(started)} if name in self._groups else {}),
            }
        used = cpu_seconds(os.getpid()) - self._self_cpu
        out["load_generator"] = {"cpu_s": round(used, 2), "cpu_pct_of_one_core": pct(used)}
        machine: dict[str, float] = MachineCpu.read().since(self._machine)
        ours = sum(
            float(v["cpu_pct_of_one_core"] or 0) for v in out.values() if isinstance(v, dict)
        )
        cores = os.cpu_count() or 1
        # what other processes on this (shared) machine used meanwhile, in % of one core
        machine["others_pct_of_one_core"] = round(max(0.0, machine["busy_pct"] * cores - ours))
        out["machine"] = machine
        return out


def _as_groups(pids: Mapping[str, int | Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Each name's processes as a tuple (a single pid becomes a group of one)."""
    return {name: (pid,) if isinstance(pid, int) else tuple(pid) for name, pid in pids.items()}


def safe_cpu(pid: int) -> float | None:
    """CPU seconds of `pid`, or None once it has exited (or was reused: not ours to read)."""
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None


class Sampler:
    """Resident memory (VmRSS) and CPU of a few processes, and the machine's CPU, at each
    call of `sample`: the soak's time series. CPU is the share of one core each process
    used since the previous sample; a process that has exited reads as None.

    A name may stand for a group of processes (`serve --processes N`): its `rss_mib` is
    then the largest process's (the target is per process), `rss_sum_mib` the group's,
    and its CPU the group's sum."""

    def __init__(self, pids: Mapping[str, int | Sequence[int]]) -> None:
        self.pids = _as_groups(pids)
        self.samples: list[dict[str, object]] = []
        self._cpu: dict[str, float | None] = {}
        self._machine = MachineCpu.read()
        self._at = 0.0

    def sample(self, at_s: float, phase: str) -> dict[str, object]:
        """Read every process now; `at_s` is seconds since the start of the window."""
        elapsed = at_s - self._at
        row: dict[str, object] = {"t_s": round(at_s, 1), "phase": phase}
        for name, group in self.pids.items():
            cpus = [safe_cpu(pid) for pid in group]
            cpu = None if None in cpus else sum(c for c in cpus if c is not None)
            rss = [safe_rss(pid) for pid in group]
            before = self._cpu.get(name)
            row[name] = {
                "rss_mib": None if None in rss else max(r for r in rss if r is not None),
                **(
                    {"rss_sum_mib": round(sum(r for r in rss if r is not None), 1)}
                    if len(group) > 1 and None not in rss
                    else {}
                ),
                "cpu_pct_of_one_core": (
                    round(100 * (cpu - before) / elapsed)
                    if cpu is not None and before is not None and elapsed > 0
                    else None
                ),
            }
            self._cpu[name] = cpu
        machine = MachineCpu.read()
        if self.samples:
            row["machine_busy_pct"] = machine.since(self._machine)["busy_pct"]
        self._machine, self._at = machine, at_s
        self.samples.append(row)
        return row


def safe_rss(pid: int) -> float | None:
    try:
        return memory_mib(pid).get("VmRSS")
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid: int) -> list[int]:
    """The direct children of `pid` (Linux: /proc/PID/task/PID/children)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except FileNotFoundError:
        return []


def rss_growth(samples: Sequence[Mapping[str, object]], name: str, fit_from_s: float) -> dict:
    """Growth of `name`'s RSS over a series of samples: a least-squares slope (MiB per
    minute) over the samples at or after `fit_from_s`, and first / peak / last values."""
    points = []
    for row in samples:
        reading = row.get(name)
        if isinstance(reading, Mapping) and reading.get("rss_mib") is not None:
            points.append((float(row["t_s"]), float(reading["rss_mib"])))  # type: ignore[arg-type]
    if not points:
        return {}
    fit = [(t, v) for t, v in points if t >= fit_from_s]
    slope = None
    if len(fit) >= 3:
        mean_t = sum(t for t, _ in fit) / len(fit)
        mean_v = sum(v for _, v in fit) / len(fit)
        var = sum((t - mean_t) ** 2 for t, _ in fit)
        if var:
            slope = 60 * sum((t - mean_t) * (v - mean_v) for t, v in fit) / var
    return {
        "first_mib": points[0][1],
        "peak_mib": max(v for _, v in points),
        "last_mib": points[-1][1],
        "fit_from_s": fit_from_s,
        "fit_points": len(fit),
        "slope_mib_per_min": None if slope is None else round(slope, 3),
    }
