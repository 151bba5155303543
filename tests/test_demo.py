"""The README's main command, shortened: trains both models, writes the report, generates past the training length,
and reads well: the continuation printed as text, the offset at L stated, stderr free of the libraries' chatter."""

import json

from modeling_alibi.cli import main as cli_main
from modeling_alibi.demo import summarize
from modeling_alibi.evaluation import ExtrapolationPoint

# docs/extrapolation.md's CPU run
DOCS_RUN = {"alibi": (231.59, 230.32, 229.50, 229.20), "sinusoidal": (354.76, 365.64, 398.48, 443.82)}


def test_summary_states_the_offset_at_L_and_each_drift():
    points = [ExtrapolationPoint(model, 64, length, 0, 1000, 0.0, ppl)
              for model, values in DOCS_RUN.items() for length, ppl in zip((64, 128, 256, 512), values, strict=True)]
    lines = summarize(points, 64).splitlines()
    assert lines[0].startswith("At L=64 the sinusoidal model already starts 53% worse than ALiBi (354.76 vs 231.59)")
    assert lines[1] == "From L to 8xL (512 tokens) alibi changes by -1.0%."
    assert lines[2] == "From L to 8xL (512 tokens) sinusoidal changes by +25.1%."


def test_demo_end_to_end_with_few_steps(tmp_path, capsys):
    assert cli_main(["demo", "--output", str(tmp_path), "--steps", "15", "--eval-tokens", "2048"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    points = json.loads((tmp_path / "extrapolation" / "extrapolation.json").read_text())
    expected = {(m, n) for m in ("alibi", "sinusoidal") for n in (64, 128, 256, 512)}
    assert {(p["model"], p["length"]) for p in points} == expected
    assert (tmp_path / "extrapolation" / "extrapolation.png").stat().st_size > 1024
    for encoding in ("alibi", "sinusoidal"):
        config = json.loads((tmp_path / encoding / "final" / "config.json").read_text())
        assert config["position_encoding"] == encoding and config["train_seq_len"] == 64
    assert "3x its training length" in printed and "| alibi | 64 |" in printed
    assert "Two models of 1,317,632 parameters each" in printed  # what docs/extrapolation.md says
    assert "At L=64 the sinusoidal model already starts " in printed
    generated = printed.split("and the model continues:\n", 1)[1].split("\nOutputs:", 1)[0]
    assert generated.strip() and "\\n" not in generated and not generated.strip().startswith(("'", '"'))
    for chatter in ("Generating train split", "Tokenizing", "Saving the dataset", "Writing model shards",
                    "Loading weights"):
        assert chatter not in captured.err, chatter
