#!/usr/bin/env bash
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
git log --oneline -1 > $W/commit.txt 2>/dev/null; git status --short >> $W/commit.txt 2>/dev/null
V="compiled reduce-overhead loss-function"
timeout 200 python3 benchmarks/step_profile.py --parts train --top 45 --out $W \
  --train-variants "$V,$V no-packed-qkv,$V,$V no-packed-qkv" > $W/step_rows.log 2>&1
echo "step rows rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^train " $W/step_rows.log
P="-m gpu -v -rA -p no:cacheprovider --tb=short --durations=15"
run() { name=$1; shift; timeout 370 python3 -m pytest $P "$@" > $W/t_$name.log 2>&1; echo "$name rc $? at $(( $(date +%s) - T0 )) s"; }
run a tests/test_transformers_contracts.py tests/test_attention_backends.py &
run b tests/test_alibi_triton.py tests/test_alibi_triton_decode.py tests/test_decoding.py &
run c tests/test_packed.py tests/test_loss.py tests/test_alibi_cudnn.py tests/test_norm.py tests/test_alibi_linear_relu.py &
run d tests/test_training.py tests/test_long_inputs.py &
wait
for f in $W/t_*.log; do echo "$f: $(grep -E '^=+ .*(passed|failed|error)' $f | tail -1)"; grep -E "^(FAILED|ERROR)|Fatal Python" $f | head -8; done
(cd $OUT && tar czf s19c2.tgz w && rm -rf w)
echo "all done at $(( $(date +%s) - T0 )) s"
