#!/usr/bin/env bash
# Session 24, call 1 (d889b45 + gpu_timeline): the GPU tests of the session-23 commits that never ran on a GPU, then
# the training step's full kernel census and its gaps (step_profile --top 1000): reduce-overhead, the whole step as
# one graph, and mode default.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout -s ABRT 220 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_norm.py tests/test_packed.py tests/test_alibi_linear_relu.py tests/test_training.py > $W/gpu_tests.log 2>&1
echo "tests rc $? at $(( $(date +%s) - T0 )) s"; tail -3 $W/gpu_tests.log; grep -E "^FAILED|^ERROR" $W/gpu_tests.log | head -5 | cut -c1-300
timeout -s ABRT $(( 560 - ($(date +%s) - T0) )) python3 benchmarks/step_profile.py --parts train --top 1000 \
  --train-variants "compiled reduce-overhead loss-function,whole-step graph loss-function,compiled loss-function" --out $W > $W/step_profile.log 2>&1
echo "profile rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^train|back to back:|    gap" $W/step_profile.log | cut -c1-200 | head -60
(cd $OUT && tar czf s24c1.tgz w && rm -rf w)
