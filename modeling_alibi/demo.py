"""`alibi-lm demo`: build a tiny ALiBi model, save it, reload it through the Auto classes, generate past its training length."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_alibi import AlibiConfig
from .hub import export_for_hub
from .modeling_alibi import AlibiForCausalLM

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alibi-lm demo", description=__doc__)
    parser.add_argument("--output", default="outputs/demo", help="where the exported model goes")
    parser.add_argument("--train-seq-len", type=int, default=32)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=256, hidden_size=96, num_hidden_layers=2, num_attention_heads=6,
                         intermediate_size=256, train_seq_len=args.train_seq_len)
    model = AlibiForCausalLM(config).eval()
    out = export_for_hub(model, Path(args.output), name="alibi-demo", overwrite=True)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    logger.info("reloaded %s with config %s", type(reloaded).__name__, type(AutoConfig.from_pretrained(out)).__name__)

    prompt = torch.randint(3, 256, (1, 2 * args.train_seq_len))
    generated = reloaded.generate(prompt, max_new_tokens=6 * args.train_seq_len, min_new_tokens=6 * args.train_seq_len,
                                  do_sample=False)
    same = torch.equal(generated, model.generate(prompt, max_new_tokens=6 * args.train_seq_len,
                                                 min_new_tokens=6 * args.train_seq_len, do_sample=False))
    print(f"model: {model.num_parameters():,} parameters, {config.num_attention_heads} heads, "
          f"backend {reloaded.config._attn_implementation}, trained length {config.train_seq_len}")
    print(f"exported to {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    print(f"generated {generated.shape[1]} tokens ({generated.shape[1] // args.train_seq_len}x the training length) "
          f"from a {prompt.shape[1]}-token prompt; reloaded model agrees with the original: {same}")
    return 0 if same else 1
