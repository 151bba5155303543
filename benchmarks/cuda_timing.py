"""The benchmarks' timers.

`median_ms` is the anchors' kernel timing (shared/research/anchor-bench/attn_bench.py), used by the kernel
benchmarks (attention_bench.py, triton_alibi_bench.py, decode_kernel_bench.py). `median_s` is model_bench.py's
timer for the device rates (harness.py): CUDA events on a GPU, wall time on the CPU. `mean_ms` is the cuDNN probe's
timing (shared/research/anchor-bench/cudnn_alibi_probe.py), used by cudnn_bench.py, and `host_us` the host cost per
call at shapes where the GPU waits on the host (cudnn_bench.py, cudnn_host_profile.py). `copy_gb_s` is the kernel
benchmarks' bandwidth floor (decode_kernel_bench.py, loss_bench.py, norm_bench.py), `gpu_busy` the sum of the
kernels' own times under torch.profiler where host time would hide them (step_profile.py, norm_bench.py), and
`gpu_timeline` what separates a GPU-bound call's span from its kernels' time (step_profile.py). Not a
script; it measures nothing by itself and prints nothing. It runs inside those scripts, e.g. on the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/attention_bench.py --lengths 1024,4096
"""

from __future__ import annotations

import statistics
import time
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


def median_s(fn: Callable[[], object], reps: int, cuda: bool) -> float:
    """Median seconds of `reps` calls after 3 warm-up calls: CUDA events if `cuda`, else wall time."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mean_ms(fn: Callable[[], object], reps: int) -> float:
    """3 warm-up calls, then the mean of `reps` back-to-back calls between two CUDA events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def host_us(fn: Callable[[], object], reps: int) -> float:
    """Wall microseconds per call over `reps` back-to-back calls after 10 warm-up calls, synchronized at both ends:
    at a tiny shape the GPU waits on the host, so this is the host's cost per call."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - start) / reps


def copy_gb_s() -> float:
    """Device-to-device copy bandwidth in GB/s (read + write) of a 2 GiB bf16 tensor, timed with `median_ms`."""
    src = torch.empty(2**30, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), 10)
    return 2 * src.numel() * 2 / ms / 1e6  # read + write


def gpu_busy(fn: Callable[[], object], reps: int, top: int = 12) -> tuple[float, list[dict]]:
    """GPU kernel ms per call (sum of kernel times; overlap is rare in one stream) and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events) / 1e3 / reps
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    kernels = [dict(name=e.key[:90], ms=round(e.self_device_time_total / 1e3 / reps, 3), calls=e.count // reps)
               for e in events[:top]]
    return total, kernels


def host_busy(fn: Callable[[], object], top: int = 20) -> list[dict]:
    """The host operators and CUDA runtime calls (a synchronization or a blocking copy among them) with the most
    CPU time of their own over one call, ending with a synchronization."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.key_averages() if e.device_type.name == "CPU"),
                    key=lambda e: e.self_cpu_time_total, reverse=True)
    return [dict(name=e.key[:90], ms=round(e.self_cpu_time_total / 1e3, 3), calls=e.count) for e in events[:top]]


def gpu_timeline(fn: Callable[[], object], reps: int, top: int = 12) -> dict:
    """Where a GPU-bound call's time goes between its kernels: `reps` back-to-back calls under torch.profiler,
    per call the span from the first kernel's start to the last one's end, the time some kernel ran (busy), the
    idle time between kernels (gaps) and the device activities (launches); and the `top` longest gaps with the
    kernels on either side. Inside CUDA graphs there is no host gap to hide, so what separates span from busy is
    the GPU's own time from one kernel's end to the next one's start."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type.name == "CUDA")
    busy, gaps, reach = 0.0, [], spans[0][0]
    for (start, end, name), before in zip(spans, [None, *spans[:-1]], strict=True):
        if start > reach:
            gaps.append((start - reach, before[2] if before else "", name))
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    gaps.sort(reverse=True)
    per_call = 1e3 * reps  # microseconds over reps calls -> ms per call
    return dict(span_ms=round((reach - spans[0][0]) / per_call, 3), busy_ms=round(busy / per_call, 3),
                gap_ms=round(sum(g[0] for g in gaps) / per_call, 3), launches=len(spans) // reps,
                gaps_over_5us=sum(g[0] > 5 for g in gaps) // reps,
                top_gaps=[dict(us=round(g, 1), after=a[:70], before=b[:70]) for g, a, b in gaps[:top]])
