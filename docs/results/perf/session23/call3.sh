#!/usr/bin/env bash
# Session 23, call 3 (f334135: the deferred add, final LayerNorm left to inductor): three fresh processes compile it
# at once with no patches (random hash seeds, empty inductor caches) beside the GPU norm/packed tests; then model_bench.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
for s in 0 1 2; do
  mkdir -p $W/p$s
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind$s timeout -s ABRT 150 python3 .ab/s21_time.py $W/p$s defer > $W/p$s.log 2>&1 &
done
TORCHINDUCTOR_CACHE_DIR=/tmp/indt timeout -s ABRT 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_norm.py tests/test_packed.py > $W/gpu_tests.log 2>&1 &
wait
echo "diag + tests done at $(( $(date +%s) - T0 )) s"
for s in 0 1 2; do echo "== process $s"; grep -E "^TIME|first step|Timeout|rror" $W/p$s.log | cut -c1-300 | head -4; done
tail -4 $W/gpu_tests.log
B=$(( 565 - ($(date +%s) - T0) ))
timeout -s ABRT $(( B + 20 )) python3 benchmarks/model_bench.py --parts attention,train,decode,train_compiled,serve --budget $B --out $W > $W/model_bench.log 2>&1
echo "model_bench rc $? at $(( $(date +%s) - T0 )) s"; sed -n '/^== model_bench/,$p' $W/model_bench.log | head -60
(cd $OUT && tar czf s23c3.tgz w && rm -rf w)
