"""available_cpus: CPU affinity capped by the cgroup v2 or v1 CPU quota, read from a fake tree;
unpin: a pinned worker's inference threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from service.cpus import SERVER_CPUS_ENV, available_cpus, unpin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def node_of_64(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process may run on 64 CPUs (os.sched_getaffinity faked; the real one is unchanged),
    so that a quota of fewer CPUs shows on any machine."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))


def _tree(tmp_path: Path, files: dict[str, str], own: str = "0::/") -> tuple[Path, Path]:
    """A cgroup root holding `files` and a /proc/self/cgroup saying `own`."""
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    (tmp_path / "self_cgroup").write_text(own + "\n")
    return root, tmp_path / "self_cgroup"


@pytest.mark.usefixtures("node_of_64")
@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("150000 100000", 2), ("100000 100000", 1), ("50000 100000", 1), ("max 100000", 64)],
)
def test_v2_quota_rounds_up_and_max_is_no_limit(
    tmp_path: Path, cpu_max: str, expected: int
) -> None:
    assert available_cpus(*_tree(tmp_path, {"cpu.max": cpu_max})) == expected


def test_affinity_caps_a_larger_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert available_cpus(*_tree(tmp_path, {"cpu.max": "800000 100000"})) == 3


@pytest.mark.usefixtures("node_of_64")
def test_v2_own_cgroup_and_its_ancestors_count(tmp_path: Path) -> None:
    own = "0::/kubepods/pod1/c1"
    files = {"kubepods/pod1/c1/cpu.max": "400000 100000", "kubepods/pod1/cpu.max": "300000 100000"}
    assert available_cpus(*_tree(tmp_path, files, own)) == 3
    # The host's path is not mounted in a container without a cgroup namespace: the root is.
    assert available_cpus(*_tree(tmp_path / "c", {"cpu.max": "200000 100000"}, own)) == 2


@pytest.mark.usefixtures("node_of_64")
def test_v1_quota_when_there_is_no_cpu_max(tmp_path: Path) -> None:
    own = "4:memory:/\n3:cpu,cpuacct:/docker/abc\n0::/"
    files = {
        "cpu/docker/abc/cpu.cfs_quota_us": "250000",
        "cpu/docker/abc/cpu.cfs_period_us": "100000",
        "cpu/cpu.cfs_quota_us": "-1",
        "cpu/cpu.cfs_period_us": "100000",
    }
    assert available_cpus(*_tree(tmp_path, files, own)) == 3
    unlimited = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    assert available_cpus(*_tree(tmp_path / "u", unlimited)) == 64


@pytest.mark.usefixtures("node_of_64")
def test_no_cgroup_files_leave_the_affinity(tmp_path: Path) -> None:
    assert available_cpus(tmp_path / "none", tmp_path / "none" / "cgroup") == 64


@pytest.mark.usefixtures("node_of_64")
def test_a_malformed_file_means_no_known_quota_and_never_0(tmp_path: Path) -> None:
    assert available_cpus(*_tree(tmp_path, {"cpu.max": "garbage"})) == 64
    assert available_cpus(*_tree(tmp_path / "0", {"cpu.max": "0 100000"})) == 1


def test_a_process_pinned_to_one_cpu_gets_one() -> None:
    """A real process (not this one) restricted to one CPU, as `taskset -c` would, on the real
    /sys/fs/cgroup: fails on any machine with more than one CPU if affinity were ignored."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from service.cpus import available_cpus; print(available_cpus())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "1"


def test_a_pinned_workers_inference_thread_may_run_on_every_server_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the worker's executor runs in each new thread: pinned → the server's CPUs."""
    everywhere = os.sched_getaffinity(0)
    monkeypatch.setenv(SERVER_CPUS_ENV, ",".join(map(str, sorted(everywhere))))
    seen = []

    def thread() -> None:
        os.sched_setaffinity(0, {min(everywhere)})  # as the worker's threads inherit
        unpin()
        seen.append(os.sched_getaffinity(0))

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join()
    assert seen == [everywhere]
