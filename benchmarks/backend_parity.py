"""Backend parity on GPU at long length: sdpa and flex_attention against eager, fp32 and bf16, with numbers.

Builds one random-weight model (4 layers, d 512, 8 heads, or 6 heads for the interleaved slopes), runs each
backend on the same 8,192-token input, and reports max / mean absolute log-probability differences against eager
in fp32 (the reference) and against eager in the same dtype. Prints a table, writes $OUT/backend_parity.json
(OUT defaults to .). On the GPU machine:

    HF_HUB_OFFLINE=1 python3 benchmarks/backend_parity.py [--length 8192]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modeling_alibi import AlibiConfig, AlibiForCausalLM  # noqa: E402


def log_probs(model: AlibiForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits.float().log_softmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192)
    args = parser.parse_args()
    rows = []
    for heads in (8, 6):
        config = AlibiConfig(vocab_size=1000, hidden_size=64 * heads, num_hidden_layers=4, num_attention_heads=heads,
                             intermediate_size=256 * heads, hidden_dropout=0.0, train_seq_len=512)
        torch.manual_seed(0)
        weights = AlibiForCausalLM._from_config(config, attn_implementation="eager").state_dict()
        input_ids = torch.randint(3, 1000, (1, args.length), device="cuda")
        reference = None
        for dtype in (torch.float32, torch.bfloat16):
            eager_same_dtype = None
            for backend in ("eager", "sdpa", "flex_attention"):
                # A copy per model: _from_config writes the backend into the config it is given.
                model = AlibiForCausalLM._from_config(copy.deepcopy(config), attn_implementation=backend)
                model.load_state_dict(weights)
                model = model.to("cuda", dtype).eval()
                torch.cuda.reset_peak_memory_stats()
                out = log_probs(model, input_ids)
                peak = torch.cuda.max_memory_allocated() / 2**30
                if reference is None:
                    reference = out
                if backend == "eager":
                    eager_same_dtype = out
                row = dict(heads=heads, dtype=str(dtype).removeprefix("torch."), backend=backend, length=args.length,
                           max_vs_fp32_eager=float((out - reference).abs().max()),
                           mean_vs_fp32_eager=float((out - reference).abs().mean()),
                           max_vs_same_dtype_eager=float((out - eager_same_dtype).abs().max()),
                           peak_gib=round(peak, 2))
                print(json.dumps(row), flush=True)
                rows.append(row)
                del model
    with open(os.path.join(os.environ.get("OUT", "."), "backend_parity.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)
    print(f"\n{'heads':>5s} {'dtype':9s} {'backend':15s} {'max|d| vs fp32 eager':>21s} {'mean|d|':>9s} "
          f"{'max|d| vs eager same dtype':>27s} {'peak GiB':>9s}")
    for r in rows:
        print(f"{r['heads']:5d} {r['dtype']:9s} {r['backend']:15s} {r['max_vs_fp32_eager']:21.2e} "
              f"{r['mean_vs_fp32_eager']:9.2e} {r['max_vs_same_dtype_eager']:27.2e} {r['peak_gib']:9.2f}")


if __name__ == "__main__":
    main()
