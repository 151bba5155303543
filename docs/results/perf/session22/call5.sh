#!/usr/bin/env bash
# Session 22, call 5: the deferred add's original lowering exception (operator_str short); then mode default's host
# time against no compile.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
PYTHONPATH=/tmp/site:$PWD/.ab/a38112c:$PWD timeout -s ABRT 75 python3 .ab/s22_defer_diag.py $W defer > $W/diag.log 2>&1
echo "diag rc $? at $(( $(date +%s) - T0 )) s"
grep -v "^  File\|^    " $W/diag.log | grep -v "^\s*$" | cut -c1-300 | head -30
PYTHONPATH=/tmp/site:$PWD TORCH_LOGS=recompiles,graph_breaks timeout -s ABRT 170 python3 .ab/s22_default_host.py eager,default > $W/host.log 2>&1
echo "host rc $? at $(( $(date +%s) - T0 )) s"
grep -E "^TIME|warm-up|ecompil|raph break" $W/host.log | cut -c1-300 | head; grep -A20 "ncalls" $W/host.log | cut -c1-150
(cd $OUT && tar czf s22c5.tgz w && rm -rf w)
