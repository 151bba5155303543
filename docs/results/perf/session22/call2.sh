#!/usr/bin/env bash
# Session 22, call 2: training step A/B (reduce-overhead; + no mix-order reduction; + combo kernels), interleaved,
# then the deferred add's stall (a38112c export, fresh process, reduce-overhead) with tracebacks every 20 s.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
python3 -c "import torch._inductor.config as c; print('mix_order_reduction', getattr(c.triton, 'mix_order_reduction', 'absent'), 'combo', c.combo_kernels)"
timeout -s ABRT 330 python3 .ab/s22_time.py $W ro,nomix,combo,ro,nomix,combo > $W/time.log 2>&1
echo "time rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^TIME|built|first step" $W/time.log | cut -c1-300
grep -E "^TIME" -A14 $W/time.log | grep -v "^TIME" | cut -c1-110 | head -50
L=$(( 560 - ($(date +%s) - T0) ))
PYTHONPATH=/tmp/site:$PWD/.ab/a38112c:$PWD timeout -s ABRT $L python3 .ab/s21_time.py $W defer > $W/defer.log 2>&1
echo "defer rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^TIME|built|first step" $W/defer.log | cut -c1-300
grep -A30 "Thread\|Timeout" $W/defer.log | grep -v "^\s*$" | head -90
(cd $OUT && tar czf s22c2.tgz w && rm -rf w)
echo "all done at $(( $(date +%s) - T0 )) s"
