"""Timing that a drifting machine cannot skew: steps taking turns within every repeat, ratios paired by repeat.

These CPUs' speed moves by 20-30% within a session (other work on their hosts), so two things timed minutes apart
are not comparable; timed in turns, seconds apart, a change of load hits both alike. Used by the benchmarks
(:mod:`scripts.benchmark`) and by ``--precision auto``'s check of bf16 against float32
(:func:`scripts.inference.bf16_speedup`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["paired_ratio", "sync", "time_interleaved", "time_interleaved_runs"]


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved_runs(
    steps: dict[str, Callable[[], None]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of each step in every repeat, the steps taking turns within every repeat after one warm-up call
    each (a change of the machine's load hits all alike, and neighbours in a repeat are seconds apart)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each step, the steps taking turns within every repeat after one warm-up call each."""
    return {name: statistics.median(t) for name, t in time_interleaved_runs(steps, repeats, device).items()}


def paired_ratio(times: list[float], reference: list[float]) -> dict[str, float]:
    """The ratio of two interleaved steps as the median of their ratios within each repeat, with the quartiles and
    extremes of those ratios: a machine whose speed drifts over minutes (these CPUs' matmul rate varies by 20-30%
    within a session) moves both steps of a repeat alike, so the paired ratio is steadier than a ratio of the two
    medians, and the spread says how far a single repeat can be trusted.

    Returns:
        ``median``, ``q1``, ``q3``, ``min`` and ``max`` of ``times[i] / reference[i]``.
    """
    ratios = [t / r for t, r in zip(times, reference)]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3, "min": min(ratios), "max": max(ratios)}
