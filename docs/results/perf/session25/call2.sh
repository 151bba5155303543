#!/usr/bin/env bash
# Session 25, call 2: the fused layer's kernels with programmatic dependent launch (alibi_triton_gemv.LAUNCH_PDL):
# GPU tests, the decode step without the fused layer, with it, and with PDL; the kernels alone.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout 120 python3 -m pytest -q -m gpu tests/test_fused_decode.py -p no:cacheprovider > $W/gpu_tests.log 2>&1
echo "tests rc $? at $(( $(date +%s) - T0 )) s"; tail -3 $W/gpu_tests.log
timeout 260 python3 benchmarks/step_profile.py --parts graph --variants combo+rows,combo+rows+fused,combo+rows+fused+pdl --contexts 2048,65536 --out $W > $W/graph.log 2>&1
echo "graph rc $? at $(( $(date +%s) - T0 )) s"; grep "^graph" $W/graph.log; grep -A12 "fused+pdl 2048" $W/graph.log | head -14
B=$(( 560 - ($(date +%s) - T0) ))
timeout $B python3 benchmarks/gemv_bench.py --tiles 2048,4096,8192 --warps 4,8 --pdl 0,1 --out $W > $W/gemv.log 2>&1
echo "gemv rc $? at $(( $(date +%s) - T0 )) s"; grep -v "cuBLAS" $W/gemv.log | cut -c1-100
(cd $OUT && tar czf s25c2.tgz w && rm -rf w)
