#!/usr/bin/env bash
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
timeout 130 python3 .ab/s20_diag.py diag $W "2,combo,bf16;2,main,bf16;2,main,fp32" census > $W/diag.log 2> $W/diag_err.log
echo "diag rc $? at $(( $(date +%s) - T0 )) s"
grep -vE "^\s*$" $W/diag.log | grep -v "^GC before check.*0 tensors" | cut -c1-220 | head -150
P="-m gpu -v -rA -p no:cacheprovider --tb=short --durations=10"
run() { name=$1; shift; timeout 420 python3 -m pytest $P "$@" > $W/t_$name.log 2>&1; echo "$name rc $? at $(( $(date +%s) - T0 )) s"; }
run a tests/test_transformers_contracts.py tests/test_attention_backends.py &
run b tests/test_alibi_triton.py tests/test_alibi_triton_decode.py tests/test_decoding.py &
run c tests/test_loss.py tests/test_alibi_cudnn.py tests/test_alibi_linear_relu.py &
run d tests/test_training.py tests/test_long_inputs.py &
wait
for f in $W/t_*.log; do echo "$f: $(grep -E '^=+ .*(passed|failed|error)' $f | tail -1)"; grep -E "^(FAILED|ERROR)|Fatal Python" $f | head -5; done
ls tests/*.py | xargs grep -l "mark.gpu\|pytest.mark.gpu\|gpu =" | sort > $W/gpu_files.txt
(cd $OUT && tar czf s20c2.tgz w && rm -rf w)
echo "all done at $(( $(date +%s) - T0 )) s"
