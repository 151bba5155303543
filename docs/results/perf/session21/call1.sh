#!/usr/bin/env bash
# Session 21, call 1: deferred add A/B step rows with kernel census, then the whole GPU suite in four processes.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv > $W/smi.txt
timeout 170 python3 .ab/s21_time.py $W defer,nodefer,defer,nodefer > $W/time.log 2>&1
echo "time rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^TIME" $W/time.log | cut -c1-400
P="-m gpu -v -rA -p no:cacheprovider --tb=short --durations=10"
L=$(( 585 - ($(date +%s) - T0) ))
run() { name=$1; shift; timeout $L python3 -m pytest $P "$@" > $W/t_$name.log 2>&1; echo "$name rc $? at $(( $(date +%s) - T0 )) s"; }
run a tests/test_transformers_contracts.py tests/test_attention_backends.py &
run b tests/test_alibi_triton.py tests/test_alibi_triton_decode.py tests/test_decoding.py tests/test_packed.py &
run c tests/test_loss.py tests/test_alibi_cudnn.py tests/test_alibi_linear_relu.py tests/test_norm.py &
run d tests/test_training.py tests/test_long_inputs.py &
wait
for f in $W/t_*.log; do sed -i '/DEBUG    torch.__trace/d' $f; echo "$f: $(grep -E '^=+ .*(passed|failed|error)' $f | tail -1)"; grep -E "^(FAILED|ERROR)|Fatal Python" $f | head -5; done
(cd $OUT && tar czf s21c1.tgz w && rm -rf w)
echo "all done at $(( $(date +%s) - T0 )) s"
