"""Shared fixtures: tiny configs in the spirit of transformers' model testers, seeded, offline, float32."""

import copy
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

import modeling_alibi  # noqa: F401  (registers the Auto classes)
from modeling_alibi import AlibiConfig, AlibiForCausalLM

VOCAB = 99
REPO = Path(__file__).resolve().parents[1]


def tiny_config(num_heads: int = 4, **overrides) -> AlibiConfig:
    """vocab 99, hidden 24 or 32, 2 layers, dropout off: small enough for exact CPU checks."""
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=8 * num_heads if num_heads != 4 else 32,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        intermediate_size=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        train_seq_len=16,
    )
    fields.update(overrides)
    return AlibiConfig(**fields)


def tiny_model(num_heads: int = 4, attn_implementation: str = "eager", seed: int = 0, **overrides) -> AlibiForCausalLM:
    torch.manual_seed(seed)
    model = AlibiForCausalLM._from_config(tiny_config(num_heads, **overrides), attn_implementation=attn_implementation)
    return model.eval()


def model_pair(
    num_heads: int, implementation: str, device: str = "cuda", dtype: torch.dtype = torch.float32, **overrides
) -> tuple[AlibiForCausalLM, AlibiForCausalLM]:
    """An eager reference and a model on `implementation` with the same weights, wider than `tiny_model`.

    Each model gets its own config: transformers' `_from_config` writes the backend into the config object it is
    given, so two models built from one config would silently run the same backend.
    """
    overrides = {"hidden_size": 64 * num_heads, "intermediate_size": 256 * num_heads, **overrides}
    reference = tiny_model(num_heads, "eager", **overrides).to(device, dtype)
    fast = tiny_model(num_heads, implementation, **overrides).to(device, dtype)
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def _loss_and_grads(model, loss_of, ids, autocast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_of(input_ids=ids, labels=ids)
    loss.backward()
    return loss.detach().double(), {name: p.grad.double() for name, p in model.named_parameters()}


def assert_compiled_step_as_accurate_as_eager(base: AlibiForCausalLM, compiled_loss, ids, params: torch.dtype):
    """One training step of `compiled_loss(model)` and of the eager model's loss on its full logits, on CUDA copies
    of `base` with `params` parameters (fp32 under bf16 autocast, or bf16), both against a float64 copy: the
    compiled step's error on the loss and on every gradient is at most twice the eager one's (plus 1e-3 of the
    largest gradient).

    Against float64, not against each other: with bf16 parameters the gradients themselves are bf16, and any two
    correct bf16 steps differ by ~2% of the largest gradient (the tied embedding's, measured on the CPU).
    """
    truth_model = copy.deepcopy(base).to("cuda", torch.float64)
    truth_loss, truth = _loss_and_grads(truth_model, lambda **b: truth_model(**b).loss, ids, autocast=False)
    eager, compiled = copy.deepcopy(base).to("cuda", params), copy.deepcopy(base).to("cuda", params)
    autocast = params == torch.float32
    eager_loss, eager_grads = _loss_and_grads(eager, lambda **b: eager(**b).loss, ids, autocast)
    compiled_loss, compiled_grads = _loss_and_grads(compiled, compiled_loss(compiled), ids, autocast)
    assert abs(compiled_loss - truth_loss) <= 2 * abs(eager_loss - truth_loss) + 1e-3
    scale = max(g.abs().max() for g in truth.values())
    for name, exact in truth.items():
        eager_error = (eager_grads[name] - exact).abs().max() / scale
        compiled_error = (compiled_grads[name] - exact).abs().max() / scale
        assert compiled_error <= 2 * eager_error + 1e-3, f"{name}: {compiled_error:.4f} against eager {eager_error:.4f}"


def run_interpreted(runner: str, cases: dict, tmp_path: Path) -> dict:
    """`runner`'s results for `cases`, in a fresh interpreter under TRITON_INTERPRET=1 (Triton reads it when first
    imported). The runner loads the cases from argv[1] and saves its results to argv[2], with torch.save."""
    pytest.importorskip("triton")
    torch.save(cases, tmp_path / "inputs.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", runner, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"interpreter run failed:\n{run.stdout}\n{run.stderr}"
    return torch.load(tmp_path / "out.pt")


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    torch.manual_seed(1234)
    torch.set_default_dtype(torch.float32)
    yield


@pytest.fixture(autouse=True)
def _fresh_dynamo_for_gpu_tests(request):
    """Each GPU test compiles from a clean Dynamo state. Otherwise a Python float that differs between two tests'
    models (the embedding scale, the attention scale) turns dynamic on the second compile, and torch 2.11's
    inductor passes the resulting CUDA scalars to a CPU kernel in the CUDA-graph backward: a segmentation fault (the
    shape of pytorch/pytorch#170863; found in this suite, docs/benchmarks.md, seventeenth session)."""
    if request.node.get_closest_marker("gpu") is not None:
        torch._dynamo.reset()
    yield


# One test process compiles the flex kernel for many configurations (head counts, dtypes, windows, score_mods).
# Past Dynamo's default limit of 8 recompiles it would run flex eagerly, which materializes the scores (128 GiB at
# 65,536 tokens). A model in use sees a handful of configurations; this test session sees dozens.
for _name in ("recompile_limit", "cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 64)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip cleanly on machines without CUDA (the default marker filter deselects them anyway)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
