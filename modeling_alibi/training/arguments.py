"""Train an ALiBi language model with Accelerate: `TrainArguments`, read by `parse_args` from flags and YAML presets.

A training preset (configuration/train/*.yaml) sets TrainArguments fields by name; command-line flags override
it. `model` names a model preset in configuration/models/, a config JSON file or a saved model. The presets ship
with the package (`modeling_alibi.resources`), and relative paths that do not exist locally are looked up there.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser

from ..resources import local_or_shipped, preset_names


@dataclass
class TrainArguments:
    """Everything a training run needs; YAML presets in configuration/train/ set these fields by name."""

    # Model
    model: str = field(default="tiny", metadata={"help": "A preset name in configuration/models/ (e.g. 'tiny'), "
                       "an AlibiConfig JSON file, or a save_pretrained folder whose weights training continues from."})
    position_encoding: Literal["alibi", "sinusoidal", "rotary", "learned", "none"] | None = field(
        default=None, metadata={"help": "Override the config's position encoding (baselines for comparisons)."})
    dropout: float | None = field(
        default=None, metadata={"help": "Override hidden, attention and activation dropout at once (0 = off)."})
    attn_implementation: Literal["eager", "sdpa", "flex_attention", "flash_attention_2"] | None = field(
        default=None, metadata={"help": "Attention backend; None keeps the model's default (sdpa)."})
    # Data
    train_files: list[str] = field(default_factory=list, metadata={
        "help": "Training text: .txt, .jsonl ('text' field), optionally .xz/.gz; glob patterns allowed."})
    validation_files: list[str] = field(default_factory=list, metadata={"help": "Validation text, same formats."})
    dataset_name: str | None = field(default=None, metadata={
        "help": "A Hugging Face Hub dataset with a 'text' column, used instead of train/validation files."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_split: str = field(default="train", metadata={"help": "Hub split to train on."})
    validation_split: str | None = field(default="validation", metadata={"help": "Hub split to validate on."})
    text_mode: Literal["line", "document"] = field(default="line", metadata={
        "help": "'line': each line gets an end-of-sequence token (fairseq, WikiText); 'document': each "
                "blank-line-separated block does, its lines kept with their newlines."})
    cache_dir: str = field(default=".cache/alibi-lm", metadata={"help": "Where tokenizers and packed data are cached."})
    preprocessing_num_proc: int | None = field(default=None, metadata={
        "help": "Tokenization processes; None uses all cores (one for small inputs)."})
    # Tokenizer
    tokenizer: str | None = field(default=None, metadata={
        "help": "A saved Hugging Face tokenizer (folder or Hub name). None trains one on the training text."})
    tokenizer_type: Literal["bpe", "wordlevel"] = field(default="bpe", metadata={
        "help": "Tokenizer to train when `tokenizer` is None: byte-level BPE or a fairseq-style word vocabulary."})
    vocab_size: int | None = field(default=16384, metadata={
        "help": "Size of the trained tokenizer (specials included); None keeps every word (wordlevel only)."})
    # Batches
    seq_len: int = field(default=512, metadata={"help": "Training length L: tokens per packed block."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Blocks per process per micro-batch."})
    per_device_eval_batch_size: int | None = field(default=None, metadata={"help": "Defaults to the train size."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    # Optimizer and schedule
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate of AdamW."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decay on matrices (not biases or norms)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2 (fairseq LM recipes use 0.98)."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 disables it."})
    lr_scheduler_type: Literal["cosine", "linear", "constant_with_warmup"] = field(
        default="cosine", metadata={"help": "Decay after the linear warmup."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps (the first budget reached wins)."})
    max_train_tokens: int | None = field(default=None, metadata={
        "help": "Token budget, turned into steps of seq_len x batch x accumulation x processes tokens. "
                "With neither budget the run makes one pass over the training data."})
    # Runtime
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(default=None, metadata={
        "help": "Autocast precision; None takes it from `accelerate launch` / `accelerate config`."})
    seed: int = field(default=0, metadata={"help": "Seed of weight init, data order and dropout."})
    # nargs/const: HfArgumentParser gives `bool | None` fields no bare-flag form, so `--torch_compile` alone would
    # be refused; with them it means True, as it does for the plain bool fields.
    torch_compile: bool | None = field(default=None, metadata={"nargs": "?", "const": True,
        "help": "Run the training forward and backward through torch.compile (one graph: packed batches need no "
                "attention mask). None (default): compiled on CUDA devices, not on CPU or MPS; "
                "`--torch_compile true` / `--torch_compile false` forces it either way. The first steps compile; "
                "evaluation and export use the plain model."})
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = field(default=None, metadata={
        "help": "torch.compile's mode for the training step; as in transformers' TrainingArguments, giving one "
                "compiles the step. None (default): 'reduce-overhead' (forward and backward replayed as CUDA "
                "graphs) on one CUDA process with rows of at most 16,384 tokens, else 'default'."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    # Evaluation, logging, checkpoints
    eval_every: int = field(default=0, metadata={"help": "Validate every N steps and at the end; 0 = only at the end."})
    eval_batches: int | None = field(default=None, metadata={"help": "Validation batches per process; None = all."})
    log_every: int = field(default=10, metadata={"help": "Log the training loss every N steps."})
    save_every: int = field(default=0, metadata={
        "help": "Checkpoint (safetensors + JSON) to output_dir/checkpoints/step_N every N steps; 0 = never."})
    output_dir: str = field(default="outputs/alibi-lm", metadata={"help": "Checkpoints, logs and final/ go here."})
    resume: str | None = field(default=None, metadata={
        "help": "'latest' (the newest checkpoint in output_dir that restores exactly, or a fresh start if none) "
                "or a checkpoint folder."})
    resume_inexact: bool = field(default=False, metadata={
        "help": "With resume: continue even if some state (optimizer, scheduler, RNG, data position) cannot be "
                "restored, with a warning for each. Without it such a resume is refused."})
    overwrite: bool = field(default=False, metadata={
        "help": "Start over in an output_dir that holds a run: the old folder is renamed to "
                "<output_dir>.replaced-<time> (nothing is deleted)."})
    report_to: Literal["tensorboard", "none"] = field(default="tensorboard", metadata={
        "help": "Experiment tracker for accelerator.log; metrics.jsonl in output_dir is always written."})

    def __post_init__(self) -> None:
        positive = ("seq_len", "per_device_train_batch_size", "gradient_accumulation_steps", "log_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer.")
        for name in ("max_steps", "max_train_tokens", "per_device_eval_batch_size", "eval_batches"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive, or left unset.")
        if bool(self.train_files) == bool(self.dataset_name):
            raise ValueError("Give training text with train_files (local files) or dataset_name (Hub), exactly one.")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must lie in [0, 1).")
        if self.torch_compile is False and self.torch_compile_mode is not None:
            raise ValueError(f"torch_compile_mode={self.torch_compile_mode!r} needs a compiled step, but torch_compile "
                             "is false. Drop one of them.")
        if self.resume is not None and self.overwrite:
            raise ValueError("resume and overwrite contradict each other: resume continues the run in output_dir, "
                             "overwrite starts a new one. Pass one of them.")
        if self.resume is not None and self.resume != "latest" and not Path(self.resume).is_dir():
            raise ValueError(f"resume={self.resume!r} is neither 'latest' nor an existing checkpoint folder.")


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> TrainArguments:
    """Parse command-line flags; `--config file.yaml` supplies defaults that the flags then override.
    `prog` names the program in --help (default: the script's file name)."""
    parser = HfArgumentParser(TrainArguments, prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=_config_path, help="YAML file of TrainArguments fields, or the name of a "
                        f"shipped preset ({', '.join(preset_names('train'))}); command-line flags win.")
    known, _ = parser.parse_known_args(argv)
    if known.config is not None:
        parser.set_defaults(**_yaml_defaults(parser, known.config))
    args, _ = parser.parse_args_into_dataclasses(argv)
    # The shipped presets name the shipped corpus relative to a checkout (data/gutenberg-tiny/...).
    args.train_files = [local_or_shipped(path) for path in args.train_files]
    args.validation_files = [local_or_shipped(path) for path in args.validation_files]
    return args


def _config_path(value: str) -> Path:
    """A YAML path, or a shipped training preset's name (`tiny-cpu`) or relative path (configuration/train/...)."""
    if not Path(value).suffix and value in preset_names("train"):
        value = f"configuration/train/{value}.yaml"
    return Path(local_or_shipped(value))


def _yaml_defaults(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """Read a YAML preset, naming unknown keys, and convert each value with its flag's type and choices."""
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of TrainArguments fields, got {type(values).__name__}.")
    names = [f.name for f in dataclasses.fields(TrainArguments)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else " See `alibi-lm train --help` for the fields."
            raise ValueError(f"{path}: unknown key {key!r}.{hint}")
    actions = {action.dest: action for action in parser._actions}
    return {key: _convert(actions[key], value, f"{path}: {key}") for key, value in values.items()}


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    if value is None or action.type is None:
        return value
    if isinstance(value, list):
        return [_convert(action, item, where) for item in value]
    try:  # YAML reads 3e-4 as a string and `true` as a bool: go through the flag's own string parser
        converted = action.type(str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"{where}: cannot read {value!r} ({error}).") from error
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where}: {value!r} is not one of {list(action.choices)}.")
    return converted


__all__ = ["TrainArguments", "parse_args"]
