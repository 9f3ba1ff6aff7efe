"""The CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota."""

from __future__ import annotations

import contextlib
import math
import os
import threading
from pathlib import Path, PurePosixPath

__all__ = ["available_cpus", "lower_grpc_threads", "on_one_cpu", "unpin", "worker_cpus"]

# Set by `convserve serve` for the workers it pins: the CPUs the server may use.
SERVER_CPUS_ENV = "CONVSERVE_SERVER_CPUS"

# The lowest priority (nice): gRPC's threads on a worker pinned to one CPU.
GRPC_THREADS_NICE = 19


def _affinity() -> set[int]:
    """The CPUs this process may run on; empty where the platform cannot say (not Linux)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()


def available_cpus(
    cgroup_root: Path = Path("/sys/fs/cgroup"), proc_self_cgroup: Path = Path("/proc/self/cgroup")
) -> int:
    """min(CPU affinity, the cgroup CPU quota rounded up), at least 1.

    Not os.cpu_count(): that is the node's, so a container limited to 1 CPU on a 64-core node
    would start 64 workers that share one CPU's time (and need 64 times the memory).
    """
    cpus = len(_affinity()) or os.cpu_count() or 1
    try:
        quota = _cgroup_quota(cgroup_root, _own_cgroups(proc_self_cgroup))
    except (OSError, ValueError):  # an unreadable or unexpected file: no known quota
        quota = None
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))  # 1.5 CPUs of time: more than 1 process uses
    return max(1, cpus)  # never 0 workers, whatever a file says


def worker_cpus(workers: int) -> list[int] | None:
    """The CPU each of `workers` worker processes is pinned to: one each, when the process
    may use exactly that many CPUs (its affinity: its own machine or cpuset). None otherwise
    (more or fewer workers, or a CPU quota shared over more CPUs): the workers float."""
    cpus = sorted(_affinity())
    return cpus if len(cpus) == workers > 1 and available_cpus() == workers else None


def unpin() -> None:
    """Let the calling thread of a pinned worker run on any CPU the server may use."""
    cpus = os.environ.get(SERVER_CPUS_ENV)
    if cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})


def on_one_cpu() -> bool:
    """Whether this process may run on one CPU only (pinned, or a one-CPU cpuset)."""
    return len(_affinity()) == 1


def lower_grpc_threads() -> None:
    """Give gRPC's own threads (its completion-queue poller and C++ event-engine threads)
    the lowest priority.

    For a worker pinned to one CPU: its event loop is then not preempted each time one of
    them has an event; they run while the loop waits, and their events reach it together.
    Every thread but convserve's (the main thread, the metrics server, executors) is gRPC's.
    """
    ours = {t.native_id for t in threading.enumerate() if not t.name.endswith("(_poll_wrapper)")}
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) not in ours:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.setpriority(os.PRIO_PROCESS, int(task.name), GRPC_THREADS_NICE)


def _own_cgroups(proc_self_cgroup: Path) -> dict[str, str]:
    """Controller → this process's cgroup path; "" is cgroup v2's ("0::/path")."""
    if not proc_self_cgroup.is_file():
        return {}
    lines = (line.split(":", 2) for line in proc_self_cgroup.read_text().splitlines() if line)
    return {name: path for _, names, path in lines for name in names.split(",")}


def _lineage(base: Path, path: str) -> list[Path]:
    """base/path and its ancestors up to base: a quota on any of them applies. A container
    without its own cgroup namespace sees the host's path, absent under its mount, where base
    itself is the container's cgroup."""
    parts = PurePosixPath(path.lstrip("/")).parts
    return [base.joinpath(*parts[:end]) for end in range(len(parts), -1, -1)]


def _cgroup_quota(root: Path, own: dict[str, str]) -> float | None:
    """The tightest CPU quota in CPUs (1.5: 150 ms per 100 ms), None if there is none."""
    v2 = [d / "cpu.max" for d in _lineage(root, own.get("", "/")) if (d / "cpu.max").is_file()]
    limits: list[float] = []
    if v2:  # cpu.max: "QUOTA PERIOD" in µs, QUOTA "max" for none
        for quota, period in (file.read_text().split() for file in v2):
            if quota != "max":
                limits.append(int(quota) / int(period))
    else:  # cgroup v1: cpu.cfs_quota_us is -1 for none
        for d in _lineage(root / "cpu", own.get("cpu", "/")):
            if (d / "cpu.cfs_quota_us").is_file():
                quota_us = int((d / "cpu.cfs_quota_us").read_text())
                if quota_us > 0:
                    limits.append(quota_us / int((d / "cpu.cfs_period_us").read_text()))
    return min(limits, default=None)
