#!/usr/bin/env bash
# Session 23, call 5: the norm kernels as torch.library.triton_op (inductor launches them): GPU tests, the
# reduce-overhead step (deferral on), and mode default's step and host listing against eager (step_profile).
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout -s ABRT 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_norm.py tests/test_packed.py tests/test_alibi_linear_relu.py tests/test_training.py > $W/gpu_tests.log 2>&1
echo "tests rc $? at $(( $(date +%s) - T0 )) s"; tail -3 $W/gpu_tests.log; grep -E "^FAILED|^ERROR|Error" $W/gpu_tests.log | head -5 | cut -c1-300
timeout -s ABRT 110 python3 .ab/s21_time.py $W defer > $W/time.log 2>&1
echo "time rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^TIME|rror" $W/time.log | cut -c1-300 | head -5; grep -E "ms x" $W/time.log | head -12
timeout -s ABRT $(( 385 - ($(date +%s) - T0) )) python3 benchmarks/step_profile.py --parts train --train-variants "eager,compiled loss-function" --out $W > $W/step_profile.log 2>&1
echo "profile rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^train|host, self" -A12 $W/step_profile.log | grep -v nvjet | cut -c1-160 | head -40
(cd $OUT && tar czf s23c5.tgz w && rm -rf w)
