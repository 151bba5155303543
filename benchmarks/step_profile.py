"""Where a training step and a decode step spend their time, for the WikiText-103-size model (model_bench sizes).

Diagnostics behind docs/benchmarks.md, in one process on one GPU:

  train    one fwd+bwd+fused-AdamW step at L=512 x 16 (bf16): wall ms with a sync after each step, ms per step
           back to back (no sync between steps, as model_bench times them; tok/s comes from this), GPU-busy ms
           (profiler), the first (compiling) step's seconds, the top kernels; over three back-to-back steps, the
           span from first kernel to last, the time some kernel ran, the gaps between kernels and the longest ones;
           the host operators and CUDA runtime calls with the most CPU time of their own in one step;
           the same for `torch.compile(model)`, with dynamo's graph and graph-break count (torch._dynamo.explain).
  decode   batch-1 greedy steps after a 2,048-token prompt into a StaticCache: eager steps, steps compiled as
           generate() compiles them (mode="reduce-overhead": CUDA graphs), and the whole generate() call; wall
           ms per token and GPU-busy ms per token. A GPU busy far less than the wall is host overhead.
  graph    `graph_generate` at 2,048 and 65,536 tokens of context (--contexts), for each setting in GRAPH_VARIANTS:
           compile time, prefill time (a 1-token call), per-token time (the difference of a 129-token and a
           1-token call, both reusing the kept graph) and the compiled step's GPU-busy time, launches and kernels.
  train    also `torch.compile(model, mode="reduce-overhead")` (CUDA graphs for forward and backward); other
           inductor settings from TRAIN_VARIANTS with --train-variants, and four experiments: fc1 and its ReLU
           as separate kernels (compiled models otherwise fuse them, alibi_linear_relu.py), q, k and v in one
           GEMM (`_project_fused`),
           the whole step, optimizer included, captured as one CUDA graph (`alibi_decoding._captured`), and the
           loss compiled as a function (`training.loop.training_loss`, what alibi-lm train compiles) instead
           of the module, with the head fused into the loss (`skip_logits`, with alibi_triton_loss's kernel or
           inductor's plain ops) or on full logits; also inductor's own Triton-kernel tuning (coordinate
           descent, pointwise autotuning).
  prefill  a 1-token `graph_generate` call after a 2,048-token prompt: wall and GPU-busy ms, top kernels, and
           the host operators with the most CPU time of their own. Timed after three calls, so the prompt
           replays the CUDA graph its shape's second call captured (alibi_decoding._Decoder.start).

Prints each row (and its top kernels) as it is measured and writes DIR/step_profile.json after each part. On
the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/step_profile.py [--parts train,decode,graph] [--variants default,...] \\
        [--train-variants eager,compiled,...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch._functorch.config  # noqa: E402
import torch._inductor.config  # noqa: E402
from transformers import StaticCache  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modeling_alibi import AlibiConfig, AlibiForCausalLM, alibi_linear_relu, alibi_loss  # noqa: E402
from modeling_alibi import alibi_decoding as decoding  # noqa: E402
from modeling_alibi import alibi_fused_decode as fused_decode  # noqa: E402
from modeling_alibi import modeling_alibi as modeling  # noqa: E402
from modeling_alibi.training.loop import training_loss  # noqa: E402

from cuda_timing import gpu_busy, gpu_timeline, host_busy, host_us  # noqa: E402  (beside this file)

SIZES = dict(vocab_size=32000, hidden_size=1024, num_hidden_layers=16, num_attention_heads=8, intermediate_size=4096)


def build(**overrides) -> AlibiForCausalLM:
    config = AlibiConfig(**SIZES, hidden_dropout=0.0, train_seq_len=512, **overrides)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AlibiForCausalLM(config)
    return model.to(torch.bfloat16)


def timed(fn, reps: int) -> float:
    """Median wall ms of fn() with a sync after each call."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def print_top(kernels: list) -> None:
    """One line per entry of gpu_busy's (or the host profile's) list: ms, calls, name."""
    for k in kernels:
        print(f"    {k['ms']:8.3f} ms  x{k['calls']:<4} {k['name']}")


# label: torch.compile's inductor options, or None for no compile. {"triton.cudagraphs": True} is what
# mode="reduce-overhead" sets (torch.compile takes a mode or options, not both).
TRAIN_VARIANTS = {
    "eager": None,
    "compiled": {},
    "compiled reduce-overhead": {"triton.cudagraphs": True},
    # Programmatic dependent launch: each Triton kernel may start while the one before it finishes.
    "compiled pdl": {"triton.enable_pdl": True},
    "compiled reduce-overhead pdl": {"triton.cudagraphs": True, "triton.enable_pdl": True},
    # Inductor's Triton matmul templates autotuned against cuBLAS for each shape (compiles for minutes).
    "compiled max-autotune-no-cudagraphs": {"max_autotune": True, "coordinate_descent_tuning": True},
    # Experiments (see EXPERIMENTS): the whole step as one CUDA graph; stacked q, k and v; inductor options; the
    # loss compiled as a function; fc1 and its ReLU as separate kernels (compiled models fuse them since session 14).
    "compiled reduce-overhead fused-qkv": {"triton.cudagraphs": True},
    "whole-step graph": {},
    "whole-step graph fused-qkv": {},
    # LayerNorm's weight and bias gradients without inductor's mix-order reduction, which leaves each one's last
    # sum to an ATen reduce (2 x 33 launches, about 0.7 ms a step on an H200).
    "compiled reduce-overhead no-mix-order": {"triton.cudagraphs": True, "triton.mix_order_reduction": False},
    "whole-step graph no-mix-order": {"triton.mix_order_reduction": False},
    # The step's loss compiled as a function (training.loop.training_loss): no logits output, no zero gradient.
    "compiled loss-function": {},
    "compiled reduce-overhead loss-function": {"triton.cudagraphs": True},
    "whole-step graph loss-function": {},
    "compiled reduce-overhead loss-function no-mix-order": {
        "triton.cudagraphs": True,
        "triton.mix_order_reduction": False,
    },
    # Inductor's own kernel tuning: coordinate descent over each Triton kernel's block sizes and warps, or its
    # autotuning of pointwise and reduction configs (neither searches the GEMMs, which stay cuBLAS).
    "compiled reduce-overhead loss-function cdt": {"triton.cudagraphs": True, "coordinate_descent_tuning": True},
    "compiled reduce-overhead loss-function autotune-pointwise": {
        "triton.cudagraphs": True,
        "max_autotune_pointwise": True,
    },
    "compiled reduce-overhead loss-function separate-relu": {"triton.cudagraphs": True},
    # The mix-order reduction's split: inductor picks 16 rows per program at 8,192 rows on 132 SMs, leaving a
    # (512, hidden) workspace for the ATen sum (66 launches, ~0.75 ms); a larger split leaves less to sum. Neither
    # this nor the autotuned split moved the step beyond run-to-run noise (docs/benchmarks.md, fifteenth session).
    "compiled reduce-overhead loss-function mix-order-autotune": {
        "triton.cudagraphs": True,
        "triton.mix_order_reduction_autotune_split_size": True,
    },
    "compiled reduce-overhead loss-function mix-order-split-64": {
        "triton.cudagraphs": True,
        "triton.mix_order_reduction_split_size": 64,
    },
    # The loss function before the head was fused into the loss (session 16): full logits, F.cross_entropy; and
    # the fused head with inductor's plain ops for the loss rows instead of alibi_triton_loss's kernel.
    "compiled reduce-overhead loss-function full-logits": {"triton.cudagraphs": True},
    "compiled reduce-overhead loss-function plain-ops-loss": {"triton.cudagraphs": True},
    # Session 17: the second residual add and LayerNorm of each layer as alibi_norm.add_layer_norm, and fc1's ReLU
    # backward with its bias gradient as one kernel (alibi_triton_norm.py); each turned off, and both.
    "compiled reduce-overhead loss-function no-norm-kernels": {"triton.cudagraphs": True},
    "compiled reduce-overhead loss-function no-add-norm": {"triton.cudagraphs": True},
    "compiled reduce-overhead loss-function no-relu-kernel": {"triton.cudagraphs": True},
}
# What the experiment labels change besides inductor's options.
EXPERIMENTS = {
    "compiled reduce-overhead fused-qkv": dict(fused_qkv=True),
    "whole-step graph": dict(whole_step=True),
    "whole-step graph fused-qkv": dict(fused_qkv=True, whole_step=True),
    "whole-step graph no-mix-order": dict(whole_step=True),
    "compiled loss-function": dict(loss_function=True),
    "compiled reduce-overhead loss-function": dict(loss_function=True),
    "whole-step graph loss-function": dict(loss_function=True, whole_step=True),
    "compiled reduce-overhead loss-function no-mix-order": dict(loss_function=True),
    "compiled reduce-overhead loss-function cdt": dict(loss_function=True),
    "compiled reduce-overhead loss-function autotune-pointwise": dict(loss_function=True),
    "compiled reduce-overhead loss-function separate-relu": dict(loss_function=True, separate_relu=True),
    "compiled reduce-overhead loss-function mix-order-autotune": dict(loss_function=True),
    "compiled reduce-overhead loss-function mix-order-split-64": dict(loss_function=True),
    "compiled reduce-overhead loss-function full-logits": dict(loss_function=True, full_logits=True),
    "compiled reduce-overhead loss-function plain-ops-loss": dict(loss_function=True, rows_kernel=False),
    "compiled reduce-overhead loss-function no-norm-kernels": dict(loss_function=True, add_norm=False,
                                                                   relu_kernel=False),
    "compiled reduce-overhead loss-function no-add-norm": dict(loss_function=True, add_norm=False),
    "compiled reduce-overhead loss-function no-relu-kernel": dict(loss_function=True, relu_kernel=False),
}


def _project_fused(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """AlibiAttention._project (with biases) as one GEMM on weights stacked at every call (6 MB per layer;
    the stack's backward splits the gradient). Its views have a stride of 3 * hidden, so cuDNN's op copies them."""
    attention = (self.q_proj, self.k_proj, self.v_proj)
    weight = torch.cat([proj.weight for proj in attention])  # (3 * hidden, hidden)
    bias = torch.cat([proj.bias for proj in attention])  # (3 * hidden,)
    return torch.nn.functional.linear(hidden_states, weight, bias).chunk(3, dim=-1)  # views of (b, q, 3 * hidden)


def train_part(result: dict, variants: list[str], top: int = 12) -> None:
    x = torch.randint(3, 32000, (16, 512), device="cuda")
    for label in variants:
        torch._dynamo.reset()
        train_row(result, x, label, TRAIN_VARIANTS[label], top)  # the model and its optimizer are freed on return
        torch.cuda.empty_cache()


def train_row(result: dict, x: torch.Tensor, label: str, options: dict | None, top: int = 12) -> None:
    experiment = EXPERIMENTS.get(label, {})
    model = build().train()
    for layer in model.model.layers:
        if experiment.get("fused_qkv"):
            layer.self_attn._project = _project_fused.__get__(layer.self_attn)
        if experiment.get("separate_relu"):  # AlibiMLP's forward before compiled training fused fc1 and ReLU
            layer.mlp.fuse_relu = False
    row = dict(model=label)
    if label == "compiled":  # explain compiles too; the reset keeps its graphs out of the timed model's
        explained = torch._dynamo.explain(model)(input_ids=x, labels=x)
        row.update(graphs=explained.graph_count, graph_breaks=explained.graph_break_count,
                   break_reasons=[str(r.reason)[:200] for r in explained.break_reasons][:8])
        torch._dynamo.reset()
    # The loss alone compiled as a function, as alibi-lm train compiles its step (training.loop.training_loss), or
    # the (compiled) module, whose graph also outputs the logits and so takes a zero gradient for them.
    alibi_loss.ROWS_KERNEL_DEVICES = ("cuda",) if experiment.get("rows_kernel", True) else ()
    modeling.FUSED_NORM_DEVICES = ("cuda",) if experiment.get("add_norm", True) else ()
    alibi_linear_relu.RELU_KERNEL_DEVICES = ("cuda",) if experiment.get("relu_kernel", True) else ()
    if experiment.get("loss_function") and experiment.get("full_logits"):
        step_loss = torch.compile(lambda **batch: model(**batch, use_cache=False).loss, options=options)
    elif experiment.get("loss_function"):
        step_loss = torch.compile(training_loss(model), options=options)
    else:
        run = torch.compile(model, options=options) if options is not None else model

        def step_loss(**batch: torch.Tensor) -> torch.Tensor:
            return run(**batch).loss

    whole = experiment.get("whole_step", False)
    # A captured optimizer step must keep its state on the GPU and read no host values (capturable=True).
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-4, device="cuda") if whole else 1e-4, fused=True,
                            capturable=whole)

    def step():
        step_loss(input_ids=x, labels=x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        start = time.perf_counter()
        step()  # compiles
        torch.cuda.synchronize()
        row["first_step_s"] = round(time.perf_counter() - start, 1)
        for _ in range(2):
            step()
        if whole:  # two more steps on a side stream, then the step (zero_grad included) captured as one graph
            step = decoding._captured(step)[0].replay
    except Exception as error:  # noqa: BLE001 - a diagnostic: record the failure and go on
        result.setdefault("train", []).append(dict(model=label, error=repr(error)[:400]))
        print(f"train {label}: failed {error!r:.400}", flush=True)
        return
    for _ in range(3):
        step()
    row["wall_ms"] = round(timed(step, 8), 2)
    # No sync between steps, as model_bench times them: a step's launches hide behind the last step's kernels.
    row["back_to_back_ms"] = round(host_us(step, 10) / 1e3, 2)
    row["gpu_ms"], row["top_kernels"] = gpu_busy(step, 3, top)
    row["gpu_ms"] = round(row["gpu_ms"], 2)
    row["timeline"] = gpu_timeline(step, 3, top)  # back to back: the span, the kernels' union and the gaps
    # Where the host's time goes: a step whose host time exceeds its GPU time leaves the GPU waiting.
    row["top_host"] = host_busy(step)
    row["tok_s"] = round(16 * 512 / row["back_to_back_ms"] * 1e3)
    result.setdefault("train", []).append(row)
    print(f"train {label}: {row['wall_ms']} ms wall (synced), {row['back_to_back_ms']} ms back to back, "
          f"{row['gpu_ms']} ms GPU, {row['tok_s']} tok/s back to back, first step {row['first_step_s']} s",
          {k: row[k] for k in ("graphs", "graph_breaks", "break_reasons") if k in row}, flush=True)
    t = row["timeline"]
    print(f"  back to back: {t['span_ms']} ms span, {t['busy_ms']} ms busy, {t['gap_ms']} ms in gaps between "
          f"{t['launches']} launches ({t['gaps_over_5us']} gaps over 5 us)")
    print_top(row["top_kernels"])
    for gap in t["top_gaps"]:
        print(f"    gap {gap['us']:8.1f} us  after {gap['after']}  before {gap['before']}")
    print("  host, self CPU time (one step):")
    print_top(row["top_host"][:top])


def decode_part(result: dict) -> None:
    model = build().eval()
    prompt, steps = 2048, 64
    ids = torch.randint(3, 32000, (1, prompt), device="cuda")
    total = prompt + 3 * steps + 16
    rows = result.setdefault("decode", [])
    for label in ("eager", "compiled"):
        cache = StaticCache(model.config, max_cache_len=total)
        logits, cache = model.prefill(ids, cache=cache)
        mask = torch.zeros(1, total, dtype=torch.long, device="cuda")
        mask[:, :prompt] = 1
        step_model = torch.compile(model, mode="reduce-overhead") if label == "compiled" else model
        state = dict(seen=prompt, token=logits.argmax(-1, keepdim=True))

        def step(mask=mask, state=state, step_model=step_model, cache=cache):  # bound: this label's
            mask[:, state["seen"]] = 1
            state["seen"] += 1
            with torch.no_grad():
                out = step_model(state["token"], attention_mask=mask, cache=cache, use_cache=True,
                                 logits_to_keep=1).logits
            state["token"] = out[:, -1].argmax(-1, keepdim=True)

        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        for _ in range(4):
            step()
        wall = timed(step, steps)
        busy, kernels = gpu_busy(step, 8, top=8)
        rows.append(dict(step=label, first_s=round(first, 2), wall_ms=round(wall, 3), gpu_ms=round(busy, 3),
                         top_kernels=kernels))
        print(f"decode {label}: first {first:.2f} s, {wall:.3f} ms/token wall, {busy:.3f} ms GPU", flush=True)
        print_top(kernels)
    for cache_implementation in ("static", None):
        kwargs = dict(max_new_tokens=128, min_new_tokens=128, do_sample=False,
                      cache_implementation=cache_implementation)
        model.generate(ids, **kwargs)  # compiles (static) and warms up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, **kwargs)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rows.append(dict(step=f"generate {cache_implementation or 'dynamic'}", tok_s=round(128 / dt, 1)))
        print(f"generate {cache_implementation or 'dynamic'}: {128 / dt:.1f} tok/s (prompt included)", flush=True)


COMBO = {"combo_kernels": True, "combo_kernels_pointwise_only": True}
# label: (inductor options, batch-1 linear layers as inductor reductions: decoding.ROW_MATMULS_AS_REDUCTIONS, the
# twenty-fifth session's features joined by "+": "fused", alibi_fused_decode's layer (else the layers' own forward);
# "pdl", its kernels with programmatic dependent launch (alibi_triton_gemv.LAUNCH_PDL); "attn-pdl", the decode
# attention's too (alibi_triton_decode.LAUNCH_PDL); "choice", the greedy argmax compiled (decoding.COMPILE_CHOICE)).
GRAPH_VARIANTS = {
    "default": ({}, False, ""),
    "coordinate descent": ({"coordinate_descent_tuning": True}, False, ""),
    "max-autotune": ({"max_autotune": True, "coordinate_descent_tuning": True}, False, ""),
    # Horizontal fusion of independent kernels (the key and value cache writes of a layer, for one). Pointwise
    # only: with reductions too, it fused the 65,536-key position cumsum unsplit (0.018 -> 0.364 ms per step).
    "combo": (COMBO, False, ""),
    # The setting shipped until the twenty-fifth session: combo kernels, and each linear layer one reduction kernel
    # with its epilogue fused.
    "combo+rows": (COMBO, True, ""),
    # The same, and each decoder layer as alibi_fused_decode's kernels, without and with PDL, and so on.
    "combo+rows+fused": (COMBO, True, "fused"),
    "combo+rows+fused+pdl": (COMBO, True, "fused+pdl"),
    "combo+rows+fused+pdl+attn-pdl": (COMBO, True, "fused+pdl+attn-pdl"),
    "combo+rows+fused+pdl+attn-pdl+choice": (COMBO, True, "fused+pdl+attn-pdl+choice"),
    "combo+rows+fused+pdl+choice": (COMBO, True, "fused+pdl+choice"),
    "combo+rows+coordinate descent": ({**COMBO, "coordinate_descent_tuning": True}, True, ""),
    # Programmatic dependent launch: each inductor kernel may start while the one before it finishes.
    "combo+rows+pdl": ({**COMBO, "triton.enable_pdl": True}, True, ""),
}


def graph_part(result: dict, variants: list[str], contexts: tuple[int, ...] = (2048, 65536)) -> None:
    from modeling_alibi import alibi_triton_decode as decode_kernel  # need triton: here, not where this file loads
    from modeling_alibi import alibi_triton_gemv as gemv

    model = build().eval()
    rows = result.setdefault("graph", [])
    # Compile each variant afresh: the caches key on the traced graph and inductor's options, not on the
    # decomposition table, so a second variant would get the first one's kernels.
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    for label in variants:
        options, row_reductions, features = GRAPH_VARIANTS[label]
        features = set(features.split("+"))
        decoding.release_decoders()
        torch._dynamo.reset()
        decoding.COMPILE_OPTIONS = options
        decoding.ROW_MATMULS_AS_REDUCTIONS = row_reductions
        fused_decode.FUSED_DECODE_DEVICES = ("cuda",) if "fused" in features else ()
        gemv.LAUNCH_PDL, decode_kernel.LAUNCH_PDL = "pdl" in features, "attn-pdl" in features
        decoding.COMPILE_CHOICE = "choice" in features
        for context in contexts:
            graph_row(rows, model, label, options, features, context)  # its inputs are freed on return
    decoding.release_decoders()


def graph_row(rows: list, model: AlibiForCausalLM, label: str, options: dict, features: set[str], context: int) -> None:
    ids = torch.randint(3, 32000, (1, context), device="cuda")
    slots = context + 129 + 16  # 16 spare slots for the profiled steps below

    def call(new: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        decoding.graph_generate(model, ids, new, max_cache_len=slots)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    row = dict(variant=label, options=options, row_reductions=decoding.ROW_MATMULS_AS_REDUCTIONS,
               features=sorted(features - {""}), context=context)
    try:
        row["first_call_s"] = round(call(4), 2)  # compiles and captures
        one = min(call(1) for _ in range(3))
        full = min(call(129) for _ in range(3))
    except Exception as error:  # noqa: BLE001 - a diagnostic: record the failure and go on
        row["error"] = repr(error)[:400]
        rows.append(row)
        print(f"graph {label} {context}: failed {error!r:.400}", flush=True)
        return
    per_token = (full - one) / 128
    # A 128-token call, as model_bench times it: the prompt and first token, then 127 replays.
    row.update(prefill_ms=round(1e3 * one, 2), per_token_ms=round(1e3 * per_token, 3),
               tok_s_128=round(128 / (one + 127 * per_token), 1))
    decoder = next(iter(decoding._DECODERS.values()))  # 16 free slots are left after the 129-token call
    busy, kernels = gpu_busy(decoder.one_step, 8, top=1000)  # every kernel, for the launch count
    row.update(gpu_ms=round(busy, 3), launches_per_step=sum(k["calls"] for k in kernels), top_kernels=kernels)
    rows.append(row)
    print(f"graph {label} {context}: first {row['first_call_s']} s, prefill+first token {row['prefill_ms']} "
          f"ms, {row['per_token_ms']} ms/token, step GPU {row['gpu_ms']} ms in {row['launches_per_step']} "
          "launches", flush=True)
    print_top(kernels[:16])


def prefill_part(result: dict) -> None:
    """A 1-token `graph_generate` call after a 2,048-token prompt (the decoder and the captured prompt kept from
    the first calls): wall ms, GPU-busy ms, the top kernels and the top host operators by their own CPU time."""
    model = build().eval()
    ids = torch.randint(3, 32000, (1, 2048), device="cuda")

    def call():
        decoding.graph_generate(model, ids, 1, max_cache_len=2048 + 129)

    for _ in range(3):
        call()
    wall = timed(call, 10)
    busy, kernels = gpu_busy(call, 4)
    host = host_busy(call)
    result["prefill"] = dict(wall_ms=round(wall, 3), gpu_ms=round(busy, 3), top_kernels=kernels, top_host=host)
    print(f"prefill 2,048 + first token: {wall:.3f} ms wall, {busy:.3f} ms GPU", flush=True)
    print_top(kernels)
    print("  host, self CPU time:")
    print_top(host)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="train,decode")
    parser.add_argument("--out", default=os.environ.get("OUT", "outputs"))
    parser.add_argument("--variants", default="default", help=f"graph part: any of {','.join(GRAPH_VARIANTS)}")
    parser.add_argument("--train-variants", default="eager,compiled,compiled reduce-overhead",
                        help=f"train part: any of {','.join(TRAIN_VARIANTS)}")
    parser.add_argument("--top", type=int, default=12, help="train part: how many of the busiest kernels to list")
    parser.add_argument("--contexts", default="2048,65536", help="graph part: prompt lengths, comma-separated")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("step_profile.py needs a CUDA GPU.")
    torch._dynamo.config.cache_size_limit = 64
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__)
    os.makedirs(args.out, exist_ok=True)
    for part in args.parts.split(","):
        if part == "graph":
            graph_part(result, args.variants.split(","), tuple(int(n) for n in args.contexts.split(",")))
        elif part == "train":
            train_part(result, args.train_variants.split(","), args.top)
        else:
            {"decode": decode_part, "prefill": prefill_part}[part](result)
        with open(os.path.join(args.out, "step_profile.json"), "w") as f:  # after each part: a cut-off run keeps it
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
