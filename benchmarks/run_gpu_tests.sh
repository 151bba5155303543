#!/usr/bin/env bash
# Run the GPU-marked tests (and the CPU suite, as a check against the GPU image's transformers) on a CUDA machine.
# Usage on the device machine: bash benchmarks/run_gpu_tests.sh [pytest args]
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
  torch.cuda.get_device_name())"
# The notebook test needs nbformat and nbclient (the dev extra), which the GPU image lacks: skip that file there.
ignore=()
if ! python3 -c "import nbformat, nbclient" 2>/dev/null; then
  echo "nbformat/nbclient not installed: not collecting tests/test_notebook.py"
  ignore=(--ignore=tests/test_notebook.py)
fi
python3 -m pytest -p no:cacheprovider -m "gpu or not slow" "${ignore[@]}" "$@"
