"""fairseq-eval-lm perplexity: `evaluate_perplexity` against an independent, obviously-correct reference."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from torch import nn

from modeling_alibi.evaluation import CORPUS_PERPLEXITY_METRIC_PATH, encode_text, evaluate_perplexity
from modeling_alibi.evaluation.perplexity import main
from modeling_alibi.fairseq import (
    build_fairseq_dictionary,
    eval_lm_windows,
    fairseq_tokenizer,
    write_fairseq_dictionary,
)
from modeling_alibi.tokenization import encode_lines, read_lines

EOS, PAD = 2, 1
WT103_VALID = Path(__file__).resolve().parents[1] / "data" / "wikitext-103" / "wiki.valid.tokens"


class ContextFakeLM(nn.Module):
    """Tiny deterministic causal LM: the prediction at t depends on x_t, the running mean of x_<=t and
    the position t inside the window, so any windowing mistake changes the scores."""

    def __init__(self, vocab_size: int = 50, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(vocab_size, dim, generator=gen))
        self.out = nn.Parameter(torch.randn(vocab_size, dim, generator=gen))
        self.pos = nn.Parameter(0.1 * torch.randn(dim, generator=gen))

    def log_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        e = self.emb[input_ids]  # (b, T, dim)
        steps = torch.arange(1, input_ids.shape[1] + 1, dtype=e.dtype)
        mean = e.cumsum(1) / steps[None, :, None]  # causal running mean
        h = torch.tanh(e + mean + self.pos * steps[None, :, None])
        return (2.0 * h @ self.out.T).log_softmax(-1)  # (b, T, V)


class TokenLogProbsFake(ContextFakeLM):
    def token_log_probs(self, input_ids, target_ids, attention_mask=None) -> torch.Tensor:
        picked = self.log_probs(input_ids).gather(-1, target_ids.clamp(min=0)[..., None]).squeeze(-1)
        return picked.masked_fill(target_ids == -100, 0.0)


class LogitsOnlyFake(ContextFakeLM):
    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.log_probs(input_ids) + 3.0)  # unnormalised on purpose


def reference_eval_lm(
    model: ContextFakeLM, stream: list[int], tokens_per_sample: int, context_window: int
) -> tuple[float, int]:
    """fairseq-eval-lm written out literally (TokenBlockDataset + LMContextWindowDataset), one window at a
    time: returns (sum of ln p, number of scored tokens)."""
    block = tokens_per_sample - context_window
    prev: list[int] = []
    total, count = 0.0, 0
    for s in range(0, len(stream), block):
        e = min(s + block, len(stream))
        target = stream[s:e]
        source = [EOS] + stream[0 : e - 1] if s == 0 else stream[s - 1 : e - 1]  # shifted right by one
        window = prev + source if context_window > 0 else source
        offset = len(prev) if context_window > 0 else 0
        prev = window[-context_window:] if context_window > 0 else []
        with torch.no_grad():
            lp = model.log_probs(torch.tensor([window]))[0].double()  # (T, V)
        for i, tok in enumerate(target):
            total += lp[offset + i, tok].item()
            count += 1
    return total, count


@pytest.fixture(scope="module")
def fake_stream() -> list[int]:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(3, 50, (157,), generator=gen).tolist()  # not a multiple of any block size


@pytest.mark.parametrize("fake", [TokenLogProbsFake, LogitsOnlyFake], ids=["token_log_probs", "logits"])
@pytest.mark.parametrize("context_window", [0, 5, 15], ids=["nonoverlapping", "c5", "sliding"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_matches_reference_windowing(fake_stream, fake, context_window: int, batch_size: int) -> None:
    model = fake()
    total, count = reference_eval_lm(model, fake_stream, 16, context_window)
    result = evaluate_perplexity(model, fake_stream, 16, context_window, batch_size=batch_size, progress=False)
    assert result.num_tokens == count == len(fake_stream)  # every token scored exactly once
    assert result.nll_sum == pytest.approx(-total, rel=1e-6)
    assert result.loss_base2 == pytest.approx(-total / count / math.log(2), rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(-total / count), rel=1e-6)
    assert result.perplexity == pytest.approx(2**result.loss_base2, rel=1e-12)


def test_windows_partition_the_stream() -> None:
    for n, length, ctx in [(157, 16, 0), (157, 16, 15), (157, 16, 5), (3, 16, 4), (32, 16, 0)]:
        windows = list(eval_lm_windows(n, length, ctx))
        assert [w[1] for w in windows] == list(range(0, n, length - ctx))
        assert windows[-1][2] == n and all(b - c <= ctx and e - c <= length for c, b, e in windows)
    with pytest.raises(ValueError, match="smaller than tokens_per_sample"):
        list(eval_lm_windows(10, 8, 8))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="non-empty 1-D"):
        evaluate_perplexity(TokenLogProbsFake(), [], 16, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_perplexity(TokenLogProbsFake(), [4, 5], 16, batch_size=0, progress=False)


def test_minus_inf_targets_are_skipped_like_fairseq(fake_stream) -> None:
    class Impossible(TokenLogProbsFake):
        def token_log_probs(self, input_ids, target_ids, attention_mask=None):
            lp = super().token_log_probs(input_ids, target_ids, attention_mask)
            return lp.masked_fill(target_ids == 7, float("-inf"))

    n_seven = fake_stream.count(7)
    assert n_seven > 0
    result = evaluate_perplexity(Impossible(), fake_stream, 16, batch_size=3, progress=True)
    assert result.num_inf_skipped == n_seven and result.num_tokens == len(fake_stream) - n_seven


def test_restores_training_mode(fake_stream) -> None:
    model = TokenLogProbsFake().train()
    evaluate_perplexity(model, fake_stream, 16, progress=False)
    assert model.training


# ---- real models, saved to disk: CLI and the `evaluate` metric ------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A small word-level corpus (first WikiText-103 valid lines), its fairseq tokenizer and stream."""
    root = tmp_path_factory.mktemp("corpus")
    lines = list(read_lines(WT103_VALID))[:60]
    (root / "data.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_fairseq_dictionary(build_fairseq_dictionary(lines=lines), root / "dict.txt")
    tokenizer = fairseq_tokenizer(root / "dict.txt")
    return {"root": root, "lines": lines, "tokenizer": tokenizer, "stream": encode_lines(tokenizer, lines)}


def _save_tiny_gpt2(folder: Path, tokenizer) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=2, pad_token_id=1)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def test_cli_eval_ppl_writes_json(tmp_path, corpus) -> None:
    model = _save_tiny_gpt2(tmp_path / "model", corpus["tokenizer"])
    out = tmp_path / "result.json"
    argv = [str(tmp_path / "model"), "--data", str(corpus["root"] / "data.txt"), "--tokens-per-sample", "32",
            "--context-window", "8", "--batch-size", "4", "--device", "cpu", "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    written = json.loads(out.read_text())
    expected = evaluate_perplexity(model, corpus["stream"], 32, 8, batch_size=1, progress=False)
    assert written["num_tokens"] == len(corpus["stream"]) == expected.num_tokens
    assert written["loss_base2"] == pytest.approx(expected.loss_base2, rel=1e-6)
    assert written["context_window"] == 8 and written["perplexity"] > 1


@pytest.mark.parametrize("text_mode", ["fairseq", "document"])
def test_cli_eval_ppl_text_mode_is_scored_and_reported(tmp_path, corpus, capsys, text_mode) -> None:
    """--text-mode reads the data as extrapolate and the demo do; the table and the JSON say which mode it was."""
    model = _save_tiny_gpt2(tmp_path / "model", corpus["tokenizer"])
    out = tmp_path / "result.json"
    data = corpus["root"] / "data.txt"
    argv = [str(tmp_path / "model"), "--data", str(data), "--tokens-per-sample", "32", "--text-mode", text_mode,
            "--device", "cpu", "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    stream = encode_text(corpus["tokenizer"], data, text_mode)
    assert (stream == corpus["stream"]) == (text_mode == "fairseq")  # document mode: one </s> per paragraph
    expected = evaluate_perplexity(model, stream, 32, progress=False)
    written = json.loads(out.read_text())
    assert written["text_mode"] == text_mode and written["num_tokens"] == len(stream)
    assert written["perplexity"] == pytest.approx(expected.perplexity, rel=1e-9)
    assert re.search(rf"^text mode +{text_mode}$", capsys.readouterr().out, re.M)


def test_cli_eval_ppl_help_names_no_spec_file(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "spec" not in text and "--text-mode {fairseq,line,document}" in text


def _load_metric():
    import evaluate

    return evaluate.load(CORPUS_PERPLEXITY_METRIC_PATH)


def test_metric_loads_offline_and_matches_function(tmp_path, corpus) -> None:
    model = _save_tiny_gpt2(tmp_path / "model", corpus["tokenizer"])
    metric = _load_metric()
    assert "mean of per-text perplexities".lower() in metric.description.lower()
    # Hugging Face wikitext rows: blank lines are "" and text rows keep their "\n"
    rows = [line + "\n" if line.strip() else "" for line in corpus["lines"]]
    got = metric.compute(
        predictions=rows, model_id=str(tmp_path / "model"), tokens_per_sample=32, batch_size=2, device="cpu"
    )
    expected = evaluate_perplexity(model, corpus["stream"], 32, progress=False)
    assert got["num_tokens"] == expected.num_tokens
    assert got["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)


def test_metric_with_alibi_model(tmp_path, corpus) -> None:
    """Needs AlibiForCausalLM (modeling_alibi/modeling_alibi.py): deliberately not skipped."""
    from modeling_alibi import AlibiConfig, AlibiForCausalLM

    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=len(corpus["tokenizer"]), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64, train_seq_len=16)
    model = AlibiForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "alibi")
    corpus["tokenizer"].save_pretrained(tmp_path / "alibi")
    stream = corpus["stream"]
    expected = evaluate_perplexity(model, stream, 32, 8, batch_size=3, progress=False)

    class LogitsOnly(nn.Module):  # the fallback path must agree with AlibiForCausalLM.token_log_probs
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    via_logits = evaluate_perplexity(LogitsOnly(model), stream, 32, 8, batch_size=3, progress=False)
    assert via_logits.loss_base2 == pytest.approx(expected.loss_base2, rel=1e-5)
    got = _load_metric().compute(predictions=corpus["lines"], model_id=str(tmp_path / "alibi"),
                                 tokens_per_sample=32, context_window=8, batch_size=3, device="cpu")
    assert got["num_tokens"] == len(stream)
    assert got["loss_base2"] == pytest.approx(expected.loss_base2, rel=1e-6)
