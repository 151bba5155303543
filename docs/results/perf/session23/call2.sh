#!/usr/bin/env bash
# Session 23, call 2: the deferred add compiled in 4 fresh processes at once (hash seeds 0-3), each printing any
# exception that leaves an inductor lowering; then defer/nodefer timing rows in one process if time allows.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD/.ab/defer:$PWD
W=$OUT/w; mkdir -p $W
for s in 0 1 2 3; do
  mkdir -p $W/p$s
  PYTHONHASHSEED=$s TORCHINDUCTOR_CACHE_DIR=/tmp/ind$s timeout -s ABRT 200 python3 .ab/s23_defer.py $W/p$s defer > $W/p$s.log 2>&1 &
done
wait
echo "diag done at $(( $(date +%s) - T0 )) s"
for s in 0 1 2 3; do echo "== seed $s"; grep -E "^TIME|first step|LOWERING RAISED|Error|rror:" $W/p$s.log | cut -c1-400 | head -8; done
grep -h -A40 "LOWERING RAISED" $W/p*.log | cut -c1-250 | head -60
LEFT=$(( 540 - ($(date +%s) - T0) ))
if [ $LEFT -gt 150 ]; then
  PYTHONHASHSEED=0 timeout -s ABRT $LEFT python3 .ab/s23_defer.py $W nodefer,defer,nodefer,defer > $W/time.log 2>&1
  echo "time rc $? at $(( $(date +%s) - T0 )) s"
  grep -E "^TIME|first step|LOWERING RAISED" $W/time.log | cut -c1-300
fi
(cd $OUT && tar czf s23c2.tgz w && rm -rf w)
