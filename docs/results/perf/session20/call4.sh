#!/usr/bin/env bash
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout 110 python3 -m pytest -m gpu -v -rA -p no:cacheprovider --tb=short tests/test_packed.py tests/test_norm.py tests/test_alibi_cudnn.py -k "packed or norm or building_graphs or training_step or compile" > $W/tests.log 2>&1
echo "tests rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^(PASSED|FAILED|ERROR)" $W/tests.log | cut -c1-150; tail -2 $W/tests.log
timeout 150 python3 benchmarks/model_bench.py --parts attention,train,train_compiled --budget 400 --out $W > $W/model_bench.log 2>&1
echo "model_bench rc $? at $(( $(date +%s) - T0 )) s"; sed -n '/^== model_bench/,$p' $W/model_bench.log | head -40
timeout $(( 285 - ($(date +%s) - T0) )) python3 .ab/s20_diag.py time $W main,unpacked > $W/time.log 2>&1
echo "time rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^TIME" $W/time.log
(cd $OUT && tar czf s20c4.tgz w && rm -rf w)
