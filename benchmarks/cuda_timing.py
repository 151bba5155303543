"""The anchors' kernel timing (shared/research/anchor-bench/attn_bench.py), shared by the kernel benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median milliseconds of `reps` calls, each timed with CUDA events, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
