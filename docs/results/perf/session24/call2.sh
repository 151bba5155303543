#!/usr/bin/env bash
# Session 24, call 2: s24_probe.py (where the step's memsets and host-to-device copies come from; the step's
# activities in order; the input-gradient GEMMs alone under three cuBLAS settings).
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
timeout -s ABRT 400 python3 .ab/s24_probe.py $W > $W/probe.log 2>&1
echo "probe rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^A |^      ->|^B |took|FAILED" $W/probe.log | cut -c1-250 | head -50; grep "^C " $W/probe.log | cut -c1-200
(cd $OUT && tar czf s24c2.tgz w && rm -rf w)
