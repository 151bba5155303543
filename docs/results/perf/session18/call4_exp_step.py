"""Session 18, call 4 (the record of what ran): step rows with this session's norm kernels (module settings as on
disk) against 05124db's kernels, interleaved; and fp32-parameter autocast steps with the fused add + LayerNorm on
and off. Prints step_profile-style rows, writes exp_step.json to argv[2].

It ran from the repository root as `.ab/exp_step.py new,old,ac-on,ac-off,new,old $OUT/w`, beside
`.ab/old_kernels_plain.py`: `git show 05124db:modeling_alibi/alibi_triton_norm.py` without its three `custom_op`
lines and with `from modeling_alibi.alibi_triton_forward import _device_guard` for the relative import.
"""

import json
import os
import sys

sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".ab")
import old_kernels_plain as old  # noqa: E402
import step_profile as sp  # noqa: E402
import torch  # noqa: E402

from modeling_alibi import alibi_triton_norm as k  # noqa: E402
from modeling_alibi import modeling_alibi as modeling  # noqa: E402
from modeling_alibi.training.loop import training_loss  # noqa: E402

from cuda_timing import gpu_busy, host_us  # noqa: E402

NAMES = ("_add_norm_backward_kernel", "_relu_backward_kernel", "_sum_partials")
SETTINGS = ("NORM_ROWS", "PARTIAL_PROGRAMS", "NORM_BACKWARD_WARPS", "RELU_ROWS", "RELU_COLUMNS", "RELU_PROGRAMS")
new = {n: getattr(k, n) for n in NAMES + SETTINGS}
old_state = {n: getattr(old, n) for n in NAMES}
old_state.update(NORM_ROWS=4, PARTIAL_PROGRAMS=256, NORM_BACKWARD_WARPS=8, RELU_ROWS=16, RELU_COLUMNS=512,
                 RELU_PROGRAMS=512)
print("new settings", {n: new[n] for n in SETTINGS}, flush=True)
label = "compiled reduce-overhead loss-function"
x = torch.randint(3, 32000, (16, 512), device="cuda")
result = {"train": [], "autocast": []}


def autocast_row(fused: bool) -> None:
    modeling.FUSED_NORM_DEVICES = ("cuda",) if fused else ()
    model = sp.build().float().train()
    loss_fn = torch.compile(training_loss(model), options={"triton.cudagraphs": True})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(input_ids=x, labels=x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    ms = host_us(step, 10) / 1e3
    gpu_ms, top = gpu_busy(step, 3, 30)
    row = dict(fused_norm=fused, back_to_back_ms=round(ms, 2), gpu_ms=round(gpu_ms, 2), tok_s=round(8192 / ms * 1e3),
               top=top)
    result["autocast"].append(row)
    print(f"autocast fp32 params, fused add+norm {fused}: {row['back_to_back_ms']} ms back to back, "
          f"{row['gpu_ms']} ms GPU, {row['tok_s']} tok/s", flush=True)
    sp.print_top(top[:14])
    modeling.FUSED_NORM_DEVICES = ("cuda",)


for which in sys.argv[1].split(","):
    torch._dynamo.reset()
    if which.startswith("ac-"):
        for n, v in new.items():
            setattr(k, n, v)
        autocast_row(which == "ac-on")
    else:
        for n, v in (new if which == "new" else old_state).items():
            setattr(k, n, v)
        print(f"--- {which} kernels", flush=True)
        sp.train_row(result, x, label, sp.TRAIN_VARIANTS[label], 30)
        result["train"][-1]["kernels"] = which
    torch.cuda.empty_cache()
json.dump(result, open(os.path.join(sys.argv[2], "exp_step.json"), "w"), indent=1)
