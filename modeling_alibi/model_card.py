"""The model card (README.md) of an exported folder, built from the model, its run's results and Hub metadata.

The YAML front matter comes from huggingface_hub's `ModelCardData` and `EvalResult`, so the Hub parses its
model-index; the body is Markdown: a config table, training data and length, an evaluation table at 1x-16x the
training length when the run left an `extrapolation.json`, a text-in/text-out example, limitations and a license.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PreTrainedModel

MULTIPLES = (1, 2, 4, 8, 16)  # evaluation lengths shown, as multiples of the training length L

BODY = """
# {name}

An ALiBi causal language model (["Train Short, Test Long"](https://arxiv.org/abs/2108.12409), Press, Smith &
Lewis, ICLR 2022), exported by alibi-lm. ALiBi adds `-m_h * (i - j)` to each
attention score instead of using position embeddings, so the model runs on inputs longer than it was trained on.

## Model

| field | value |
| --- | --- |
{config_table}

## Training data

{training}

## Evaluation

{evaluation}

## Use

The model's code ships in this folder, so transformers loads it with `trust_remote_code=True` (or without it
where the `alibi-lm` package, installed from its repository, is imported: it is not on PyPI).

```python
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, pipeline

model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
tokenizer = PreTrainedTokenizerFast.from_pretrained("{repo}")  # a standard tokenizer: no remote code
generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
print(generator("The old house stood", max_new_tokens=40, do_sample=True, top_p=0.9)[0]["generated_text"])
```

{tokenizer_note}
`AutoTokenizer.from_pretrained("{repo}")` works too, but transformers reads `config.json` first and, without
`trust_remote_code`, asks whether to run its custom code; `trust_remote_code=False` (or answering no) loads the
same tokenizer without running any.

## Limitations

- {size_note}
- Quality past the training length is measured only at the lengths in the evaluation table, if any. ALiBi lets the
  model run on long inputs; it does not make it use distant context it never learned to use.
- Generated text reflects the training data, with its biases and errors; it is not checked for facts.
{notes}
## License

{license}
"""


def _config_table(model: PreTrainedModel) -> str:
    config = model.config
    rows = [
        ("parameters", f"{model.num_parameters():,}"),
        ("layers / width / heads", f"{config.num_hidden_layers} / {config.hidden_size} / {config.num_attention_heads}"),
        ("feed-forward width", f"{config.intermediate_size:,}"),
        ("vocabulary", f"{config.vocab_size:,}"),
        ("training length L", f"{config.train_seq_len} tokens (not a length cap)" if config.train_seq_len
         else "not recorded"),
        ("position encoding", config.position_encoding),
        ("ALiBi bias max", f"{config.alibi_bias_max:g}"),
    ]
    return "\n".join(f"| {field} | {value} |" for field, value in rows)


def find_evaluation(model: PreTrainedModel) -> Path | None:
    """The run's extrapolation.json near the folder the model was loaded from (RUN/final -> RUN), if any."""
    source = getattr(model.config, "_name_or_path", "") or ""
    if not source or not Path(source).is_dir():
        return None
    folder = Path(source).resolve()
    for base in (folder, folder.parent):
        for candidate in (base / "extrapolation.json", base / "extrapolation" / "extrapolation.json"):
            if candidate.is_file():
                return candidate
    return None


def evaluation_rows(path: Path | None, train_seq_len: int | None) -> list[dict]:
    """Rows of an extrapolation.json at 1x-16x of L (all rows if L is unknown), sorted by model and length."""
    if path is None:
        return []
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    if train_seq_len:
        rows = [r for r in rows if r["length"] in {k * train_seq_len for k in MULTIPLES}]
    return sorted(rows, key=lambda r: (r["model"], r["length"]))


def _evaluation_text(rows: list[dict], train_seq_len: int | None) -> str:
    if not rows:
        return "No evaluation results were found for this export (`alibi-lm extrapolate` writes them)."
    lines = ["Perplexity (lower is better) at each evaluation length, from the run's extrapolation.json:", "",
             "| model | length | × L | perplexity |", "| --- | --- | --- | --- |"]
    for r in rows:
        multiple = f"{r['length'] / train_seq_len:g}×" if train_seq_len else "–"
        lines.append(f"| {r['model']} | {r['length']:,} | {multiple} | {r['perplexity']:.2f} |")
    return "\n".join(lines)


def _eval_results(rows: list[dict], dataset: str) -> list[EvalResult]:
    """One perplexity result per length of the first model in the table (the exported one in a single-run file)."""
    if not rows:
        return []
    first = rows[0]["model"]
    return [EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=dataset,
                       metric_type="perplexity", metric_value=round(r["perplexity"], 4),
                       metric_name=f"perplexity at {r['length']} tokens", metric_config=f"length={r['length']}")
            for r in rows if r["model"] == first]


def build_model_card(
    model: PreTrainedModel, name: str, license: str = "apache-2.0", datasets: list[str] | None = None,
    notes: str = "", evaluation: str | Path | None = None, has_tokenizer: bool = True,
) -> ModelCard:
    """The card of `model`; `evaluation` is an extrapolation.json (default: the run's, found by `find_evaluation`)."""
    config = model.config
    rows = evaluation_rows(evaluation or find_evaluation(model), config.train_seq_len)
    data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation", license=license, datasets=datasets or None,
        tags=["alibi", "causal-lm", "custom_code"], model_name=name,
        eval_results=_eval_results(rows, (datasets or ["custom"])[0]) or None,
    )
    training = ("Datasets: " + ", ".join(f"`{d}`" for d in datasets) + "." if datasets else
                "Not recorded with this export (`alibi-lm export --dataset NAME` names it).")
    if config.train_seq_len:
        training += f" Trained on sequences of L = {config.train_seq_len} tokens."
    size = model.num_parameters()
    body = BODY.format(
        name=name, repo=name, config_table=_config_table(model), training=training,
        evaluation=_evaluation_text(rows, config.train_seq_len), license=_license_text(license),
        size_note=(f"A small model ({size:,} parameters): a demonstration of the method, not a useful writer."
                   if size < 100_000_000 else f"{size:,} parameters; quality depends on the training run."),
        notes=f"\n{notes}\n" if notes else "",
        tokenizer_note=("The tokenizer pads on the left, as batched generation needs: "
                        "`generator(prompts, batch_size=8)`."
                        if has_tokenizer else
                        "**This folder holds no tokenizer**: load the one the model was trained with instead."),
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _license_text(license: str) -> str:
    if license == "apache-2.0":
        return "Apache License 2.0 (the license of the weights and code in this folder)."
    return f"`{license}` (as declared in the metadata above)."


def write_model_card(
    model: PreTrainedModel, directory: str | Path, name: str, license: str = "apache-2.0",
    datasets: list[str] | None = None, notes: str = "", evaluation: str | Path | None = None,
) -> None:
    """Write README.md, the model card, into `directory` (after the tokenizer, whose presence the card states)."""
    has_tokenizer = Path(directory, "tokenizer_config.json").is_file()
    card = build_model_card(model, name, license, datasets, notes, evaluation, has_tokenizer)
    card.save(Path(directory, "README.md"))


__all__ = ["build_model_card", "evaluation_rows", "find_evaluation", "write_model_card"]
