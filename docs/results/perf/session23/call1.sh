#!/usr/bin/env bash
# Session 23, call 1: GEMM census of the compiled training step; cuBLASLt preference A/B; mode default's host listing.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout -s ABRT 170 python3 .ab/s23_gemm.py $W > $W/gemm.log 2>&1
echo "gemm rc $? at $(( $(date +%s) - T0 )) s"
grep -v "^  File\|^    " $W/gemm.log | cut -c1-260 | head -80
timeout -s ABRT 170 python3 .ab/s23_time.py $W ro,lt,ro,lt > $W/time.log 2>&1
echo "time rc $? at $(( $(date +%s) - T0 )) s"
grep -E "^TIME|first step" $W/time.log | cut -c1-300
timeout -s ABRT $(( 560 - ($(date +%s) - T0) )) python3 benchmarks/step_profile.py --parts train --train-variants "eager,compiled loss-function" --out $W > $W/step_profile.log 2>&1
echo "profile rc $? at $(( $(date +%s) - T0 )) s"
tail -60 $W/step_profile.log | cut -c1-200
(cd $OUT && tar czf s23c1.tgz w && rm -rf w)
