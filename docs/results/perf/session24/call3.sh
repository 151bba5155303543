#!/usr/bin/env bash
# Session 24, call 3: s24_gemm_alt.py (the GEMMs cuBLAS runs after a memset, whole or in row blocks, timed in a
# CUDA graph).
set -u
T0=$(date +%s)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout -s ABRT 200 python3 .ab/s24_gemm_alt.py $W > $W/gemm_alt.log 2>&1
echo "rc $? at $(( $(date +%s) - T0 )) s"; cat $W/gemm_alt.log | cut -c1-250
(cd $OUT && tar czf s24c3.tgz w && rm -rf w)
