"""Hub-ready export: weights, config with `auto_map`, remote code, generation config, tokenizer and model card."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .folders import require_model_folder
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
    "alibi_generation.py",  # chunked prefill and generate's mask hook
    "alibi_triton.py",  # fused ALiBi flash attention: entry point and autograd
    "alibi_triton_forward.py",
    "alibi_triton_backward.py",
    "alibi_triton_decode.py",  # split-K decode kernel
    "alibi_cudnn.py",  # cuDNN's fused ALiBi (optional nvidia-cudnn-frontend)
)

MODEL_CARD = """---
library_name: transformers
pipeline_tag: text-generation
license: {license}
tags:
- alibi
- causal-lm
- custom_code
{datasets}---

# {name}

An ALiBi causal language model ("Train Short, Test Long", Press, Smith & Lewis, ICLR 2022), packaged with
[alibi-lm](https://pypi.org/project/alibi-lm/). ALiBi adds `-m_h * (i - j)` to each attention score instead of
using position embeddings, so the model runs on inputs far longer than it was trained on.

| field | value |
| --- | --- |
| parameters | {parameters:,} |
| layers / width / heads | {layers} / {hidden} / {heads} |
| vocabulary | {vocab:,} |
| trained on sequences of | {train_seq_len} tokens (not a length cap) |
| position encoding | {position_encoding} |

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
```

With `pip install alibi-lm` and `import modeling_alibi`, `trust_remote_code` is not needed.
{notes}"""


def write_model_card(
    model: PreTrainedModel, directory: str | Path, name: str, license: str = "apache-2.0",
    datasets: list[str] | None = None, notes: str = "",
) -> None:
    """Write README.md with Hub metadata and a summary of the architecture."""
    config = model.config
    dataset_lines = "".join(f"- {d}\n" for d in datasets or [])
    card = MODEL_CARD.format(
        license=license,
        datasets=f"datasets:\n{dataset_lines}" if dataset_lines else "",
        name=name,
        repo=name,
        parameters=model.num_parameters(),
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        heads=config.num_attention_heads,
        vocab=config.vocab_size,
        train_seq_len=config.train_seq_len or "an unrecorded number of",
        position_encoding=config.position_encoding,
        notes=f"\n{notes}\n" if notes else "",
    )
    Path(directory, "README.md").write_text(card, encoding="utf-8")


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
    """Write a complete Hub-ready folder, atomically.

    The folder holds `config.json` (with `auto_map`), `generation_config.json`, `model.safetensors`, the three
    remote-code files (`PAYLOAD`), the tokenizer if given, and a model card. It is assembled in a temporary
    folder beside `output_dir` and renamed at the end, so a failure leaves nothing behind.

    Args:
        model: An `AlibiForCausalLM`.
        output_dir: Destination folder; must not exist unless `overwrite`.
        tokenizer: Saved alongside when given, with `padding_side="left"` (for batched generation).
        name: Model name for the card (default: the folder name).
        license: SPDX-style licence id for the card metadata.
        datasets: Dataset ids for the card metadata.
        notes: Extra Markdown appended to the card.
        overwrite: Replace an existing `output_dir`.

    Returns:
        The output folder.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True (--overwrite) or choose another folder.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        # save_pretrained adds AutoConfig and AutoModelForCausalLM to auto_map; AutoModel is ours to add.
        auto_map = getattr(model.config, "auto_map", None) or {}
        model.config.auto_map = {**auto_map, "AutoModel": "modeling_alibi.AlibiModel"}
        model.save_pretrained(staging)
        generation_config = model.generation_config or GenerationConfig.from_model_config(model.config)
        generation_config.save_pretrained(staging)
        if tokenizer is not None:
            save_tokenizer(tokenizer, staging)  # padding on the left, for batched generate()
        write_model_card(model, staging, name or output_dir.name, license, datasets, notes)
        missing = [f for f in (*PAYLOAD, "model.safetensors") if not (staging / f).exists()]
        if missing:
            raise RuntimeError(f"export is incomplete, {missing} were not written; is modeling_alibi imported?")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Exported %s", output_dir)
    return output_dir


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
    require_model_folder(args.model)

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES.get(args.dtype, "auto"))
    tokenizer = None
    tokenizer_dir = args.tokenizer or args.model
    if args.tokenizer or any(Path(args.model, f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = export_for_hub(model, args.output, tokenizer, args.name, args.license, args.dataset, overwrite=args.overwrite)
    print(f"Hub-ready folder: {out}")
    return 0
