#!/usr/bin/env bash
# Session 24, call 4 (579f4a2: the loss-rows kernel as a triton_op): the GPU tests of the loss, the norm kernels,
# the packed projection, the fused MLP and compiled training; then step_profile's train rows (eager, mode default,
# reduce-overhead) with their gaps.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout -s ABRT 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_loss.py tests/test_norm.py tests/test_packed.py tests/test_alibi_linear_relu.py tests/test_training.py > $W/gpu_tests.log 2>&1
echo "tests rc $? at $(( $(date +%s) - T0 )) s"; tail -3 $W/gpu_tests.log; grep -E "^FAILED|^ERROR" $W/gpu_tests.log | head -5 | cut -c1-300
timeout -s ABRT $(( 570 - ($(date +%s) - T0) )) python3 benchmarks/step_profile.py --parts train \
  --train-variants "eager,compiled loss-function,compiled reduce-overhead loss-function" --out $W > $W/step_profile.log 2>&1
echo "profile rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^train|back to back:|host, self" -A4 $W/step_profile.log | grep -v "nvjet\|gap " | cut -c1-200 | head -40
(cd $OUT && tar czf s24c4.tgz w && rm -rf w)
