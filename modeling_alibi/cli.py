"""The `alibi-lm` command: one subcommand per task, each implemented by a module's `main(argv)`."""

from __future__ import annotations

import importlib
import logging
import sys

# subcommand -> (module, one-line help). Modules are imported only when their subcommand runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("modeling_alibi.demo", "train short, evaluate long, generate: the README's main job"),
    "export": ("modeling_alibi.hub", "write a Hub-ready folder (weights, remote code, card)"),
    "convert-fairseq": ("modeling_alibi.fairseq.conversion", "convert a fairseq ALiBi checkpoint"),
    "eval-ppl": ("modeling_alibi.evaluation.perplexity", "corpus perplexity with fairseq-eval-lm semantics"),
    "train": ("modeling_alibi.training.loop", "train with Accelerate (use `accelerate launch` for several GPUs)"),
    "extrapolate": ("modeling_alibi.evaluation.extrapolation", "perplexity against evaluation length, table and plot"),
    "finetune": ("modeling_alibi.training.finetuning", "fine-tune a saved model with transformers.Trainer"),
}


def usage() -> str:
    lines = ["usage: alibi-lm COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `alibi-lm COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"alibi-lm: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
