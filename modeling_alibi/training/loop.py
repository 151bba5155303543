"""The Accelerate training loop: `get_dataloaders`, `build_model`, `train_loop`, `train`, and `main` (`alibi-lm train`).

    accelerate launch --config_file configuration/accelerate/single_gpu.yaml \\
        scripts/train.py --config configuration/train/gutenberg-small-h100.yaml --max_steps 100
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_scheduler,
)

from ..configuration_alibi import AlibiConfig
from ..errors import UserError
from ..hub import ExportVerificationError, verify_export
from ..io_utils import LOCK_NAME, atomic_directory, atomic_write_text, cleanup_staging, disk_full_guard, lock_directory
from ..resources import preset_names, resource_path
from ..tokenization import save_tokenizer
from .arguments import TrainArguments, parse_args
from .checkpoint import TrainState, check_supported, resume_from_checkpoint, save_checkpoint
from .data import TextSource, build_lm_dataset, collate_blocks, expand_files, load_or_train_tokenizer

try:
    from torch.distributed.fsdp import FSDPModule  # FSDP2 (fully_shard), torch >= 2.6
except ImportError:  # pragma: no cover - older torch or a build without distributed
    FSDPModule = None

logger = get_logger(__name__)

# What makes a folder hold a run: a fresh run refuses it without --resume or --overwrite.
RUN_ENTRIES = ("metrics.jsonl", "checkpoints", "final", "tensorboard")


class OutputDirInUseError(UserError):
    """The output folder already holds a run and neither --resume nor --overwrite was given."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; nothing from that step on is saved."""


def make_accelerator(args: TrainArguments) -> Accelerator:
    """The Accelerator of a run; distributed settings come from `accelerate launch`."""
    return Accelerator(
        mixed_precision=args.mixed_precision,
        # Accumulation windows run across epoch ends, so every update sees the same number of micro-batches and
        # step N always covers micro-batches N*k .. N*k+k-1: what makes resuming mid-epoch exact.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        # Epoch e is shuffled with seed + e on every process: the same order however many processes read it.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
    )


def _text_source(args: TrainArguments, split: Literal["train", "validation"]) -> TextSource | None:
    files = args.train_files if split == "train" else args.validation_files
    if files:
        return TextSource(files=expand_files(files), text_mode=args.text_mode, split=split)
    hub_split = args.train_split if split == "train" else args.validation_split
    if args.dataset_name and hub_split:
        return TextSource(hub_name=args.dataset_name, hub_config=args.dataset_config_name, split=hub_split)
    return None


def _pretrained_dir(model: str) -> Path | None:
    path = Path(model)
    return path if (path / "config.json").is_file() else None


def get_tokenizer(accelerator: Accelerator, args: TrainArguments) -> PreTrainedTokenizerBase:
    """The given tokenizer, else the pretrained model's, else one trained on the training text (cached)."""
    if args.tokenizer:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    pretrained = _pretrained_dir(args.model)
    if pretrained and (pretrained / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(pretrained)
    with accelerator.main_process_first():  # one process trains and caches, the others then load the cache
        return load_or_train_tokenizer(
            _text_source(args, "train"), args.tokenizer_type, args.vocab_size, args.cache_dir
        )


def get_dataloaders(
    accelerator: Accelerator, args: TrainArguments, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[DataLoader, DataLoader | None]:
    """Unprepared train and validation (None without validation text) loaders of packed (b, L) blocks."""
    tokenizer = tokenizer or get_tokenizer(accelerator, args)
    blocks = {}
    with accelerator.main_process_first():  # the main process builds the cache, the others load it
        for split in ("train", "validation"):
            source = _text_source(args, split)
            if source is not None:
                data = build_lm_dataset(source, tokenizer, args.seq_len, args.cache_dir, args.preprocessing_num_proc)
                blocks[split] = data.with_format("torch")
    common = dict(collate_fn=collate_blocks, num_workers=args.dataloader_num_workers)
    train = DataLoader(
        blocks["train"],
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        drop_last=True,  # full batches only: every step averages the same number of blocks on every process
        # A private generator: DataLoader draws a base seed at each new iterator, and drawing it from the global
        # RNG would shift dropout after a resume, which opens its iterator at a different moment.
        generator=torch.Generator().manual_seed(args.seed),
        **common,
    )
    if "validation" not in blocks:
        return train, None
    batch_size = args.per_device_eval_batch_size or args.per_device_train_batch_size
    # Its own generator too, for the same reason: evaluating must not move the global RNG.
    validation = DataLoader(blocks["validation"], batch_size=batch_size, generator=torch.Generator(), **common)
    return train, validation


def build_model(args: TrainArguments, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A fresh model from a preset (vocabulary sized to the tokenizer), or a pretrained one to continue."""
    overrides: dict[str, Any] = {
        "train_seq_len": args.seq_len,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if args.position_encoding is not None:
        overrides["position_encoding"] = args.position_encoding
    if args.dropout is not None:
        overrides.update(hidden_dropout=args.dropout, attention_dropout=args.dropout, activation_dropout=args.dropout)
    kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    pretrained = _pretrained_dir(args.model)
    if pretrained is not None:
        model = AutoModelForCausalLM.from_pretrained(pretrained, **overrides, **kwargs)
        if model.config.vocab_size < len(tokenizer):
            raise ValueError(f"{pretrained} has vocab_size={model.config.vocab_size} but the tokenizer has "
                             f"{len(tokenizer)} tokens; train with the model's own tokenizer.")
        return model.train()
    if args.model.endswith(".json"):
        path = Path(args.model)
    elif args.model in preset_names("models"):
        path = resource_path("configuration", "models", f"{args.model}.json")
    else:
        raise ValueError(f"model={args.model!r} is not a JSON file, a saved model or one of the shipped presets "
                         f"{preset_names('models')}.")
    if not path.is_file():
        raise ValueError(f"model={args.model!r}: no file {path}. Give a JSON path or one of the presets "
                         f"{preset_names('models')}.")
    fields = {**json.loads(path.read_text(encoding="utf-8")), **overrides, "vocab_size": len(tokenizer)}
    if fields.get("position_encoding") == "learned" and not fields.get("max_position_embeddings"):
        fields["max_position_embeddings"] = args.seq_len  # learned positions exist only up to the training length
    return AutoModelForCausalLM.from_config(AlibiConfig(**fields), **kwargs).train()


def build_optimizer(model: torch.nn.Module, args: TrainArguments, device: torch.device) -> torch.optim.AdamW:
    """AdamW decaying matrices only: decay on biases and norm gains only pulls them to zero (GPT-2, nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    betas = (args.adam_beta1, args.adam_beta2)
    fused = device.type == "cuda"  # one kernel for all parameters; not available on every CPU build
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon, fused=fused)


def total_steps(args: TrainArguments, batches_per_epoch: int, num_processes: int) -> int:
    """Optimizer steps of the run: the smaller of max_steps and the token budget, or one pass over the data."""
    budgets = [args.max_steps] if args.max_steps is not None else []
    if args.max_train_tokens is not None:
        budgets.append(math.ceil(args.max_train_tokens / _tokens_per_step(args, num_processes)))
    return min(budgets) if budgets else max(1, batches_per_epoch // args.gradient_accumulation_steps)


def _tokens_per_step(args: TrainArguments, num_processes: int) -> int:
    return args.seq_len * args.per_device_train_batch_size * args.gradient_accumulation_steps * num_processes


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, max_batches: int | None) -> float:
    """Mean token loss (nats) over the validation blocks, across processes."""
    model.eval()
    losses = []
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        loss = model(**batch, use_cache=False).loss.float()
        # One copy per block, so gather_for_metrics can drop the blocks that pad the last batch. All blocks
        # have L tokens, so the mean over blocks is the mean over tokens.
        losses.append(accelerator.gather_for_metrics(loss.repeat(len(batch["input_ids"]))))
    model.train()
    return torch.cat(losses).mean().item()


def _trim_metrics(accelerator: Accelerator, args: TrainArguments, step: int) -> None:
    """On resume, drop metrics.jsonl rows past `step` (and a line cut by a kill), rewriting the file atomically."""
    path = Path(args.output_dir, "metrics.jsonl")
    if not (accelerator.is_main_process and path.exists()):
        return
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            logger.warning("%s: dropping an unreadable line (cut by a kill?): %r", path, line[:80])
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            rows.append(line)
    atomic_write_text(path, "".join(row + "\n" for row in rows))


def _log(accelerator: Accelerator, args: TrainArguments, metrics: dict[str, float], step: int) -> None:
    accelerator.log(metrics, step=step)
    if accelerator.is_main_process:
        path = Path(args.output_dir, "metrics.jsonl")
        with disk_full_guard(path), path.open("a", encoding="utf-8") as f:  # one write per row: appends stay whole
            f.write(json.dumps({"step": step, **metrics}) + "\n")
            f.flush()
            os.fsync(f.fileno())


# CUDA graphs (mode "reduce-overhead") are the default only where they were checked on a GPU: one process (DDP and
# FSDP are untested with them) and rows of at most 16K tokens (cuDNN's ALiBi backward failed to capture at 32K and
# 64K: docs/benchmarks.md).
GRAPHED_MAX_SEQ_LEN = 16384


def default_compile_mode(device_type: str, num_processes: int, seq_len: int) -> tuple[str, str | None]:
    """The compiled step's mode when none is asked for: CUDA graphs where they are checked, else "default";
    and, where CUDA would use them but does not, why not."""
    if device_type != "cuda":
        return "default", None
    if num_processes > 1:
        return "default", f"no CUDA graphs with {num_processes} processes"
    if seq_len > GRAPHED_MAX_SEQ_LEN:
        return "default", f"no CUDA graphs for rows over {GRAPHED_MAX_SEQ_LEN} tokens"
    return "reduce-overhead", None


def training_step_mode(args: TrainArguments, device: torch.device, num_processes: int = 1) -> str | None:
    """torch.compile's mode for `train_loop`'s training step, or None for an eager step.

    Compiled when `args.torch_compile` says so, else only on CUDA, where the compiled step trains faster (README
    "Training speed", docs/benchmarks.md): CPU runs (tests, the demo) are short, so inductor's compile time would
    dominate them, and MPS has no compiled-training test here. The mode is `args.torch_compile_mode` (which, as
    in transformers' TrainingArguments, implies compiling); unset, it is `default_compile_mode`'s: on one CUDA
    process "reduce-overhead" (forward and backward replayed as CUDA graphs), which trained the bare model 1.3x
    faster than mode "default" on an H200 and is checked against it inside this loop by
    tests/test_training.py::test_gpu_cuda_graph_training_follows_the_default_compiled_run.
    """
    if args.torch_compile is not None:
        compiled, reason = args.torch_compile, f"--torch_compile {str(args.torch_compile).lower()}"
    elif args.torch_compile_mode is not None:  # as in TrainingArguments, a mode implies compiling
        compiled, reason = True, f"--torch_compile_mode {args.torch_compile_mode}"
    else:
        compiled = device.type == "cuda"
        reason = f"the default on {device.type}; --torch_compile {str(not compiled).lower()} changes it"
    if not compiled:
        logger.info("Training step: eager, not compiled (%s).", reason)
        return None
    mode = args.torch_compile_mode
    if mode is None:
        mode, why_not_graphs = default_compile_mode(device.type, num_processes, args.seq_len)
        reason += f"; {why_not_graphs}" if why_not_graphs else ""
    logger.info("Training step: torch.compile, mode %r (%s; --torch_compile_mode changes the mode).", mode, reason)
    return mode


def training_loss(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """The training step's forward as a function of the batch that returns the loss alone.

    Compiled, its graph outputs the loss and nothing else. A compiled module also outputs the logits, and autograd
    then hands the backward graph a zero gradient for them, materialised at every step: a (batch, length, vocab)
    fill, 0.5 GB at 16 x 512 tokens and a 32K vocabulary, which CUDA graphs also copy into the graph's input.
    `skip_logits` also fuses the head into the loss (`alibi_loss.linear_cross_entropy`): the logits are read once,
    and their gradient is computed with the loss.
    """

    def loss(**batch: torch.Tensor) -> torch.Tensor:
        return model(**batch, use_cache=False, skip_logits=True).loss

    return loss


def train_loop(
    accelerator: Accelerator,
    args: TrainArguments,
    state: TrainState,
    loaders: tuple[DataLoader, DataLoader | None],
    step: int,
    max_steps: int,
) -> None:
    """Run optimizer steps `step + 1 .. max_steps`, validating, logging and checkpointing on the way.

    Raises `NonFiniteLossError` at the first NaN/inf loss, checked (one device sync) before each log line, each
    checkpoint and the end, so no state with a non-finite loss behind it is ever saved.
    """
    train_loader, _ = loaders
    model, optimizer = state.model, state.optimizer
    # Compiled for the training step only: the function shares the module's parameters, and evaluation (another
    # shape, no grad) and export keep the plain module.
    mode = training_step_mode(args, accelerator.device, accelerator.num_processes)
    step_loss = training_loss(model)
    step_loss = step_loss if mode is None else torch.compile(step_loss, mode=mode)
    graphed = mode in ("reduce-overhead", "max-autotune") and accelerator.device.type == "cuda"
    # Resume position: step N has consumed N * k micro-batches (k = accumulation) of the seeded epoch order.
    epoch, skip = divmod(step * args.gradient_accumulation_steps, len(train_loader))
    meter = _Meter(_tokens_per_step(args, accelerator.num_processes), step, args.gradient_accumulation_steps)
    bar = tqdm(total=max_steps, initial=step, desc="train", disable=not accelerator.is_local_main_process)
    first_micro_batch = True
    while step < max_steps:
        train_loader.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(train_loader, skip) if skip else train_loader:
            with accelerator.accumulate(model):
                if graphed and first_micro_batch:  # the graphs may reuse the memory of the last step's outputs
                    torch.compiler.cudagraph_mark_step_begin()
                loss = step_loss(**batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()  # a no-op inside the accumulation window
                optimizer.zero_grad(set_to_none=True)
            # A graph's next replay overwrites this step's loss, and the meter reads it only at the next log line.
            meter.losses.append(loss.detach().clone() if graphed else loss.detach())
            first_micro_batch = accelerator.sync_gradients
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the schedule follows real updates
                state.scheduler.step()
            step += 1
            bar.update()
            _after_step(accelerator, args, state, meter, loaders[1], step, max_steps, bar)
            if step >= max_steps:
                break
        epoch, skip = epoch + 1, 0
    meter.check(accelerator)
    bar.close()


def _after_step(accelerator: Accelerator, args: TrainArguments, state: TrainState, meter: _Meter,
                eval_loader: DataLoader | None, step: int, max_steps: int, bar: tqdm) -> None:
    """Log, validate and checkpoint after optimizer step `step`, as the arguments schedule them."""
    if step % args.log_every == 0 or step == max_steps:
        metrics = meter.read(accelerator, step, state.scheduler.get_last_lr()[0])
        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        _log(accelerator, args, metrics, step)
    if eval_loader is not None and (step == max_steps or args.eval_every and step % args.eval_every == 0):
        eval_loss = evaluate(accelerator, state.model, eval_loader, args.eval_batches)
        logger.info("step %d: validation loss %.4f, perplexity %.2f", step, eval_loss, math.exp(eval_loss))
        _log(accelerator, args, {"eval/loss": eval_loss, "eval/ppl": math.exp(eval_loss)}, step)
    if args.save_every and step % args.save_every == 0:
        meter.check(accelerator)
        save_checkpoint(accelerator, args, step, state)


class _Meter:
    """Training loss and throughput since the last log line."""

    def __init__(self, tokens_per_step: int, step: int, accumulation: int) -> None:
        self.tokens_per_step, self.step, self.time = tokens_per_step, step, time.perf_counter()
        self.accumulation = accumulation
        self.losses: list[torch.Tensor] = []

    def check(self, accelerator: Accelerator) -> torch.Tensor:
        """The micro-batch losses since the last read, summed over processes; raise at the first non-finite one."""
        if not self.losses:
            return torch.zeros(0)
        summed = accelerator.reduce(torch.stack(self.losses).float(), reduction="sum")  # the same on every process
        bad = (~torch.isfinite(summed)).nonzero()
        if len(bad):
            step = self.step + int(bad[0, 0]) // self.accumulation + 1
            raise NonFiniteLossError(
                f"The training loss is {summed[bad[0, 0]].item()} at step {step}; stopped, and nothing from this step "
                "on was saved. Lower the learning rate or check the data (a batch whose labels are all -100 has no "
                "loss), then resume from an earlier checkpoint.")
        return summed

    def read(self, accelerator: Accelerator, step: int, lr: float) -> dict[str, float]:
        loss = (self.check(accelerator).mean() / accelerator.num_processes).item()
        now = time.perf_counter()
        tokens_per_s = (step - self.step) * self.tokens_per_step / max(now - self.time, 1e-9)
        self.step, self.time, self.losses = step, now, []
        return {"train/loss": loss, "train/lr": lr, "train/tokens": step * self.tokens_per_step,
                "train/tokens_per_s": tokens_per_s}


def export_model(
    accelerator: Accelerator, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, output_dir: Path
) -> Path:
    """save_pretrained the model and tokenizer into `output_dir` (AutoModelForCausalLM loads it), atomically.

    Everything is written into a staging sibling, loaded back and compared with the trained weights
    (`verify_export`), and only then renamed to `output_dir`; on any failure nothing is left there.
    """
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # every process takes part: FSDP gathers shards here
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        with atomic_directory(output_dir, overwrite=True) as staging:
            if FSDPModule is not None and isinstance(unwrapped, FSDPModule):
                # FSDP2 shards in place: the class becomes a subclass (FSDPAlibiForCausalLM, which save_pretrained
                # would write into auto_map with torch's FSDP sources) and the weights DTensors. Save a plain copy.
                _plain_copy(unwrapped, state_dict).save_pretrained(staging)
            else:
                unwrapped.save_pretrained(staging, state_dict=state_dict)
            save_tokenizer(tokenizer, staging)  # padding on the left, for batched generate()
            verify_export(staging, state_dict, tokenizer)
    accelerator.wait_for_everyone()
    return output_dir


def _plain_copy(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> PreTrainedModel:
    """The model's own class (not FSDP2's subclass of it), holding the gathered full `state_dict`."""
    cls = next(c for c in type(model).__mro__ if issubclass(c, PreTrainedModel) and not issubclass(c, FSDPModule))
    plain = cls(model.config)
    missing, unexpected = plain.load_state_dict(state_dict, strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or ()) if plain.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"The gathered state dict does not fit {cls.__name__}: "
                           f"missing {missing}, unexpected {unexpected}.")
    plain.tie_weights()
    return plain


def train(args: TrainArguments) -> Path:
    """Train as `args` says and return the exported model folder, output_dir/final.

    The main process holds output_dir's lock for the whole run; a folder that already holds a run is refused
    unless `resume` or `overwrite` is given.
    """
    accelerator = make_accelerator(args)
    with contextlib.ExitStack() as stack:
        if accelerator.is_main_process:
            claim_output_dir(args, stack)
        accelerator.wait_for_everyone()
        return _train(accelerator, args)


def claim_output_dir(args: TrainArguments, stack: contextlib.ExitStack) -> None:
    """Lock output_dir (held until `stack` closes), clean what killed writes left, and refuse or move aside a run.

    `overwrite` renames the old folder to `<output_dir>.replaced-<time>` in one step; nothing is deleted.
    """
    out = Path(args.output_dir)
    stack.enter_context(lock_directory(out))
    cleanup_staging(out)
    used = [name for name in RUN_ENTRIES if out.joinpath(name).exists()]
    if not used or args.resume is not None:
        return
    if not args.overwrite:
        raise OutputDirInUseError(f"{out} already holds a run ({', '.join(used)}). Pass --resume latest to continue "
                                  "it, --overwrite to move it aside and start over, or pick another --output_dir.")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    aside = out.with_name(f"{out.name}.replaced-{stamp}-{os.getpid()}")
    os.rename(out, aside)
    aside.joinpath(LOCK_NAME).unlink(missing_ok=True)  # our own lock file, moved along
    logging.getLogger(__name__).warning("Moved the previous run in %s aside to %s (nothing was deleted)", out, aside)
    stack.enter_context(lock_directory(out))


def _train(accelerator: Accelerator, args: TrainArguments) -> Path:
    if args.save_every or args.resume:
        check_supported(accelerator)
    set_seed(args.seed)  # same initial weights on every process and on every run with this seed
    tokenizer = get_tokenizer(accelerator, args)
    train_loader, eval_loader = get_dataloaders(accelerator, args, tokenizer)
    model = build_model(args, tokenizer)
    optimizer = build_optimizer(model, args, accelerator.device)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    max_steps = total_steps(args, len(train_loader), accelerator.num_processes)
    # Not passed to prepare(): Accelerate would step it once per process, so the schedule would depend on the
    # number of processes. Checkpoints save it themselves (scheduler.json).
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.warmup_steps, max_steps)
    state = TrainState(model, optimizer, scheduler, _position(accelerator, args, len(train_loader)))
    step = resume_from_checkpoint(accelerator, args, state)
    if args.resume is not None:
        _trim_metrics(accelerator, args, step)
    accelerator.init_trackers("tensorboard", config=_hparams(args))
    params = sum(p.numel() for p in model.parameters())
    logger.info("%d parameters, %d processes (%s), %d steps of %d tokens", params, accelerator.num_processes,
                accelerator.distributed_type.value, max_steps, _tokens_per_step(args, accelerator.num_processes))
    train_loop(accelerator, args, state, (train_loader, eval_loader), step, max_steps)
    output = export_model(accelerator, model, tokenizer, Path(args.output_dir, "final"))
    accelerator.end_training()
    return output


def _position(accelerator: Accelerator, args: TrainArguments, batches_per_epoch: int) -> dict[str, int]:
    """What the data order of step N depends on (checkpoint.POSITION_KEYS): resuming needs all of it unchanged."""
    return {"num_processes": accelerator.num_processes, "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "seq_len": args.seq_len,
            "seed": args.seed, "batches_per_epoch": batches_per_epoch}


def _hparams(args: TrainArguments) -> dict[str, int | float | str | bool]:
    """TensorBoard's hparams accept scalars and strings only."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in dataclasses.asdict(args).items()}


def main(argv: list[str] | None = None, prog: str = "alibi-lm train") -> int:
    """`alibi-lm train ...` and `scripts/train.py` (which passes its own `prog` for --help)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output = train(parse_args(argv, prog))
    logger.info("Saved the trained model and tokenizer to %s", output)
    return 0


__all__ = [
    "ExportVerificationError",
    "NonFiniteLossError",
    "OutputDirInUseError",
    "build_model",
    "build_optimizer",
    "claim_output_dir",
    "default_compile_mode",
    "evaluate",
    "export_model",
    "get_dataloaders",
    "get_tokenizer",
    "main",
    "resume_from_checkpoint",
    "save_checkpoint",
    "total_steps",
    "train",
    "train_loop",
    "training_loss",
    "training_step_mode",
    "verify_export",
]
