"""Train an ALiBi LM with Accelerate (same as `alibi-lm train`).

    accelerate launch --config_file configuration/accelerate/single_gpu.yaml \
        scripts/train.py --config configuration/train/gutenberg-small-h100.yaml --max_steps 100
"""

import sys

from modeling_alibi.training import main

if __name__ == "__main__":
    sys.exit(main(prog="scripts/train.py"))
