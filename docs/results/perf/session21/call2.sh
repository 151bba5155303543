#!/usr/bin/env bash
# Session 21, call 2: why call 1's timing printed nothing in 170 s (progress, tracebacks every 60 s, recompiles).
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
echo "pip at $(( $(date +%s) - T0 )) s"
TORCH_LOGS=recompiles timeout 230 python3 .ab/s21_time.py $W nodefer,defer,nodefer,defer > $W/time.log 2>&1
echo "time rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^TIME|built|first step|Recompil|recompil" $W/time.log | cut -c1-300 | head -30
grep -B2 -A25 "Thread\|Timeout" $W/time.log | grep -v "^\s*$" | head -60
(cd $OUT && tar czf s21c2.tgz w && rm -rf w)
echo "all done at $(( $(date +%s) - T0 )) s"
