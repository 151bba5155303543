#!/usr/bin/env bash
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
timeout 100 python3 .ab/s20_diag.py diag $W "2,combo,bf16" census > $W/diag.log 2> $W/diag_err.log
echo "diag rc $? at $(( $(date +%s) - T0 )) s"
cut -c1-700 $W/diag.log | sort | uniq -c | sort -rn | head -150
tail -5 $W/diag_err.log
(cd $OUT && tar czf s20c3.tgz w && rm -rf w)
