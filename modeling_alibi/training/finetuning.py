"""Fine-tune a converted or trained ALiBi model with `transformers.Trainer` on local text files.

Trainer is the familiar path for users who already fine-tune with it (PEFT, callbacks, Hub pushes); Accelerate
training from scratch lives in `loop.py`. Both read data through `data.build_lm_dataset`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, Trainer, TrainingArguments

from ..errors import check_not_run_folder, check_saved_config
from ..hub import verify_export
from ..io_utils import atomic_directory, cleanup_staging, lock_directory
from ..tokenization import save_tokenizer
from .data import TextSource, build_lm_dataset, collate_blocks
from .loop import OutputDirInUseError

logger = logging.getLogger(__name__)


def build_parser(prog: str = "alibi-lm finetune") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a saved model folder with its tokenizer (converted or trained)")
    parser.add_argument("--train-files", nargs="+", required=True, help=".txt/.jsonl, optionally .xz/.gz")
    parser.add_argument("--validation-files", nargs="*", default=[])
    parser.add_argument("--text-mode", choices=["line", "document"], default="line",
                        help="'line' for fairseq/WikiText data, 'document' for blank-line-separated books")
    parser.add_argument("--seq-len", type=int, default=None, help="block length (default: the model's train_seq_len)")
    parser.add_argument("--output", required=True, help="Trainer output_dir; the fine-tuned model goes to OUTPUT/final")
    parser.add_argument("--cache-dir", default=".cache/alibi-lm")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT/final if it exists (swapped in only once the new one is verified)")
    parser.epilog = "After `--`, any TrainingArguments flag: -- --max_steps 100 --learning_rate 1e-4"
    return parser


def finetune(args: argparse.Namespace, trainer_args: list[str]) -> Path:
    """Run Trainer on packed blocks of the given files; returns the saved model folder, OUTPUT/final.

    OUTPUT is locked for the run, an existing OUTPUT/final is refused without `--overwrite` (before any work), and
    the new one is written to a staging folder, loaded back and verified, then renamed into place.
    """
    check_not_run_folder(args.model)  # before the lock and any work
    check_saved_config(args.model)
    final = Path(args.output) / "final"
    with lock_directory(args.output):
        cleanup_staging(args.output)
        if final.exists() and not getattr(args, "overwrite", False):
            raise OutputDirInUseError(f"{final} already exists. Pass --overwrite to replace it, or pick another "
                                      "--output.")
        return _finetune(args, trainer_args, final)


def _finetune(args: argparse.Namespace, trainer_args: list[str], final: Path) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    seq_len = args.seq_len or model.config.train_seq_len
    if not seq_len:
        raise ValueError(f"{args.model} records no train_seq_len; pass --seq-len.")
    (training_args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", args.output, "--report_to", "none", "--save_strategy", "no", *trainer_args]
    )
    datasets = {}
    for split, files in (("train", args.train_files), ("validation", args.validation_files)):
        if files:
            source = TextSource(files=tuple(files), text_mode=args.text_mode, split=split)
            datasets[split] = build_lm_dataset(source, tokenizer, seq_len, args.cache_dir).with_format("torch")
    trainer = Trainer(model=model, args=training_args, train_dataset=datasets["train"],
                      eval_dataset=datasets.get("validation"), data_collator=collate_blocks)
    trainer.train()
    if "validation" in datasets:
        logger.info("validation: %s", trainer.evaluate())
    with atomic_directory(final, overwrite=True) as staging:
        trainer.save_model(staging)
        save_tokenizer(tokenizer, staging)  # padding on the left, for batched generate()
        verify_export(staging, {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, tokenizer)
    return final


def main(argv: list[str] | None = None, prog: str = "alibi-lm finetune") -> int:
    """`alibi-lm finetune` (and `scripts/finetune_trainer.py`, which passes its own `prog` for --help)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)  # ours before `--`, Trainer's after
    folder = finetune(build_parser(prog).parse_args(argv[:split]), argv[split + 1 :])
    print(f"fine-tuned model: {folder}")
    return 0
