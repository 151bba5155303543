#!/usr/bin/env bash
# One GPU vs DDP vs FSDP on one machine with 2 GPUs: gutenberg-small at L = 256, the same steps, seed and global
# batch (1 x 64, 2 x 32, 2 x 32), dropout off, bf16; plus DDP at 2 x 64 for throughput scaling against 1 x 64.
# Writes $OUT/multi_gpu.json (per-run config, loss curve, final train and eval loss, median tokens/s; the curve
# and eval differences against the 1-GPU run; the DDP scaling ratio), one log per run in $OUT/<run>.log, and
# prints a table. About 3 minutes on 2 H200s (data prep about 20 s, then 4 runs of about 40 s).
#
#   bash benchmarks/multi_gpu.sh                          # GPUs; needs .cache/gutenberg-en and .cache/whl
#   MULTI_GPU_DRY_RUN=cpu bash benchmarks/multi_gpu.sh    # same steps on the CPU: tiny model, 2 gloo processes
#
# Knobs: MULTI_GPU_STEPS, MULTI_GPU_SHARDS (training shards read), MULTI_GPU_BUDGET_S (the whole script's time:
# later runs get less or are skipped, so the JSON is always written), MULTI_GPU_WORK (scratch and data cache).
set -uo pipefail  # no -e: a failed run is recorded and the others still run
cd "$(dirname "$0")/.."
# NVLink multicast stays off (it can take a shared host's GPUs down): NCCL, PyTorch symmetric memory, NVSHMEM.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1
export TRANSFORMERS_VERBOSITY=warning

dry=${MULTI_GPU_DRY_RUN:-}
out=${OUT:-outputs/multi_gpu}
work=${MULTI_GPU_WORK:-/tmp/alibi-multi-gpu}
budget=${MULTI_GPU_BUDGET_S:-270}
deadline=$((SECONDS + budget))
data=.cache/gutenberg-en
mkdir -p "$out" "$work"
rm -rf "$work/runs" && mkdir -p "$work/runs"

if ! python3 -c "import datasets" 2>/dev/null; then  # the device image lacks datasets, dill and multiprocess
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .cache/whl/*.whl \
    || { echo "could not install .cache/whl (carry .cache)"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ "$dry" = cpu ]; then  # tiny model on 2 CPU processes over gloo: checks the plumbing, not the numbers
  export ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1
  preset=configuration/train/tiny-cpu.yaml
  single_config=configuration/accelerate/cpu.yaml
  train_files=("$data/train.13.txt.xz")  # the smallest shard
  steps=${MULTI_GPU_STEPS:-30} warmup=5 log_every=5 batch=16 eval_batches=4 precision=no
  extra=(--dataloader_num_workers 0)
  run_timeout=240
else
  preset=configuration/train/gutenberg-small-h100.yaml  # 27 M parameters, L = 256, vocab 16384, lr 1e-3
  single_config=configuration/accelerate/single_gpu.yaml
  mapfile -t train_files < <(ls "$data"/train.*.txt.xz | head -n "${MULTI_GPU_SHARDS:-4}")  # ~7.5 M tokens
  steps=${MULTI_GPU_STEPS:-400} warmup=100 log_every=20 batch=64 eval_batches=16 precision=bf16
  extra=(--dataloader_num_workers 2)
  run_timeout=120  # a normal run takes 30-50 s; this bounds a hang
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
fi
half=$((batch / 2))
# Shared by every run (and by the data preparation, so the cache keys match): only the batch sizes differ.
common=(--config "$preset" --train_files "${train_files[@]}" --validation_files "$data/valid.txt.xz"
  --cache_dir "$work/cache" --max_steps "$steps" --warmup_steps "$warmup" --log_every "$log_every"
  --eval_every 0 --eval_batches "$eval_batches" --dropout 0 --seed 0 --mixed_precision "$precision"
  --save_every 0 --report_to none "${extra[@]}")

echo "data: ${#train_files[@]} training shard(s) -> $work/cache"
start=$SECONDS
python3 benchmarks/compare_runs.py prepare "${common[@]}" >"$out/prep.log" 2>&1 \
  || { tail -n 30 "$out/prep.log"; echo "data preparation failed"; exit 1; }
grep '^prepared' "$out/prep.log"
echo "data ready in $((SECONDS - start)) s"

runs=$work/runs.tsv
printf 'name\tlaunch_config\tprocesses\tper_device_batch\trc\twall_s\toutput_dir\tlog\n' >"$runs"
port=29611
run() {  # name launch-config processes per-device-train-batch per-device-eval-batch
  local name=$1 config=$2 procs=$3 train_batch=$4 eval_batch=$5 rc wall limit start
  local left=$((deadline - SECONDS - 20))  # 20 s kept for the report
  limit=$((left < run_timeout ? left : run_timeout))
  port=$((port + 1))
  if ((limit < 30)); then
    echo "$name: skipped, the time budget (MULTI_GPU_BUDGET_S=$budget) is spent"
    printf '%s\t%s\t%s\t%s\t-1\t0\t%s\t-\n' "$name" "$config" "$procs" "$train_batch" "$work/runs/$name" >>"$runs"
    return
  fi
  local script=(scripts/train.py)
  if [ "$dry" = cpu ] && [[ $config == *fsdp* ]]; then  # on the CPU Accelerate would run FSDP as DDP
    script=(benchmarks/compare_runs.py train-fsdp-cpu)
  fi
  start=$SECONDS
  # Every run reads the same eval blocks: eval_batches x eval_batch x processes = the first 1,024 (64 on CPU).
  timeout -k 10 "$limit" python3 -m accelerate.commands.launch --config_file "$config" --num_processes "$procs" \
    --num_machines 1 --dynamo_backend no --main_process_port "$port" \
    "${script[@]}" "${common[@]}" --per_device_train_batch_size "$train_batch" \
    --per_device_eval_batch_size "$eval_batch" --output_dir "$work/runs/$name" >"$out/$name.log" 2>&1
  rc=$? wall=$((SECONDS - start))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$config" "$procs" "$train_batch" "$rc" "$wall" \
    "$work/runs/$name" "$out/$name.log" >>"$runs"
  echo "$name: exit $rc after $wall s (limit $limit s)"
  if ((rc != 0)); then  # the cause, briefly (the whole log comes back in $OUT)
    grep -E 'Error|Exception|error:' "$out/$name.log" | grep -v -e ChildFailedError -e '^\s*raise ' | tail -n 8 \
      | cut -c1-300
  fi
}

#   name     launch config                                  procs  batch   eval batch
run 1gpu    "$single_config"                                1      "$batch" "$batch"
run ddp     configuration/accelerate/multi_gpu_ddp.yaml     2      "$half"  "$half"
run ddp_b64 configuration/accelerate/multi_gpu_ddp.yaml     2      "$batch" "$half"
run fsdp    configuration/accelerate/fsdp.yaml              2      "$half"  "$half"  # last: the least tried

meta=$(python3 -c 'import json, sys; a = sys.argv[1:]
print(json.dumps({k: int(v) if v.isdigit() else v for k, v in zip(a[::2], a[1::2])}))' \
  mode "${dry:-gpu}" preset "$preset" steps "$steps" warmup_steps "$warmup" log_every "$log_every" \
  eval_batches "$eval_batches" eval_blocks "$((eval_batches * batch))" mixed_precision "$precision" dropout 0 \
  seed 0 train_files "${train_files[*]}" validation_files "$data/valid.txt.xz" \
  tokens_per_s "median of train/tokens_per_s over the log intervals after the first (start-up, compilation)")
python3 benchmarks/compare_runs.py report --runs "$runs" --out "$out/multi_gpu.json" --meta "$meta" 2>&1 \
  | grep -v -i warn
echo "total $SECONDS s"
