#!/usr/bin/env bash
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv > $W/smi.txt
timeout 560 python3 .ab/packed_exp.py check,base,param,param-ln1,cat,base,param-ln1 $W > $W/packed_exp.log 2>&1
echo "rc $? at $(( $(date +%s) - T0 )) s"
grep -E "^(check|---|summary)|Error|error" $W/packed_exp.log | head -40
(cd $OUT && tar czf s19c1.tgz w && rm -rf w)
