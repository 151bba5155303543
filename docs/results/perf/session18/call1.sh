#!/usr/bin/env bash
# Next session, first call (prepared in session 17, refused then: no device lent): run H of model_bench (issue #14's same-run table), then GPU tests: test_norm, and the test order
# that segfaulted (now with conftest's Dynamo reset between GPU tests).
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
(nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; python3 -c "import torch, transformers, triton, cudnn; print(torch.__version__, transformers.__version__, 'triton', triton.__version__, 'cudnn', torch.backends.cudnn.version(), 'cudnn-fe', cudnn.__version__)") > $W/versions.txt 2>&1
timeout 470 python3 benchmarks/model_bench.py --parts attention,train,decode,train_compiled,serve --budget 440 --out $W > $W/model_bench_same_run.log 2>&1
echo "model_bench rc $? at $(( $(date +%s) - T0 )) s"
grep -A12 "^\[train\]" $W/model_bench_same_run.log | head -14
P="-m gpu -v -rA -p no:cacheprovider --tb=short"
K='cuda_graph and 1-0.0 or fused_op and fp32'
LEFT=$(( 585 - ($(date +%s) - T0) ))
( timeout $LEFT python3 -m pytest $P tests/test_norm.py > $W/t_norm.log 2>&1; echo "norm rc $?" ) &
( timeout $LEFT python3 -m pytest $P tests/test_training.py tests/test_alibi_linear_relu.py -k "$K" > $W/t_order.log 2>&1; echo "order rc $?" ) &
wait
grep -hE "passed|failed|Fatal" $W/t_*.log
(cd $OUT && tar czf call4.tgz w && rm -rf w)
echo "all done at $(( $(date +%s) - T0 )) s"
# then: bash benchmarks/run_gpu_tests.sh -v -rA --tb=short  (the whole GPU suite on the final code; a second call)
