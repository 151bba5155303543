"""The training step's LayerNorms and ReLU backward (alibi_triton_norm.py) against inductor's kernels for the same
ops, and the bytes they must move.

For model_bench's training step (16 x 512 tokens, hidden 1,024, fc1 4,096, bf16), the GPU time of the kernels
(the sum of their own times under torch.profiler, per call: host time would hide them at these sizes):
  * add + LayerNorm, forward and backward (the input gradient plus the residual's own, and the weight and bias
    gradients): `residual + delta` then `F.layer_norm`, compiled (inductor, its defaults: what the compiled step
    ran before alibi_norm.py), and alibi_norm.add_layer_norm on the kernels, for each setting of the kernels'
    rows at once, the backward's programs and its warps (--norm-rows, --programs, --backward-warps);
  * ReLU's backward with the bias gradient: `where(output > 0, grad, 0)` and its column sum, compiled, and the
    kernel, for each block shape (--relu-blocks);
  * the floor: the bytes each must read and write, at the device-to-device copy bandwidth measured here.
Each row also gives its largest difference from the same computation in float64 (over the largest value).

Prints a table and writes norm_bench.json to --out (default $OUT or .). On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/norm_bench.py [--norm-rows 1,2,4,8] [--programs 132,256,528] \\
        [--backward-warps 8,16] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from modeling_alibi import alibi_triton_norm as kernels  # noqa: E402
from modeling_alibi.alibi_norm import add_layer_norm  # noqa: E402

from cuda_timing import copy_gb_s, gpu_busy  # noqa: E402  (beside this file)

ROWS, HIDDEN, FFN = 16 * 512, 1024, 4096
SETTINGS = ("norm_rows", "partial_programs", "norm_backward_warps", "relu_rows", "relu_columns")


def _error(actual: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Largest |difference| over the largest |reference|, over all outputs."""
    return max(((a.double() - r).abs().max() / r.abs().max()).item() for a, r in zip(actual, reference, strict=True))


def _row(label: str, run, reference: list[torch.Tensor], floor_ms: float, **setting) -> dict:
    """One table row: `run` with the kernels' module settings `setting` (names lowercased), restored after."""
    saved = {name: getattr(kernels, name.upper()) for name in setting}
    for name, value in setting.items():
        setattr(kernels, name.upper(), value)
    try:
        return _timed_row(label, run, reference, floor_ms, **setting)
    finally:
        for name, value in saved.items():
            setattr(kernels, name.upper(), value)


def _timed_row(label: str, run, reference: list[torch.Tensor], floor_ms: float, **setting) -> dict:
    error = _error(list(run()), reference)
    ms, top = gpu_busy(run, 10, top=6)
    return dict(case=label, **setting, ms=round(ms, 4), floor_ms=round(floor_ms, 4), error=float(f"{error:.3g}"),
                kernels=top)


def norm_rows(rows_settings: list[int], program_settings: list[int], warp_settings: list[int], gb_s: float
              ) -> list[dict]:
    dtype = torch.bfloat16
    residual, delta = (torch.randn(ROWS, HIDDEN, device="cuda", dtype=dtype) for _ in range(2))
    grads = [torch.randn(ROWS, HIDDEN, device="cuda", dtype=dtype) for _ in range(2)]  # for total, normed
    norm = torch.nn.LayerNorm(HIDDEN, device="cuda", dtype=dtype)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    leaves = [residual.clone().requires_grad_(), delta.clone().requires_grad_()]

    def step(function):
        return lambda: torch.autograd.grad(function(*leaves), [*leaves, norm.weight, norm.bias], grads)

    def plain(residual, delta, norm=norm):
        total = residual + delta
        return total, F.layer_norm(total, (HIDDEN,), norm.weight, norm.bias, norm.eps)

    with torch.no_grad():
        double = torch.nn.LayerNorm(HIDDEN, device="cuda", dtype=torch.float64).requires_grad_()
        double.load_state_dict(norm.state_dict())
    reference_leaves = [x.detach().double().requires_grad_() for x in leaves]
    reference = list(torch.autograd.grad(plain(*reference_leaves, norm=double),
                                         [*reference_leaves, double.weight, double.bias], [g.double() for g in grads]))
    # Reads: residual, delta (forward); total, both gradients (backward). Writes: total, normed (forward), the
    # input gradient (backward). Means, deviations and partial sums are small beside these.
    floor_ms = 8 * ROWS * HIDDEN * dtype.itemsize / gb_s / 1e6
    out = [_row("compiled add + F.layer_norm (inductor)", step(torch.compile(plain)), reference, floor_ms)]
    fused = step(lambda r, d: add_layer_norm(r, d, norm))
    for rows in rows_settings:
        for programs in program_settings:
            for warps in warp_settings:
                out.append(_row("add_layer_norm kernels", fused, reference, floor_ms, norm_rows=rows,
                                partial_programs=programs, norm_backward_warps=warps))
    return out


def relu_rows(blocks: list[tuple[int, int]], gb_s: float) -> list[dict]:
    dtype = torch.bfloat16
    grad = torch.randn(ROWS, FFN, device="cuda", dtype=dtype)
    output = torch.relu(torch.randn(ROWS, FFN, device="cuda", dtype=dtype))

    def plain(grad, output):
        masked = torch.where(output > 0, grad, 0)
        return masked, masked.sum(0)

    reference = list(plain(grad.double(), output.double()))
    floor_ms = 3 * ROWS * FFN * dtype.itemsize / gb_s / 1e6  # read grad and output, write the masked gradient
    compiled = torch.compile(plain)
    out = [_row("compiled where + sum (inductor)", lambda: compiled(grad, output), reference, floor_ms)]
    for rows, columns in blocks:
        out.append(_row("relu_backward_with_bias kernel", lambda: kernels._relu_backward(grad, output), reference,
                        floor_ms, relu_rows=rows, relu_columns=columns))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm-rows", default="1,2,4,8", help="rows each program of the LayerNorm kernels holds")
    parser.add_argument("--programs", default="132,256,528", help="programs of the LayerNorm backward")
    parser.add_argument("--backward-warps", default="8,16", help="the most warps of the LayerNorm backward")
    parser.add_argument("--relu-blocks", default="16x512,8x1024,32x256,8x512", help="rows x columns per program")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    gb_s = copy_gb_s()
    numbers = [[int(n) for n in text.split(",")] for text in (args.norm_rows, args.programs, args.backward_warps)]
    blocks = [tuple(int(n) for n in block.split("x")) for block in args.relu_blocks.split(",")]
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, copy_gb_s=round(gb_s),
                  norm=norm_rows(*numbers, gb_s), relu=relu_rows(blocks, gb_s))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, copy {gb_s:.0f} GB/s; GPU ms per call")
    for part, title in (("norm", f"{ROWS} x {HIDDEN} bf16, add + LayerNorm forward and backward"),
                        ("relu", f"{ROWS} x {FFN} bf16, ReLU backward and bias gradient")):
        print(f"[{part}] {title}")
        for row in result[part]:
            setting = ", ".join(f"{k.split('_')[-1]} {row[k]}" for k in SETTINGS if k in row)
            print(f"  {row['case']:32s} {setting:30s} {row['ms']:8.4f} ms  floor {row['floor_ms']:.4f} "
                  f"({row['floor_ms'] / row['ms']:.2f} of it)  error {row['error']}")
            for kernel in row["kernels"]:
                print(f"      {kernel['ms']:7.4f} ms x{kernel['calls']} {kernel['name'][:70]}")
    with open(os.path.join(args.out, "norm_bench.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
