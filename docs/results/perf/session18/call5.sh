#!/usr/bin/env bash
# Session 18, last call: the final code's GPU tests for the norm kernels and the compiled training paths, and
# norm_bench at the adopted settings.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
t() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
grep -nE "^(PARTIAL_PROGRAMS|NORM_ROWS|NORM_BACKWARD_WARPS|RELU_ROWS|RELU_PROGRAMS)" modeling_alibi/alibi_triton_norm.py
timeout 140 python3 -m pytest -m gpu -v -rA -p no:cacheprovider --tb=short tests/test_norm.py tests/test_alibi_linear_relu.py tests/test_training.py > $W/t_final.log 2>&1
t "tests rc $?"; grep -E "^(FAILED|ERROR)|^=+ .*(passed|failed)|Fatal" $W/t_final.log | tail -5
timeout 35 python3 benchmarks/norm_bench.py --norm-rows 2 --programs 264 --backward-warps 16 --relu-blocks 16x512 --out $W > $W/norm_bench.log 2>&1
t "norm_bench rc $?"; grep -E "^\[|^  [a-z]|^      " $W/norm_bench.log
(cd $OUT && tar czf call7.tgz w && rm -rf w)
t "all done"
