#!/usr/bin/env bash
# Session 24, call 6: GPU tests of the files that import alibi_triton_forward (where wrap_triton moved) and were not
# run in call 4: the Triton attention and decode kernels, cuDNN's op, the graph decoder.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
timeout -s ABRT 330 python3 -m pytest -q -p no:cacheprovider -m gpu -o faulthandler_timeout=300 tests/test_alibi_triton_decode.py tests/test_alibi_triton.py tests/test_alibi_cudnn.py tests/test_decoding.py > $W/gpu_tests.log 2>&1
echo "tests rc $? at $(( $(date +%s) - T0 )) s"; tail -3 $W/gpu_tests.log; grep -E "^FAILED|^ERROR" $W/gpu_tests.log | head -8 | cut -c1-300
(cd $OUT && tar czf s24c6.tgz w && rm -rf w)
