"""scripts/finetune_trainer.py: Trainer fine-tunes a saved ALiBi model on local text and saves a loadable model."""

import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from modeling_alibi import AlibiConfig, AlibiForCausalLM
from modeling_alibi.training import TextSource, build_lm_dataset, read_records, train_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "data" / "gutenberg-tiny" / "valid.txt"


def block_loss(folder: Path, tokenizer, cache: Path) -> float:
    blocks = build_lm_dataset(TextSource(files=(str(TRAIN),), text_mode="document"), tokenizer, 32, cache)
    batch = torch.tensor(blocks[:16]["input_ids"])
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(batch, labels=batch).loss.item()


def test_finetune_script_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    tokenizer = train_bpe_tokenizer(read_records([TRAIN], "document"), 512)
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, train_seq_len=32)
    AlibiForCausalLM(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    command = [sys.executable, str(REPO / "scripts" / "finetune_trainer.py"), str(tmp_path / "base"),
               "--train-files", str(TRAIN), "--text-mode", "document", "--output", str(tmp_path / "run"),
               "--cache-dir", str(tmp_path / "cache"), "--", "--max_steps", "30", "--learning_rate", "3e-3",
               "--per_device_train_batch_size", "8", "--use_cpu", "true", "--logging_steps", "10"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    before = block_loss(tmp_path / "base", tokenizer, tmp_path / "cache")
    after = block_loss(final, tokenizer, tmp_path / "cache")
    assert after < before - 0.3
