"""Hub-ready export: weights, config with `auto_map`, remote code, generation config, tokenizer and model card."""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .errors import InputError, OutputExistsError, UserError, check_model_folder, check_output_free
from .io_utils import atomic_directory, cleanup_staging, lock_directory, pid_alive
from .model_card import write_model_card
from .tokenization import save_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The remote code: save_pretrained copies modeling_alibi.py and, following its relative imports, the others.
# tests/test_layout.py checks that this is exactly that import closure.
PAYLOAD = (
    "configuration_alibi.py",
    "modeling_alibi.py",  # the layers and the model classes
    "alibi_kwargs.py",  # transformers' keyword and cache contract
    "alibi_mask.py",  # slopes, bias, and the mask object every backend reads
    "alibi_attention.py",  # eager reference, kernels, the kernel-choice table, the registry
    "alibi_flex.py",  # FlexAttention block masks and kernel call
    "alibi_positions.py",  # the baselines' position encodings
    "alibi_adaptive.py",  # adaptive input and softmax
    "alibi_loss.py",  # the causal-LM loss in bounded memory
    "alibi_linear_relu.py",  # the MLP, whose fc1 and ReLU run as one GEMM when compiled
    "alibi_norm.py",  # residual add and LayerNorm as one node in compiled training
    "alibi_packed.py",  # q, k and v as one GEMM into cuDNN's ALiBi in compiled training
    "alibi_ops.py",  # custom-op registration (one name per copy of a file), the compiled-training gate
    "alibi_generation.py",  # chunked prefill, generate's mask hook and its fast greedy path
    "alibi_decoding.py",  # graph_generate: static cache, one CUDA graph per token
    "alibi_fused_decode.py",  # graph_generate's batch-1 decoder layer on alibi_triton_gemv's kernels
    "alibi_triton.py",  # fused ALiBi flash attention: entry point and autograd
    "alibi_triton_forward.py",
    "alibi_triton_backward.py",
    "alibi_triton_decode.py",  # split-K decode kernel
    "alibi_triton_loss.py",  # the training loss's rows and gradient in one read of the logits
    "alibi_triton_norm.py",  # the LayerNorms' and ReLU's backward passes with their column sums
    "alibi_triton_gemv.py",  # batch-1 linear layers with the LayerNorm before or the residual add after
    "alibi_cudnn.py",  # cuDNN's fused ALiBi (optional nvidia-cudnn-frontend)
)

# Files an export writes besides the remote code (*.py) and weight shards; --overwrite replaces only these.
EXPORT_FILES = {
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "README.md",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "vocab.txt", "chat_template.jinja", "tokenizer.model",
}


def export_for_hub(
    model: PreTrainedModel,
    output_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    name: str | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    notes: str = "",
    overwrite: bool = False,
) -> Path:
    """Write a complete Hub-ready folder, atomically, and verify it.

    The folder holds `config.json` (with `auto_map`), `generation_config.json`, `model.safetensors`, the
    remote-code files (`PAYLOAD`), the tokenizer if given, and a model card. It is assembled in a staging folder
    `.NAME.tmp-<pid>-<random>` beside `output_dir`, loaded back and compared with `model` tensor by tensor (and the
    tokenizer with `tokenizer`), fsynced and renamed into place, so a failure leaves nothing behind. A lock file
    `.NAME.lock` beside it stops a second export into the same folder, and staging folders of killed exports are
    removed. Folders get mode 0755, files 0644.

    Args:
        model: An `AlibiForCausalLM`.
        output_dir: Destination folder; must not exist unless `overwrite`.
        tokenizer: Saved alongside when given, with `padding_side="left"` (for batched generation).
        name: Model name for the card (default: the folder name).
        license: SPDX-style licence id for the card metadata.
        datasets: Dataset ids for the card metadata.
        notes: Extra Markdown appended to the card.
        overwrite: Replace an existing export folder: the old one is renamed aside, the new one renamed in, then
            the old one removed. A folder holding files an export does not write is refused, never deleted.

    Returns:
        The output folder.

    Raises:
        OutputExistsError: `output_dir` exists and not `overwrite`, or it holds files that are not an export's.
        DirectoryLockedError: another live process is exporting into `output_dir`.
        ExportVerificationError: the written folder does not load back into `model`'s weights and tokenizer.
        DiskFullError: the disk filled up; nothing was put in place.
    """
    output_dir = check_replaceable(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with lock_directory(output_dir.parent, f".{output_dir.name}.lock"):
        restore_swapped_out(output_dir)  # a kill between --overwrite's two renames left the old folder aside
        cleanup_staging(output_dir.parent)  # what a killed export left: dead writers' .NAME.tmp-/.old- only
        check_replaceable(output_dir, overwrite)  # again, under the lock
        try:
            with atomic_directory(output_dir, overwrite=overwrite) as staging:
                _write_folder(model, staging, tokenizer, name or output_dir.name, license, datasets, notes)
                verify_export(staging, model.state_dict(), tokenizer, type(model))
                _set_modes(staging)
        except BaseException:
            restore_swapped_out(output_dir, own=True)
            raise
    logger.info("Exported %s", output_dir)
    return output_dir


def restore_swapped_out(output_dir: Path, own: bool = False) -> Path | None:
    """Put back the old folder `--overwrite` renamed aside (`.NAME.old-<pid>-<hex>`) if the new one never arrived.

    Only when `output_dir` is missing, and only a folder whose writer is gone (or this process, with `own`).
    """
    if output_dir.exists():
        return None
    aside = [
        p for p in output_dir.parent.glob(f".{output_dir.name}.old-*")
        if p.is_dir() and _writer_gone(p.name.rsplit(".old-", 1)[1].split("-")[0], own)
    ]
    if not aside:
        return None
    newest = max(aside, key=lambda p: p.stat().st_mtime)
    os.rename(newest, output_dir)
    logger.warning("Restored %s from %s, left by an interrupted --overwrite", output_dir, newest.name)
    return output_dir


def _writer_gone(pid: str, own: bool) -> bool:
    return pid.isdigit() and (int(pid) == os.getpid() if own else not pid_alive(int(pid)))


def _write_folder(
    model: PreTrainedModel, staging: Path, tokenizer: PreTrainedTokenizerBase | None, name: str, license: str,
    datasets: list[str] | None, notes: str,
) -> None:
    # save_pretrained adds AutoConfig and AutoModelForCausalLM to auto_map; AutoModel is ours to add.
    auto_map = getattr(model.config, "auto_map", None) or {}
    model.config.auto_map = {**auto_map, "AutoModel": "modeling_alibi.AlibiModel"}
    model.save_pretrained(staging)
    generation_config = model.generation_config or GenerationConfig.from_model_config(model.config)
    generation_config.save_pretrained(staging)
    if tokenizer is not None:
        save_tokenizer(tokenizer, staging)  # padding on the left, for batched generate()
    write_model_card(model, staging, name, license, datasets, notes)
    missing = [f for f in (*PAYLOAD, "model.safetensors") if not (staging / f).exists()]
    if missing:
        raise RuntimeError(f"export is incomplete, {missing} were not written; is modeling_alibi imported?")


def _set_modes(folder: Path) -> None:
    """0755 folders and 0644 files, whatever the umask or the staging folder's mode."""
    os.chmod(folder, 0o755)
    for root, dirs, files in os.walk(folder):
        for entry in dirs:
            os.chmod(os.path.join(root, entry), 0o755)
        for entry in files:
            os.chmod(os.path.join(root, entry), 0o644)


def is_export_file(name: str) -> bool:
    """Whether an export (of this or an earlier version) writes a file of this name."""
    return name in EXPORT_FILES or name.endswith(".py") or re.fullmatch(r"model-\d+-of-\d+\.safetensors", name)


def check_replaceable(output_dir: str | Path, overwrite: bool, flag: str = "--output") -> Path:
    """Refuse an existing output without `overwrite`, and with it a folder holding files an export does not write."""
    output_dir = check_output_free(output_dir, overwrite, flag)
    if output_dir.exists():
        if not output_dir.is_dir() or output_dir.is_symlink():
            raise OutputExistsError(f"{flag} {output_dir} is not a folder; --overwrite replaces only export folders.")
        foreign = sorted(p.name for p in output_dir.iterdir() if not (p.is_file() and is_export_file(p.name)))
        if foreign:
            raise OutputExistsError(
                f"{flag} {output_dir} holds {', '.join(foreign[:5])}, which an export does not write; --overwrite "
                "would delete them. Move them out, or choose another folder."
            )
    return output_dir


class ExportVerificationError(UserError, RuntimeError):
    """The folder written does not load back to the same weights or tokenizer; it was not put in place."""


def verify_export(
    folder: Path,
    expected: dict[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase | None = None,
    model_class: type | None = None,
) -> None:
    """Load `folder` back and compare it with what was meant to be written, before it is put in place.

    Checks: no missing, unexpected or mismatched keys; every tensor of `expected` (a state dict) equal in shape,
    dtype and value; and, given `tokenizer`, the saved tokenizer loads with the same vocabulary and encodes a
    sample the same way. `model_class` loads the weights (default AutoModelForCausalLM). Used by `alibi-lm export`,
    `alibi-lm train` and `alibi-lm finetune`.

    Raises:
        ExportVerificationError: naming up to five of the differences.
    """
    from transformers import AutoModelForCausalLM

    loaded, info = (model_class or AutoModelForCausalLM).from_pretrained(folder, output_loading_info=True)
    problems = loading_problems(info)
    got = loaded.state_dict()
    problems += [f"{k}: differs" for k, tensor in expected.items() if k in got and not _same(tensor, got[k])]
    problems += [f"{k}: missing" for k in expected if k not in got]
    if tokenizer is not None:
        problems += _tokenizer_problems(folder, tokenizer)
    if problems:
        raise ExportVerificationError(
            f"the export does not load back as written ({'; '.join(problems[:5])}); nothing was written."
        )


def _tokenizer_problems(folder: Path, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    from transformers import AutoTokenizer

    try:
        reloaded = AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001  (any failure to load means the folder is unusable)
        return [f"the tokenizer does not load ({_first_line(error)})"]
    sample = "Hello world, 123."
    if reloaded.get_vocab() != tokenizer.get_vocab() or reloaded(sample)["input_ids"] != tokenizer(sample)["input_ids"]:
        return ["the tokenizer's vocabulary or encoding differs from the one given"]
    return []


def loading_problems(info: dict) -> list[str]:
    """Missing, unexpected and mismatched keys of transformers' `output_loading_info`, one string each."""
    problems = [f"{k}: missing, would be random" for k in info.get("missing_keys", ())]
    problems += [f"{k}: unexpected" for k in info.get("unexpected_keys", ())]
    mismatched = info.get("mismatched_keys", ())
    problems += [f"{item[0] if isinstance(item, tuple) else item}: wrong shape" for item in mismatched]
    return problems + [str(e) for e in info.get("error_msgs", ())]


def load_checked(auto_class: type, folder: str | Path, **kwargs) -> PreTrainedModel:
    """`from_pretrained` that refuses weights not matching the config, instead of initialising them randomly."""
    try:
        model, info = auto_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as error:
        raise InputError(f"{folder}: the model does not load: {_first_line(error)}") from error
    except Exception as error:
        if type(error).__name__ != "SafetensorError":  # a corrupt header: the user's file, not our bug
            raise
        raise InputError(f"{folder}: the weights file is corrupt ({_first_line(error)}).") from error
    problems = loading_problems(info)
    if problems:
        raise InputError(
            f"{folder}: the saved weights do not match its config.json ({'; '.join(problems[:5])}"
            f"{'; ...' if len(problems) > 5 else ''}); the untouched tensors would be random. Re-save the model."
        )
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())


def main(argv: list[str] | None = None) -> int:
    """`alibi-lm export MODEL --output DIR`: re-save a model folder as a complete Hub-ready folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import modeling_alibi  # noqa: F401  (registers the model type)

    parser = argparse.ArgumentParser(prog="alibi-lm export", description=main.__doc__)
    parser.add_argument("model", help="a saved model folder")
    parser.add_argument("--output", required=True, help="destination folder")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model folder, if it has one)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast the weights before saving")
    parser.add_argument("--name", help="model name for the card")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--dataset", action="append", default=[], help="dataset id for the card (repeatable)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    check_model_folder(args.model)
    check_replaceable(args.output, args.overwrite)  # before loading anything

    model = load_checked(AutoModelForCausalLM, args.model, dtype=DTYPES.get(args.dtype, "auto"))
    tokenizer = None
    tokenizer_dir = args.tokenizer or args.model
    if args.tokenizer or any(Path(args.model, f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        except (OSError, ValueError) as error:
            raise InputError(f"the tokenizer in {tokenizer_dir} does not load: {_first_line(error)}") from error
    out = export_for_hub(model, args.output, tokenizer, args.name, args.license, args.dataset, overwrite=args.overwrite)
    print(f"Hub-ready folder: {out}")
    return 0
