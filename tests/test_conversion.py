"""fairseq -> AlibiForCausalLM conversion, judged by the independent reference in tests/fairseq_reference.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_alibi.fairseq import UnsafeCheckpointError, convert_fairseq_checkpoint, fairseq_log_probs
from modeling_alibi.fairseq.conversion import main
from modeling_alibi.modeling_alibi import output_cache
from tests.fairseq_fixtures import make_fairseq_checkpoint, save_fairseq_checkpoint, write_fixture_dict
from tests.fairseq_reference import reference_log_probs

TPS = 16  # tokens_per_sample of the fixtures; parity is checked up to 8x this length
ATOL = 1e-5

CASES = [
    pytest.param("transformer_lm_wiki103", 4, "fp32", False, False, id="wt103-h4"),
    pytest.param("transformer_lm_wiki103", 6, "fp32", False, False, id="wt103-h6"),
    pytest.param("transformer_lm_wiki103", 6, "fp16_trained", False, False, id="wt103-h6-fp16-duplicated-ties"),
    pytest.param("transformer_lm_wiki103", 4, "float16", False, False, id="wt103-h4-float16"),
    pytest.param("transformer_lm_wiki103", 4, "fp32", False, True, id="wt103-h4-legacy-args"),
    pytest.param("transformer_lm", 4, "fp32", False, False, id="postnorm-h4-project-in-out"),
    pytest.param("transformer_lm", 6, "fp16_trained", True, False, id="postnorm-h6-shared-embed-fp16"),
    pytest.param("transformer_lm_big", 4, "float16", True, False, id="big-h4-shared-float16"),
    pytest.param("transformer_lm_big", 6, "fp32", False, True, id="big-h6-legacy-args"),
    pytest.param("transformer_lm_gpt", 6, "fp32", False, False, id="gpt-h6-gelu"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conversion")
    write_fixture_dict(root / "dict.txt", 104)
    return root


_CONVERTED: dict[str, tuple[dict, Path]] = {}


def _convert(workdir: Path, arch: str, heads: int, variant: str, share: bool, legacy: bool) -> tuple[dict, Path]:
    """Save a fixture checkpoint and convert it once per module (with --verify); returns (state, folder)."""
    name = f"{arch}-h{heads}-{variant}-{share}-{legacy}"
    if name in _CONVERTED and _CONVERTED[name][1].exists():
        return _CONVERTED[name]
    state = save_fairseq_checkpoint(workdir / f"{name}.pt", arch, heads=heads, variant=variant, legacy=legacy,
                                    share_input_output_embed=share, tokens_per_sample=TPS)
    out = convert_fairseq_checkpoint(workdir / f"{name}.pt", workdir / "dict.txt", workdir / name, verify=True)
    _CONVERTED[name] = state, out
    return state, out


def _model_cfg(state: dict) -> dict:
    return vars(state["args"]) if state["args"] is not None else state["cfg"]["model"]


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(4, 104, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 2  # fairseq's start symbol
    return ids


@pytest.mark.parametrize("arch, heads, variant, share, legacy", CASES)
def test_converted_log_probs_match_reference(workdir, arch, heads, variant, share, legacy) -> None:
    state, out = _convert(workdir, arch, heads, variant, share, legacy)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.train_seq_len == TPS and model.config.max_position_embeddings is None
    sd, cfg = state["model"], _model_cfg(state)

    ids = _ids(2, 8 * TPS)  # 8x the training length: no cap anywhere
    lengths = [8 * TPS, 5 * TPS - 3]
    batch = ids.clone()
    batch[1, lengths[1]:] = 1  # right padding with <pad>
    mask = (torch.arange(ids.shape[1]) < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        ours = model(batch, attention_mask=mask).logits.float().log_softmax(-1)  # (b, T, V)
    for row, length in enumerate(lengths):
        expected = reference_log_probs(sd, cfg, ids[row : row + 1, :length])[0]
        torch.testing.assert_close(ours[row, :length].double(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "arch, heads, length",
    [("transformer_lm_wiki103", 6, 8 * TPS), ("transformer_lm", 4, 3 * TPS), ("transformer_lm_big", 6, 3 * TPS)],
)
def test_kv_cache_decoding_matches_reference(workdir, arch: str, heads: int, length: int) -> None:
    state, out = _convert(workdir, arch, heads, "fp32", False, False)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _ids(1, length, seed=3)
    expected = reference_log_probs(state["model"], state["cfg"]["model"], ids)[0]  # (T, V)
    past, steps = None, []
    with torch.no_grad():
        for t in range(length):
            output = model(ids[:, t : t + 1], cache=past, use_cache=True)
            past = output_cache(output)
            steps.append(output.logits[0, -1].float().log_softmax(-1))
    torch.testing.assert_close(torch.stack(steps).double(), expected, atol=ATOL, rtol=0)


def test_config_derived_from_checkpoint(workdir) -> None:
    _, wt103 = _convert(workdir, "transformer_lm_wiki103", 4, "fp32", False, False)
    config = json.loads((wt103 / "config.json").read_text())
    assert config["adaptive_input_cutoffs"] == config["adaptive_softmax_cutoffs"] == [20, 60]
    assert config["tie_adaptive_weights"] and config["tie_adaptive_proj"] and config["normalize_before"]
    assert not config["final_layer_norm"] and config["scale_embedding"] and config["vocab_size"] == 104
    _, plain = _convert(workdir, "transformer_lm", 4, "fp32", False, False)
    config = json.loads((plain / "config.json").read_text())
    assert config["input_embedding_size"] == config["output_embedding_size"] == 24
    assert not config["normalize_before"] and not config["final_layer_norm"]
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json", "README.md", "modeling_alibi.py"):
        assert (plain / name).exists(), name
    tokenizer = AutoTokenizer.from_pretrained(plain)
    assert tokenizer("w0000 w0099 nope")["input_ids"] == [4, 103, 3, 2]


def test_fairseq_log_probs_of_verify_equals_independent_reference() -> None:
    for arch in ("transformer_lm_wiki103", "transformer_lm", "transformer_lm_gpt"):
        state = make_fairseq_checkpoint(arch, heads=6)
        ids = _ids(2, 20)
        torch.testing.assert_close(
            fairseq_log_probs(state["model"], state["cfg"]["model"], ids),
            reference_log_probs(state["model"], state["cfg"]["model"], ids),
            atol=1e-10, rtol=0,
        )


def test_bfloat16_output_and_cli(workdir) -> None:
    save_fairseq_checkpoint(workdir / "cli.pt", "transformer_lm_big", heads=4, tokens_per_sample=TPS)
    out = workdir / "cli-bf16"
    assert main(
        [str(workdir / "cli.pt"), "--dict", str(workdir / "dict.txt"), "--output", str(out), "--dtype", "bfloat16"]
    ) == 0
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16
    with pytest.raises(FileExistsError, match="exists"):
        main([str(workdir / "cli.pt"), "--dict", str(workdir / "dict.txt"), "--output", str(out)])


def _leftovers(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if name in p.name]


@pytest.mark.parametrize("problem", ["unknown-key", "missing-key", "dict-size", "malicious", "bad-tie"])
def test_failed_conversion_leaves_nothing(tmp_path, problem: str) -> None:
    state = make_fairseq_checkpoint("transformer_lm_wiki103", tokens_per_sample=TPS)
    write_fixture_dict(tmp_path / "dict.txt", 96 if problem == "dict-size" else 104)
    expected: tuple[type[Exception], str]
    if problem == "unknown-key":
        state["model"]["decoder.layers.0.self_attn.rotary.weight"] = torch.zeros(2)
        expected = (ValueError, "decoder.layers.0.self_attn.rotary.weight")
    elif problem == "missing-key":
        del state["model"]["decoder.layers.1.fc2.bias"]
        expected = (ValueError, "model.layers.1.mlp.fc2.bias")
    elif problem == "dict-size":
        expected = (ValueError, "92 lines")
    elif problem == "malicious":
        state["extra_state"] = _Payload(tmp_path / "marker")
        expected = (UnsafeCheckpointError, "Refusing")
    else:
        state["model"]["decoder.adaptive_softmax.head.word_proj.weight"] = (
            state["model"]["decoder.adaptive_softmax.head.word_proj.weight"] + 1
        )
        expected = (ValueError, "tied copy")
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(expected[0], match=expected[1]):
        convert_fairseq_checkpoint(tmp_path / "ckpt.pt", tmp_path / "dict.txt", tmp_path / "out", verify=True)
    assert _leftovers(tmp_path, "out") == [] and not (tmp_path / "marker").exists()


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch) -> None:
    save_fairseq_checkpoint(tmp_path / "ckpt.pt", "transformer_lm", tokens_per_sample=TPS)
    write_fixture_dict(tmp_path / "dict.txt", 104)

    def broken_card(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("modeling_alibi.hub.write_model_card", broken_card)
    with pytest.raises(OSError, match="disk full"):
        convert_fairseq_checkpoint(tmp_path / "ckpt.pt", tmp_path / "dict.txt", tmp_path / "out")
    assert _leftovers(tmp_path, "out") == []


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ---- full WikiText-103 size (slow: about a minute and ~4 GB of RAM on 2 CPU cores) ------------------------

_FULL_SIZE_CONVERT = """
import resource, sys, torch
from tests.fairseq_fixtures import WT103_VOCAB_SIZE, save_fairseq_checkpoint, write_fixture_dict
from modeling_alibi.fairseq import convert_fairseq_checkpoint
root = sys.argv[1]
save_fairseq_checkpoint(f"{root}/wt103.pt", "transformer_lm_wiki103", heads=8, layers=16, embed_dim=1024,
                        ffn_dim=4096, cutoffs="20000,60000", vocab_size=WT103_VOCAB_SIZE, variant="fp16_trained",
                        tokens_per_sample=3072, max_tokens=3072)
write_fixture_dict(f"{root}/dict.txt", WT103_VOCAB_SIZE)
convert_fairseq_checkpoint(f"{root}/wt103.pt", f"{root}/dict.txt", f"{root}/out", verify=True)
print("PEAK_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""

_FULL_SIZE_FORWARD = """
import resource, sys, torch
import modeling_alibi
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1] + "/out").eval()
print("PARAMS", model.num_parameters())
for p in model.parameters():  # page the memory-mapped weights in, so the peak below is the forward's own
    p.data.add_(0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
# Uniform ids are the worst case for an adaptive softmax: 78% of the targets fall in the 207,744-word tail.
ids = torch.randint(4, model.config.vocab_size, (1, 3072), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    out = model(ids, labels=ids)
assert out.logits is None and torch.isfinite(out.loss)
print("LOSS", out.loss.item())
print("BASE_MB", base, "PEAK_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _run_measured(code: str, *args: str) -> dict[str, float]:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    words = done.stdout.split()
    return {words[i]: float(words[i + 1]) for i in range(len(words) - 1) if words[i].isupper()}


@pytest.mark.slow
def test_full_size_wt103_converts_and_runs_3072_tokens(tmp_path) -> None:
    """246,933,504 parameters, V = 267,744: convert (with --verify), then a 3,072-token forward + loss whose
    peak memory stays far below one (L x V) fp32 tensor (3.3 GB)."""
    converted = _run_measured(_FULL_SIZE_CONVERT, str(tmp_path))
    forward = _run_measured(_FULL_SIZE_FORWARD, str(tmp_path))
    print(f"conversion peak RSS {converted['PEAK_MB']:.0f} MB; forward+loss peak RSS {forward['PEAK_MB']:.0f} MB "
          f"(after loading {forward['BASE_MB']:.0f} MB)")
    assert forward["PARAMS"] == 246_933_504
    assert forward["PEAK_MB"] - forward["BASE_MB"] < 3072 * 267_744 * 4 / 2**20


def test_converted_folder_loads_with_trust_remote_code_where_the_package_is_hidden(workdir, tmp_path) -> None:
    """The adaptive wt103 layout ships as remote code: a fresh process without modeling_alibi reproduces it."""
    import subprocess
    import sys

    from tests.test_remote_code import LOAD_HIDDEN

    _, folder = _convert(workdir, "transformer_lm_wiki103", 6, "fp32", False, False)
    ids = _ids(1, 3 * TPS).tolist()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", LOAD_HIDDEN, str(folder), json.dumps(ids)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["module"].startswith("transformers_modules.")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()  # in-process, through the registered package
    torch.testing.assert_close(torch.tensor(loaded["logits"]), model(torch.tensor(ids)).logits, atol=1e-5, rtol=0)
