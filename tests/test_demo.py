"""The README's main command, shortened: trains both models, writes the report, generates past the training length."""

import json

from modeling_alibi.cli import main as cli_main


def test_demo_end_to_end_with_few_steps(tmp_path, capsys):
    assert cli_main(["demo", "--output", str(tmp_path), "--steps", "15", "--eval-tokens", "2048"]) == 0
    printed = capsys.readouterr().out
    points = json.loads((tmp_path / "extrapolation" / "extrapolation.json").read_text())
    expected = {(m, n) for m in ("alibi", "sinusoidal") for n in (64, 128, 256, 512)}
    assert {(p["model"], p["length"]) for p in points} == expected
    assert (tmp_path / "extrapolation" / "extrapolation.png").stat().st_size > 1024
    for encoding in ("alibi", "sinusoidal"):
        config = json.loads((tmp_path / encoding / "final" / "config.json").read_text())
        assert config["position_encoding"] == encoding and config["train_seq_len"] == 64
    assert "3x its training length" in printed and "| alibi | 64 |" in printed
