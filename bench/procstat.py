"""Resource readings from /proc: a process's CPU seconds and memory, the machine's CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


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
    """CPU used by a set of processes and by the machine over a window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._cpu: dict[str, float] = {}
        self._machine = MachineCpu.read()
        self._self_cpu = 0.0
        self._wall = 0.0

    def start(self, wall: float) -> None:
        self._cpu = {name: _safe_cpu(pid) for name, pid in self.pids.items()}
        self._self_cpu = cpu_seconds(os.getpid())
        self._machine = MachineCpu.read()
        self._wall = wall

    def stop(self, wall: float) -> dict[str, object]:
        elapsed = max(1e-9, wall - self._wall)
        out: dict[str, object] = {}
        for name, pid in self.pids.items():
            used = _safe_cpu(pid) - self._cpu[name]
            out[name] = {
                "cpu_s": round(used, 2),
                "cpu_pct_of_one_core": round(100 * used / elapsed),
            }
        used = cpu_seconds(os.getpid()) - self._self_cpu
        out["load_generator"] = {
            "cpu_s": round(used, 2),
            "cpu_pct_of_one_core": round(100 * used / elapsed),
        }
        machine: dict[str, float] = MachineCpu.read().since(self._machine)
        ours = sum(float(v["cpu_pct_of_one_core"]) for v in out.values() if isinstance(v, dict))
        cores = os.cpu_count() or 1
        # what other processes on this (shared) machine used meanwhile, in % of one core
        machine["others_pct_of_one_core"] = round(max(0.0, machine["busy_pct"] * cores - ours))
        out["machine"] = machine
        return out


def _safe_cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
