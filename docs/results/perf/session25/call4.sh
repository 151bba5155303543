#!/usr/bin/env bash
# Session 25, call 4: run Q, the same-run table of issue #14 on main (the fused batch-1 layer with PDL, PDL in the
# decode attention, the compiled greedy argmax).
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
git log --oneline -1 > $W/commit.txt 2>/dev/null
B=$(( 560 - ($(date +%s) - T0) ))
timeout -s ABRT $(( B + 25 )) python3 benchmarks/model_bench.py --parts attention,train,decode,train_compiled,serve --budget $B --out $W > $W/model_bench.log 2>&1
echo "model_bench rc $? at $(( $(date +%s) - T0 )) s"; sed -n '/^== model_bench/,$p' $W/model_bench.log | head -70
(cd $OUT && tar czf s25c4.tgz w && rm -rf w)
