#!/usr/bin/env bash
# Session 25, call 5: GPU tests of the paths AlibiAttention.forward's refactor (attend) touches: packed q, k, v and
# the norm node in compiled training, training, the attention backends, transformers' contracts, long inputs.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
timeout 560 python3 -m pytest -q -m gpu tests/test_packed.py tests/test_norm.py tests/test_training.py tests/test_attention_backends.py tests/test_transformers_contracts.py tests/test_long_inputs.py -p no:cacheprovider > $W/gpu_tests.log 2>&1
echo "tests rc $? at $(( $(date +%s) - T0 )) s"; grep -E "passed|failed|error" $W/gpu_tests.log | tail -5; grep -E "^FAILED|^ERROR" $W/gpu_tests.log | head
(cd $OUT && tar czf s25c5.tgz w && rm -rf w)
