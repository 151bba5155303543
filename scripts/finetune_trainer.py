"""Fine-tune an ALiBi model with transformers.Trainer (same as `alibi-lm finetune`).

    python scripts/finetune_trainer.py MODEL_DIR --train-files data/gutenberg-tiny/train.txt --text-mode document \
        --output outputs/finetune -- --max_steps 200 --learning_rate 1e-4 --per_device_train_batch_size 8
"""

import sys

from modeling_alibi.training.finetuning import main

if __name__ == "__main__":
    sys.exit(main(prog="scripts/finetune_trainer.py"))
