#!/usr/bin/env bash
# Session 18, call 4: norm kernels with the next rows' loads in flight. Sweep (norm_bench), adopt the best setting
# in this copy, GPU tests, step rows new/old interleaved, model_bench train parts beside MPT and BLOOM.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl .whl-cudnn/*.whl 2>/dev/null || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 PYTHONPATH=/tmp/site:$PWD
W=$OUT/w; mkdir -p $W
t() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
timeout 150 python3 benchmarks/norm_bench.py --norm-rows 2,4 --programs 132,264,528 --backward-warps 8,16 \
  --relu-blocks 16x512,8x512 --out $W > $W/norm_bench.log 2>&1
t "norm_bench rc $?"; grep -E "^\[|^  [a-z]" $W/norm_bench.log
python3 - <<'PY' > $W/adopted.txt 2>&1
import json, os, re
d = json.load(open(os.path.join(os.environ["OUT"], "w", "norm_bench.json")))
norm = min((r for r in d["norm"] if "norm_rows" in r), key=lambda r: r["ms"])
relu = min((r for r in d["relu"] if "relu_rows" in r), key=lambda r: r["ms"])
p = "modeling_alibi/alibi_triton_norm.py"; s = open(p).read()
s = re.sub(r"^PARTIAL_PROGRAMS = \d+", f"PARTIAL_PROGRAMS = {norm['partial_programs']}", s, flags=re.M)
s = re.sub(r"^NORM_ROWS = \d+", f"NORM_ROWS = {norm['norm_rows']}", s, flags=re.M)
s = re.sub(r"^NORM_BACKWARD_WARPS = \d+", f"NORM_BACKWARD_WARPS = {norm['norm_backward_warps']}", s, flags=re.M)
s = re.sub(r"^RELU_ROWS, RELU_COLUMNS = \d+, \d+", f"RELU_ROWS, RELU_COLUMNS = {relu['relu_rows']}, {relu['relu_columns']}", s, flags=re.M)
open(p, "w").write(s)
print("adopted", {k: norm[k] for k in ("norm_rows", "partial_programs", "norm_backward_warps", "ms")},
      {k: relu[k] for k in ("relu_rows", "relu_columns", "ms")})
PY
cat $W/adopted.txt; grep -nE "^(PARTIAL_PROGRAMS|NORM_ROWS|NORM_BACKWARD_WARPS|RELU_ROWS)" modeling_alibi/alibi_triton_norm.py
timeout 120 python3 -m pytest -m gpu -v -rA -p no:cacheprovider --tb=short tests/test_norm.py tests/test_alibi_linear_relu.py > $W/t_norm_relu.log 2>&1
t "tests rc $?"; grep -E "^(FAILED|ERROR)|^=+ .*(passed|failed)" $W/t_norm_relu.log | tail -5
LEFT=170
timeout $LEFT python3 benchmarks/model_bench.py --parts attention,train,train_compiled --budget 300 --out $W > $W/model_bench.log 2>&1
t "model_bench rc $?"; sed -n '/^== model_bench/,$p' $W/model_bench.log
timeout $(( 575 - ($(date +%s) - T0) )) python3 .ab/exp_step.py new,old,ac-on,ac-off,new,old $W > $W/exp_step.log 2>&1
t "step rows rc $?"; grep -E "^train |^--- |^new settings|^autocast" $W/exp_step.log
(cd $OUT && tar czf call6.tgz w && rm -rf w)
t "all done"
