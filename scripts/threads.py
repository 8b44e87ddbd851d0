"""Thread counts that do not oversubscribe the CPU.

PyTorch starts one thread per CPU that the process may run on, whatever share of them a container's CPU quota grants,
and processes whose threads together outnumber the cores slow each other far more than by sharing them: OpenMP's
threads wait for each other at every operation, so a thread that the kernel has parked stalls its whole team (two
trainings of the default U-Net side by side on 2 cores, 2 threads each, took 2.9x as long as one after the other, and
with 1 thread each 0.82x; docs/README.md, "Threads").

- :func:`available_cores`: the CPUs this process may use (its affinity mask), capped by a cgroup CPU quota.
- :func:`set_threads`: the bundle's ``threads`` option, applied before any work: a number, or ``null`` for
  ``OMP_NUM_THREADS`` where it is set and the available cores otherwise; with a warning when other processes already
  keep the CPU busy.
- :func:`threads_per_job`: the experiment grid's ``--jobs``: the available cores shared out between runs at once.
- :func:`loader_workers`: data loader workers from this process's share of the cores (the GPU profile's).
"""

from __future__ import annotations

import logging
import math
import os
import time

from scripts.errors import InputError

__all__ = ["available_cores", "busy_cores", "cgroup_cpu_quota", "loader_workers", "set_threads", "threads_per_job"]

logger = logging.getLogger(__name__)

# how long set_threads watches the CPU for other processes' load before the bundle starts its work
_BUSY_SAMPLE_S = 0.2


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (``docker run --cpus 2``: 2.0), or ``None`` without one.

    Reads cgroup v2's ``cpu.max`` (``"200000 100000"``: quota and period in microseconds; ``"max ..."``: no quota),
    else cgroup v1's ``cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (a quota of -1: none).

    Args:
        root: the cgroup file system's mount point.
    """
    candidates = [(os.path.join(root, "cpu.max"), None)]
    for folder in ("cpu", "cpu,cpuacct"):
        candidates.append(
            (os.path.join(root, folder, "cpu.cfs_quota_us"), os.path.join(root, folder, "cpu.cfs_period_us"))
        )
    for quota_path, period_path in candidates:
        try:
            with open(quota_path) as f:
                fields = f.read().split()
            if period_path is not None:
                with open(period_path) as f:
                    fields += f.read().split()
        except OSError:
            continue
        if len(fields) < 2 or fields[0] == "max":
            return None
        try:
            quota, period = float(fields[0]), float(fields[1])
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None
    return None


def available_cores(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may run on (its affinity mask, or all of them), capped by the cgroup's CPU quota rounded
    up; at least 1.

    Args:
        cgroup_root: the cgroup file system's mount point.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _cpu_ticks() -> tuple[int, int, int]:
    """Busy and total clock ticks of all the machine's CPUs since boot (``/proc/stat``), and this process's own busy
    ticks (``/proc/self/stat``: user and system time of all its threads)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    own = int(fields[11]) + int(fields[12])  # utime, stime
    return sum(values) - values[3] - values[4], sum(values), own


def busy_cores(seconds: float = _BUSY_SAMPLE_S) -> float | None:
    """How many of the machine's CPUs other processes kept busy over the next ``seconds`` (this one's own time left
    out), or ``None`` where ``/proc`` cannot tell (not Linux).

    Args:
        seconds: how long to watch.
    """
    try:
        busy0, total0, own0 = _cpu_ticks()
        time.sleep(seconds)
        busy1, total1, own1 = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    cpus = os.cpu_count() or 1
    # total ticks count every CPU's time, so their share of the interval's ticks is in cores
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (total1 - total0) * cpus


def set_threads(threads: int | None = None, check_load: bool = True) -> int:
    """Set torch's thread count for this process before it starts work; returns it.

    Args:
        threads: a positive number of threads; or ``None``: ``OMP_NUM_THREADS`` where it is set (torch read it at
            import), else the available cores (:func:`available_cores`: torch would count the CPUs of the affinity
            mask, and a container's quota may grant fewer).
        check_load: when ``threads`` is ``None`` and ``OMP_NUM_THREADS`` is not set, watch the CPU for a moment and
            warn when other processes' load and these threads together outnumber the machine's CPUs by more than half
            a core (another training running, say). Threads chosen by the user are taken as meant. Two commands
            started within the same moment do not see each other: each is still starting.

    Raises:
        InputError: ``threads`` is not a positive whole number or null.
    """
    import torch

    if isinstance(threads, str) and threads.strip().lower() in ("null", "none"):  # --threads null on a command line
        threads = None
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive whole number or null (one per available core), got {threads!r}")
    automatic = threads is None and not os.environ.get("OMP_NUM_THREADS")
    if threads is not None:
        chosen, why = threads, "the threads option"
    elif not automatic:
        chosen, why = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        cores = available_cores()
        chosen, why = min(torch.get_num_threads(), cores), f"{cores} available cores"
    if chosen != torch.get_num_threads():
        torch.set_num_threads(chosen)
    logger.info(f"torch threads: {chosen} ({why})")
    if automatic and check_load:
        others, cpus = busy_cores(), os.cpu_count() or 1
        if others is not None and others + chosen > cpus + 0.5:
            logger.warning(
                f"other processes keep {others:.1f} of this machine's {cpus} CPUs busy: this run's {chosen} threads "
                "will share them and run several times slower; run one heavy process at a time, or give each one "
                "threads that add up to the cores (OMP_NUM_THREADS, or --threads)"
            )
    return chosen


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Threads for each of ``jobs`` processes run at once, so that together they use the cores and no more.

    Args:
        jobs: processes at once, at least 1.
        cores: cores to share out (default: :func:`available_cores`).

    Raises:
        InputError: ``jobs`` is not positive or exceeds the cores (the runs would slow each other down).
    """
    cores = available_cores() if cores is None else cores
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    if jobs > cores:
        raise InputError(
            f"--jobs {jobs} is more than the {cores} cores available: runs at once would slow each other down; "
            f"use --jobs {cores} or fewer"
        )
    return cores // jobs


def loader_workers(reserve: int = 2, minimum: int = 2) -> int:
    """Data loader workers for this process: its share of the cores less ``reserve`` for the process itself, at least
    ``minimum``.

    The share is ``OMP_NUM_THREADS`` where it is set, since whoever starts several processes at once sets it as each
    one's share (the experiment grid's ``--jobs``, torchrun's 1 per rank), else :func:`available_cores`. So 16 cores
    give one training 14 workers, and each of 4 grid runs (4 threads each) or of 8 ranks the minimum, where counting
    the machine's cores gave every one of them 14.

    Args:
        reserve: cores left to the process's own threads.
        minimum: the fewest workers returned.
    """
    given = os.environ.get("OMP_NUM_THREADS", "")
    share = int(given) if given.strip().isdigit() and int(given) > 0 else available_cores()
    return max(minimum, share - reserve)
