#!/usr/bin/env bash
# Session 25, call 3: PDL in the decode attention's kernels and the compiled greedy argmax, on top of the fused
# layer with PDL; the GPU tests of the files they touch.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout 330 python3 benchmarks/step_profile.py --parts graph --variants combo+rows+fused+pdl,combo+rows+fused+pdl+attn-pdl,combo+rows+fused+pdl+attn-pdl+choice --contexts 2048,65536 --out $W > $W/graph.log 2>&1
echo "graph rc $? at $(( $(date +%s) - T0 )) s"; grep "^graph" $W/graph.log; grep -A12 "choice 2048" $W/graph.log | head -14
B=$(( 575 - ($(date +%s) - T0) ))
timeout $B python3 -m pytest -q -m gpu tests/test_fused_decode.py tests/test_alibi_triton_decode.py tests/test_decoding.py -p no:cacheprovider > $W/gpu_tests.log 2>&1
echo "tests rc $? at $(( $(date +%s) - T0 )) s"; tail -4 $W/gpu_tests.log
(cd $OUT && tar czf s25c3.tgz w && rm -rf w)
