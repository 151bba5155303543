#!/usr/bin/env bash
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout 150 python3 .ab/s20_diag.py diag $W > $W/diag.log 2> $W/diag_err.log
echo "diag rc $? at $(( $(date +%s) - T0 )) s"
grep -E "^(CASE|CHECK|  live|PTR|  segment|  EVENT|       )" $W/diag.log | head -120
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_packed.py tests/test_norm.py > $W/tests.log 2>&1
echo "tests rc $? at $(( $(date +%s) - T0 )) s"; tail -3 $W/tests.log
timeout $(( 560 - ($(date +%s) - T0) )) python3 .ab/s20_diag.py time $W main,combo,combo-nodonate,autocast-packed,autocast-unpacked,main > $W/time.log 2>&1
echo "time rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^TIME" $W/time.log
(cd $OUT && tar czf s20c1.tgz w && rm -rf w)
