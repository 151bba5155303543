#!/usr/bin/env bash
# Session 22, call 1: issue #14 measures in one run (model_bench, every part) on main.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $(ls .whl/*.whl .whl-cudnn/*.whl 2>/dev/null) 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout -s ABRT 575 python3 benchmarks/model_bench.py --parts attention,train,decode,train_compiled,serve --budget 540 --out $W > $W/model_bench.log 2>&1
echo "model_bench rc $? at $(( $(date +%s) - T0 )) s"; sed -n '/^== model_bench/,$p' $W/model_bench.log | head -60
(cd $OUT && tar czf s22c1.tgz w && rm -rf w)
