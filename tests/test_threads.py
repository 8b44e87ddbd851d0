"""Thread counts: the cores a process may use (affinity and cgroup quota), the bundle's threads option, the load of
other processes, and the experiment grid's share per run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from scripts.errors import InputError
from scripts.threads import (
    available_cores,
    busy_cores,
    cgroup_cpu_quota,
    loader_workers,
    set_threads,
    threads_per_job,
)


def _write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_quotas_of_both_versions(tmp_path):
    v2 = tmp_path / "v2"
    _write(v2 / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(str(v2)) == 1.5
    _write(v2 / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(str(v2)) is None
    v1 = tmp_path / "v1"
    _write(v1 / "cpu,cpuacct" / "cpu.cfs_quota_us", "200000\n")
    _write(v1 / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(str(v1)) == 2.0
    _write(v1 / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(str(v1)) is None
    assert cgroup_cpu_quota(str(tmp_path / "none")) is None


def test_available_cores_are_capped_by_the_quota_rounded_up(tmp_path):
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cores(str(tmp_path / "none")) == affinity
    _write(tmp_path / "cpu.max", "50000 100000\n")  # half a core: still one thread
    assert available_cores(str(tmp_path)) == 1
    _write(tmp_path / "cpu.max", f"{(affinity + 8) * 100000} 100000\n")  # a quota above the affinity mask
    assert available_cores(str(tmp_path)) == affinity


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_threads_option_and_omp_num_threads(torch_threads, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="scripts.threads")
    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    assert "torch threads: 1 (the threads option)" in caplog.text
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by torch at import: kept as it is
    assert set_threads(None) == set_threads("null") == torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(available_cores() + 3)  # as torch counts CPUs a container's quota may not grant
    assert set_threads(None, check_load=False) == torch.get_num_threads() == available_cores()
    for bad in (0, -2, 1.5, "2", True):
        with pytest.raises(InputError, match=r"^threads must be a positive whole number or null .*, got "):
            set_threads(bad)


def test_other_processes_load_is_measured_and_warned_about(torch_threads, monkeypatch, caplog):
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_cores(0.5) >= 0.6  # one process spinning: about one core
    finally:
        spin.kill()
        spin.wait()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    caplog.set_level(logging.INFO, logger="scripts.threads")
    cpus = os.cpu_count()
    monkeypatch.setattr("scripts.threads.busy_cores", lambda: float(cpus))  # another training on every CPU
    chosen = set_threads(None)
    assert f"other processes keep {cpus:.1f} of this machine's {cpus} CPUs busy: this run's {chosen} threads" in (
        caplog.text
    )
    caplog.clear()
    monkeypatch.setattr("scripts.threads.busy_cores", lambda: 0.0)
    set_threads(None)
    assert "busy" not in caplog.text
    monkeypatch.setattr("scripts.threads.busy_cores", lambda: float(cpus))
    set_threads(1)  # threads the user chose are taken as meant
    assert "busy" not in caplog.text


def test_threads_per_job_share_the_cores_out():
    assert [threads_per_job(j, cores=8) for j in (1, 2, 3, 8)] == [8, 4, 2, 1]
    with pytest.raises(InputError, match=r"^--jobs 3 is more than the 2 cores available: .*; use --jobs 2 or fewer$"):
        threads_per_job(3, cores=2)
    with pytest.raises(InputError, match=r"^--jobs must be at least 1, got 0$"):
        threads_per_job(0, cores=2)


def test_loader_workers_come_from_this_process_share(monkeypatch):
    monkeypatch.setattr("scripts.threads.available_cores", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert loader_workers() == 14  # one training on 16 cores
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # one of 4 grid runs
    assert loader_workers() == 2 and loader_workers(reserve=1, minimum=0) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a torchrun rank
    assert loader_workers() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert loader_workers() == 14
