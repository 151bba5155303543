#!/usr/bin/env bash
# Session 23, call 4 (f334135): defer/nodefer interleaved in one process; the 2K graph decode step's census.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout -s ABRT 170 python3 .ab/s21_time.py $W nodefer,defer,nodefer,defer > $W/time.log 2>&1
echo "time rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^TIME" $W/time.log | cut -c1-300
timeout -s ABRT $(( 380 - ($(date +%s) - T0) )) python3 benchmarks/step_profile.py --parts graph --variants combo+rows --contexts 2048 --top 25 --out $W > $W/graph.log 2>&1
echo "graph rc $? at $(( $(date +%s) - T0 )) s"; tail -45 $W/graph.log | cut -c1-200
(cd $OUT && tar czf s23c4.tgz w && rm -rf w)
