"""transformers.Trainer fine-tunes the model: three steps on a repeated batch lower its loss."""

import torch
from datasets import Dataset
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
