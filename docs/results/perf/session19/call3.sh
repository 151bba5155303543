#!/usr/bin/env bash
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
timeout 200 python3 .ab/diag.py "refs;fail;ptrs,ptrs=1" > $W/diag.log 2>&1
echo "diag rc $? at $(( $(date +%s) - T0 )) s"
grep -E "^CASE|FLAGGED|  tensor|WARMUP|node inputs" $W/diag.log | cut -c1-400 | head -60
(cd $OUT && tar czf s19c3.tgz w && rm -rf w)
