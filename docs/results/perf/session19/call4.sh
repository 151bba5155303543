#!/usr/bin/env bash
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout 400 python3 benchmarks/model_bench.py --parts attention,train,decode,train_compiled --budget 380 --out $W > $W/model_bench.log 2>&1
echo "model_bench rc $? at $(( $(date +%s) - T0 )) s"; sed -n '/^== model_bench/,$p' $W/model_bench.log | head -45
timeout $(( 545 - ($(date +%s) - T0) )) python3 .ab/diag.py "nodefer,defer=0;one,layers=1;four,layers=4;two,layers=2" > $W/diag.log 2>&1
echo "diag rc $? at $(( $(date +%s) - T0 )) s"
grep -E "^CASE" $W/diag.log | cut -c1-300
(cd $OUT && tar czf s19c4.tgz w && rm -rf w)
