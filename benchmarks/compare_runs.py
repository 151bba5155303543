"""Compares the training runs of benchmarks/multi_gpu.sh (loss curves, eval loss, tokens/s) with the 1-GPU run.

multi_gpu.sh calls it to build the runs' shared data cache once (`prepare`), then to compare the runs' metrics
and print one table (`report`); on the GPU machine run `bash benchmarks/multi_gpu.sh`, not this. Its commands:

    python3 benchmarks/compare_runs.py prepare --config PRESET.yaml --train_files ... --cache_dir DIR [train flags]
    python3 benchmarks/compare_runs.py report --runs RUNS.tsv --out multi_gpu.json [--reference 1gpu]
    ACCELERATE_USE_CPU=true accelerate launch --config_file configuration/accelerate/fsdp.yaml --num_processes 2 \\
        benchmarks/compare_runs.py train-fsdp-cpu [train flags]

`prepare` trains (or loads) the tokenizer and packs the blocks exactly as `alibi-lm train` does with the same
flags, so the training runs that follow find everything in the cache. `report` reads each run's metrics.jsonl
(rows of RUNS.tsv: name, launch config, processes, per-device batch, exit code, wall seconds, output folder, log)
and writes per-run summaries and the comparisons against the reference run to one JSON file, then prints a table.
`train-fsdp-cpu` is `alibi-lm train` with Accelerate's FSDP2 path forced on CPU processes, for the dry run and the
tests: on the CPU Accelerate otherwise runs an FSDP config as plain DDP over gloo (MULTI_CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCALING_TARGET = 1.8  # tokens/s of 2 GPUs at the same per-device batch, over one GPU's


def prepare(argv: list[str]) -> int:
    from accelerate import Accelerator

    from modeling_alibi.training import get_dataloaders, get_tokenizer, parse_args

    args = parse_args(argv)
    accelerator = Accelerator(cpu=True)  # one plain process: no launcher, nothing distributed
    start = time.perf_counter()
    tokenizer = get_tokenizer(accelerator, args)
    train, validation = get_dataloaders(accelerator, args, tokenizer)
    info = {
        "seconds": round(time.perf_counter() - start, 1),
        "vocab": len(tokenizer),
        "seq_len": args.seq_len,
        "train_blocks": len(train.dataset),
        "validation_blocks": len(validation.dataset) if validation is not None else 0,
        "train_files": [Path(f).name for f in args.train_files],
    }
    print("prepared " + json.dumps(info))
    return 0


def train_fsdp_on_cpu(argv: list[str]) -> int:
    """Run `alibi-lm train` under `accelerate launch` (FSDP config, ACCELERATE_USE_CPU=true) with FSDP2 forced on.

    Accelerate turns FSDP on only for GPU-like process groups; here each Accelerator is switched to FSDP after
    its gloo group is up, with the plugin read from the FSDP_* variables that the launcher set from the config.
    So fully_shard, the optimizer's switch to sharded parameters, clipping, evaluation and the export all run.
    """
    import accelerate
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from modeling_alibi import training

    original_init = accelerate.Accelerator.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if self.state.distributed_type != DistributedType.MULTI_CPU:
            raise RuntimeError("train-fsdp-cpu is for CPU processes: launch with ACCELERATE_USE_CPU=true, 2+ of them.")
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # each AcceleratorState() copies it
        self.state.distributed_type = DistributedType.FSDP
        plugin = FullyShardedDataParallelPlugin()
        if self.state.mixed_precision != "no":  # as AcceleratorState does for GPUs: bf16 params, reduce, output
            plugin.set_mixed_precision(self.state.mixed_precision)
        self.state.fsdp_plugin = plugin

    accelerate.Accelerator.__init__ = init
    return training.main(argv)


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of a metrics.jsonl; missing file -> empty lists."""
    if not path.is_file():
        return [], []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "train/loss" in r], [r for r in rows if "eval/loss" in r]


def summarize(row: dict[str, str]) -> dict:
    train, evals = read_metrics(Path(row["output_dir"], "metrics.jsonl"))
    processes, per_device = int(row["processes"]), int(row["per_device_batch"])
    rate = [r["train/tokens_per_s"] for r in train[1:]]  # the first interval holds start-up and compilation
    log = Path(row["log"])
    mode = re.search(r"parameters, \d+ processes \((\w+)\)", log.read_text(errors="replace")) if log.is_file() else None
    rc = int(row["rc"])
    status = "ok" if rc == 0 else "skipped" if rc == -1 else "timeout" if rc in (124, 137) else f"failed (rc {rc})"
    if rc != 0 and train:
        status += ", partial metrics"
    return {
        "status": status,
        "exit_code": rc,
        "wall_s": float(row["wall_s"]),
        "log": log.name,
        "config": {
            "launch_config": row["launch_config"],
            "distributed_type": mode.group(1) if mode else None,  # as the run's Accelerator reported it
            "num_processes": processes,
            "per_device_train_batch_size": per_device,
            "global_batch": processes * per_device,
        },
        "steps": train[-1]["step"] if train else 0,
        "final_train_loss": train[-1]["train/loss"] if train else None,
        "eval_loss": evals[-1]["eval/loss"] if evals else None,
        "eval_step": evals[-1]["step"] if evals else None,
        "median_tokens_per_s": statistics.median(rate) if rate else None,
        "tokens_per_s_intervals": len(rate),
        "loss_curve": [[r["step"], r["train/loss"]] for r in train],
    }


def compare_curves(run: dict, reference: dict) -> dict | None:
    mine, theirs = dict(map(tuple, run["loss_curve"])), dict(map(tuple, reference["loss_curve"]))
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    diffs = {step: abs(mine[step] - theirs[step]) for step in common}
    worst = max(diffs, key=diffs.get)
    result = {
        "compared_steps": len(common),
        "max_abs_loss_diff": diffs[worst],
        "max_abs_loss_diff_step": worst,
        "mean_abs_loss_diff": sum(diffs.values()) / len(diffs),
        "final_train_loss_diff": mine[common[-1]] - theirs[common[-1]],
        "eval_loss_diff": None,
    }
    if run["eval_loss"] is not None and reference["eval_loss"] is not None:
        result["eval_loss_diff"] = run["eval_loss"] - reference["eval_loss"]
    return result


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def environment() -> dict:
    info = {}
    try:
        import accelerate
        import torch
        import transformers

        info = {"torch": torch.__version__, "transformers": transformers.__version__,
                "accelerate": accelerate.__version__,
                "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    except Exception as error:  # the report must not fail over this
        info["error"] = repr(error)
    return info


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compare_runs.py report")
    parser.add_argument("--runs", type=Path, required=True, help="TSV written by multi_gpu.sh")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--reference", default="1gpu", help="the run the others are compared with")
    parser.add_argument("--same-batch", default="ddp,fsdp", help="runs at the reference's global batch")
    parser.add_argument("--scaling", default="ddp_b64", help="the run at the reference's per-device batch")
    parser.add_argument("--meta", type=json.loads, default={}, help="JSON object stored under 'setup'")
    args = parser.parse_args(argv)

    header = args.runs.read_text().splitlines()[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in args.runs.read_text().splitlines()[1:] if line]
    runs = {row["name"]: summarize(row) for row in rows}
    reference = runs.get(args.reference)
    comparisons: dict = {}
    for name in args.same_batch.split(","):
        if reference and name in runs:
            comparisons[f"{name}_vs_{args.reference}"] = compare_curves(runs[name], reference)
    if reference and args.scaling in runs:
        value = ratio(runs[args.scaling]["median_tokens_per_s"], reference["median_tokens_per_s"])
        comparisons["ddp_scaling"] = {
            "runs": f"{args.scaling} / {args.reference} (same per-device batch, 2 vs 1 process)",
            "tokens_per_s_ratio": value,
            "target": SCALING_TARGET,
            "meets_target": None if value is None else value >= SCALING_TARGET,
        }
    for name in args.same_batch.split(","):  # same global batch on 2 processes: how much faster than one
        if reference and name in runs:
            comparisons[f"{name}_speedup_same_global_batch"] = ratio(
                runs[name]["median_tokens_per_s"], reference["median_tokens_per_s"])
    notes = ("FSDP2 under Accelerate runs parameters, gradient reduction and the model's outputs (the loss too) in "
             "bf16 when mixed_precision is bf16, so its logged losses are bf16-rounded (steps of 1/32 between 4 and "
             "8); the 1-GPU and DDP runs autocast with fp32 weights, gradients and loss.")
    result = {"setup": {**args.meta, "environment": environment()}, "runs": runs, "comparisons": comparisons,
              "notes": notes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"{'run':<8} {'launch (type)':<32} {'procs x batch':>13} {'steps':>5} {'train loss':>10} {'eval loss':>9} "
          f"{'tok/s (median)':>14} {'wall s':>6}  status")
    for name, run in runs.items():
        config = run["config"]
        launch = f"{Path(config['launch_config']).name} ({config['distributed_type'] or '?'})"
        print(f"{name:<8} {launch:<32} "
              f"{config['num_processes']:>5} x {config['per_device_train_batch_size']:<5}"
              f" {run['steps']:>5} {fmt(run['final_train_loss'], '.4f'):>10} {fmt(run['eval_loss'], '.4f'):>9} "
              f"{fmt(run['median_tokens_per_s'], ',.0f'):>14} {run['wall_s']:>6.0f}  {run['status']}")
    for key, value in comparisons.items():
        if isinstance(value, dict) and "max_abs_loss_diff" in value:
            print(f"{key}: max |train loss diff| {value['max_abs_loss_diff']:.4f} at step "
                  f"{value['max_abs_loss_diff_step']} (mean {value['mean_abs_loss_diff']:.4f} over "
                  f"{value['compared_steps']} points), final train diff {value['final_train_loss_diff']:+.4f}, "
                  f"eval diff {fmt(value['eval_loss_diff'], '+.4f')}")
        elif isinstance(value, dict) and "tokens_per_s_ratio" in value:
            print(f"ddp_scaling: {value['runs']}: " + ("no data" if value["tokens_per_s_ratio"] is None else
                  f"{value['tokens_per_s_ratio']:.2f}x (target >= {value['target']}: {value['meets_target']})"))
        elif value is None or isinstance(value, float):
            print(f"{key}: " + ("no data" if value is None else f"{value:.2f}x"))
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"prepare": prepare, "report": report, "train-fsdp-cpu": train_fsdp_on_cpu}
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
