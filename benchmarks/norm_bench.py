"""The training step's residual add + LayerNorm and ReLU backward (alibi_triton_norm.py) against inductor's kernels
for the same ops, and the bytes they must move.

For model_bench's training step (16 x 512 tokens, hidden 1,024, fc1 4,096, bf16), with CUDA events
(benchmarks/cuda_timing.py):
  * add + LayerNorm, forward and backward (the input gradient plus the residual's own, and the weight and bias
    gradients): `residual + delta` then `F.layer_norm`, compiled (inductor, its defaults: what the compiled step
    ran before alibi_norm.py), and alibi_norm.add_layer_norm on the kernels, with each setting in --norm-rows;
  * ReLU's backward with the bias gradient: `where(output > 0, grad, 0)` and its column sum, compiled, and the
    kernel;
  * the floor: the bytes each must read and write, at the device-to-device copy bandwidth measured here.
Each kernel row also gives its largest difference from the same computation in float64, beside inductor's.

Prints a table and writes norm_bench.json to --out (default $OUT or .). On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/norm_bench.py [--norm-rows 1,2,4,8] [--out DIR]
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

from modeling_alibi import alibi_triton_norm  # noqa: E402
from modeling_alibi.alibi_norm import add_layer_norm  # noqa: E402

from cuda_timing import copy_gb_s, median_ms  # noqa: E402  (beside this file)

ROWS, HIDDEN, FFN = 16 * 512, 1024, 4096


def _error(actual: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Largest |difference| over the largest |reference|, over all outputs."""
    return max(((a.double() - r).abs().max() / r.abs().max()).item() for a, r in zip(actual, reference, strict=True))


def norm_rows(settings: list[int], gb_s: float) -> list[dict]:
    dtype = torch.bfloat16
    residual, delta = (torch.randn(ROWS, HIDDEN, device="cuda", dtype=dtype) for _ in range(2))
    grads = [torch.randn(ROWS, HIDDEN, device="cuda", dtype=dtype) for _ in range(2)]  # for total, normed
    norm = torch.nn.LayerNorm(HIDDEN, device="cuda", dtype=dtype)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    leaves = [residual.clone().requires_grad_(), delta.clone().requires_grad_()]

    def step(function):
        def run():
            outputs = function(*leaves)
            return torch.autograd.grad(outputs, [*leaves, norm.weight, norm.bias], grads)
        return run

    def plain(residual, delta, norm=norm):
        total = residual + delta
        return total, F.layer_norm(total, (HIDDEN,), norm.weight, norm.bias, norm.eps)

    with torch.no_grad():
        double = torch.nn.LayerNorm(HIDDEN, device="cuda", dtype=torch.float64).requires_grad_()
        double.load_state_dict(norm.state_dict())
    reference_leaves = [x.detach().double().requires_grad_() for x in leaves]
    outputs = plain(*reference_leaves, norm=double)
    reference = torch.autograd.grad(outputs, [*reference_leaves, double.weight, double.bias],
                                    [g.double() for g in grads])
    # Reads: residual, delta (forward); total, both gradients (backward). Writes: total, normed (forward), the
    # input gradient (backward). Means, deviations and partial sums are small beside these.
    floor_ms = 8 * ROWS * HIDDEN * dtype.itemsize / gb_s / 1e6
    cases = [("compiled add + F.layer_norm (inductor)", step(torch.compile(plain)), None)]
    for rows in settings:
        cases.append((f"add_layer_norm kernels, {rows} rows at once",
                      step(lambda r, d: add_layer_norm(r, d, norm)), rows))
    out = []
    for label, run, rows in cases:
        if rows is not None:
            alibi_triton_norm.NORM_ROWS = rows
        error = _error(list(run()), list(reference))
        out.append(dict(case=label, ms=round(median_ms(run, 20), 4), floor_ms=round(floor_ms, 4),
                        error=float(f"{error:.3g}")))
    alibi_triton_norm.NORM_ROWS = 4
    return out


def relu_rows(gb_s: float) -> list[dict]:
    dtype = torch.bfloat16
    grad = torch.randn(ROWS, FFN, device="cuda", dtype=dtype)
    output = torch.relu(torch.randn(ROWS, FFN, device="cuda", dtype=dtype))

    def plain(grad, output):
        masked = torch.where(output > 0, grad, 0)
        return masked, masked.sum(0)

    reference = plain(grad.double(), output.double())
    floor_ms = 3 * ROWS * FFN * dtype.itemsize / gb_s / 1e6  # read grad and output, write the masked gradient
    compiled, out = torch.compile(plain), []
    for label, run in (("compiled where + sum (inductor)", lambda: compiled(grad, output)),
                       ("relu_backward_with_bias kernel", lambda: alibi_triton_norm._relu_backward(grad, output))):
        error = _error(list(run()), list(reference))
        out.append(dict(case=label, ms=round(median_ms(run, 20), 4), floor_ms=round(floor_ms, 4),
                        error=float(f"{error:.3g}")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm-rows", default="1,2,4,8", help="rows each program of the LayerNorm kernels holds")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    gb_s = copy_gb_s()
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, copy_gb_s=round(gb_s),
                  norm=norm_rows([int(n) for n in args.norm_rows.split(",")], gb_s), relu=relu_rows(gb_s))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, copy {gb_s:.0f} GB/s")
    for part, shape in (("norm", f"{ROWS} x {HIDDEN}"), ("relu", f"{ROWS} x {FFN}")):
        print(f"[{part}] {shape} bf16, forward+backward" if part == "norm" else f"[{part}] {shape} bf16, backward")
        for row in result[part]:
            print(f"  {row['case']:45s} {row['ms']:8.4f} ms  floor {row['floor_ms']:.4f}  "
                  f"({row['floor_ms'] / row['ms']:.2f} of it)  error {row['error']}")
    with open(os.path.join(args.out, "norm_bench.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
