#!/usr/bin/env bash
# One GPU call: the gpu-marked tests, backend parity at 8K, and the attention, Triton and decode kernel benchmarks.
# Each prints its own table; logs and JSON in $OUT. On the GPU machine:
#   bash benchmarks/gpu_checks.sh
set -uo pipefail
for dir in .whl .cache/whl; do
  if ls $dir/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $dir/*.whl
  fi
done
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OUT=${OUT:-outputs}
mkdir -p "$OUT"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
  torch.cuda.get_device_name())"
python3 -m pytest -p no:cacheprovider -m gpu -q -rs --ignore=tests/test_notebook.py 2>&1 | tee "$OUT/gpu_tests.log" \
  | tail -n 15
python3 benchmarks/backend_parity.py 2>&1 | grep -v Warning | tail -n 8
python3 benchmarks/attention_bench.py --lengths 1024,4096,16384 --out "$OUT" 2>&1 | grep -v -i warn | tail -n 45
python3 benchmarks/triton_alibi_bench.py --lengths 4096 16384 2>&1 | grep -v -i warn | tail -n 12
python3 benchmarks/decode_kernel_bench.py --out "$OUT" 2>&1 | grep -v -i warn | tail -n 8
