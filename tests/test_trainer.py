"""transformers.Trainer fine-tunes the model: three steps on a repeated batch lower its loss, compiled or not."""

import torch
from datasets import Dataset
from torch._dynamo.utils import counters
from transformers import Trainer, TrainingArguments

from conftest import tiny_model


def test_trainer_three_steps_lower_the_loss_on_a_repeated_batch(tmp_path):
    model = tiny_model(6, "sdpa").train()
    batch = torch.randint(3, 99, (4, 24))
    dataset = Dataset.from_dict({"input_ids": batch.tolist() * 4, "labels": batch.tolist() * 4})
    with torch.no_grad():
        before = model.eval()(batch, labels=batch).loss.item()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=3e-3,
        lr_scheduler_type="constant", logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        dataloader_num_workers=0, seed=0,
    )
    trainer = Trainer(model=model.train(), args=args, train_dataset=dataset)
    result = trainer.train()
    assert result.global_step == 3
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3 and logged[-1] < logged[0]
    with torch.no_grad():
        after = model.eval()(batch, labels=batch).loss.item()
    assert after < before - 0.05


def _losses(tmp_path, **compile_args) -> tuple[list[float], int]:
    model = tiny_model(6, "sdpa", seed=1).train()
    batch = torch.randint(3, 99, (4, 24), generator=torch.Generator().manual_seed(2))
    dataset = Dataset.from_dict({"input_ids": batch.tolist() * 4, "labels": batch.tolist() * 4})
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=3e-3,
        lr_scheduler_type="constant", logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        dataloader_num_workers=0, seed=0, **compile_args,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    frames = counters["frames"]["ok"]
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], counters["frames"]["ok"] - frames


def test_trainer_torch_compile_trains_like_eager(tmp_path):
    """`TrainingArguments(torch_compile=True)` traces the model's forward and backward (AOTAutograd's graphs, run
    without inductor's code generation on the CPU) and logs the uncompiled run's losses."""
    eager, eager_frames = _losses(tmp_path / "eager")
    compiled, compiled_frames = _losses(tmp_path / "compiled", torch_compile=True, torch_compile_backend="aot_eager")
    assert eager_frames == 0 and compiled_frames > 0  # Dynamo traced the compiled run only
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-5)
