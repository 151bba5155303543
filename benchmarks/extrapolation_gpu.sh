#!/usr/bin/env bash
# Train short, test long on one GPU: train gutenberg-small at L=256 with one position encoding, then evaluate it on
# the gutenberg-en test split at 256..4096 tokens. Results (JSON, CSV, table) go to $OUT/<encoding>/.
#
#   bash benchmarks/extrapolation_gpu.sh alibi        # then: sinusoidal
#
# Needs the corpus in .cache/gutenberg-en (copy of ../shared/data/gutenberg-en) and, where `datasets` is missing,
# its wheels in .cache/whl; both folders are carried to the device machine.
set -euo pipefail
encoding=${1:?usage: extrapolation_gpu.sh alibi|sinusoidal|rotary|learned|none}
out=${OUT:-outputs}/$encoding
if ls .cache/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .cache/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m modeling_alibi.cli train --config configuration/train/gutenberg-small-h100.yaml \
  --train_files ".cache/gutenberg-en/train.*.txt.xz" --validation_files .cache/gutenberg-en/valid.txt.xz \
  --position_encoding "$encoding" --output_dir "/tmp/run-$encoding" --save_every 0 --report_to none 2>&1 \
  | grep -v "it/s]$" | tail -n 25
mkdir -p "$out"
cp "/tmp/run-$encoding/metrics.jsonl" "$out/metrics.jsonl"
python3 -m modeling_alibi.cli extrapolate "$encoding=/tmp/run-$encoding/final" --data .cache/gutenberg-en/test.txt.xz \
  --text-mode document --lengths 256,512,1024,2048,4096 --batch-size 8 --output "$out" --no-progress
if [ "$encoding" = alibi ]; then
  OUT=$out python3 benchmarks/truncation_cost.py "/tmp/run-$encoding/final" --data .cache/gutenberg-en/test.txt.xz \
    --length 4096 --thresholds 20,10,5 2>&1 | grep -v -i warn | tail -n 6
fi
