#!/usr/bin/env bash
# Session 25, call 1: the fused batch-1 decoder layer (alibi_fused_decode.py, alibi_triton_gemv.py) on the GPU:
# its GPU tests, the decode step with and without it, and the kernels against inductor's and cuBLAS's.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout 170 python3 -m pytest -q -m gpu tests/test_fused_decode.py -p no:cacheprovider > $W/gpu_tests.log 2>&1
echo "tests rc $? at $(( $(date +%s) - T0 )) s"; tail -15 $W/gpu_tests.log
timeout 200 python3 benchmarks/step_profile.py --parts graph --variants combo+rows,combo+rows+fused --contexts 2048,65536 --out $W > $W/graph.log 2>&1
echo "graph rc $? at $(( $(date +%s) - T0 )) s"; grep -v "^ " $W/graph.log | tail -8; grep -A14 "fused 2048" $W/graph.log | head -16
B=$(( 560 - ($(date +%s) - T0) ))
timeout $B python3 benchmarks/gemv_bench.py --tiles 4096,8192,16384,32768 --warps 2,4,8 --out $W > $W/gemv.log 2>&1
echo "gemv rc $? at $(( $(date +%s) - T0 )) s"; cat $W/gemv.log | cut -c1-110
(cd $OUT && tar czf s25c1.tgz w && rm -rf w)
