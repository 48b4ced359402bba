#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md and every GPU check in one run, the most important
# first, within a time budget: a lent H200 is held for minutes, not hours. From the repo root:
#
#   OUT=/some/dir BUDGET_S=540 bash scripts/gpu_benchmarks.sh
#
# Writes $OUT/results.jsonl (the JSON lines of the benchmarks and of the training runs),
# $OUT/log.txt (versions, each command, warnings, torch's CUDA-graph notes, the GPU tests'
# report, the time each step took) and four torch.profiler tables. A step that would start with under 30 s of the budget
# left is skipped and logged as such; each command sees its own limit as RUN_LIMIT_S.
#
# Packages the GPU image lacks travel as wheels in .whl/ (docs/benchmarks.md lists them) and are
# installed first; the GPT-NeoX tokenizer is read from .cache/assets (scripts/fetch_test_assets.py).
# SMOKE=1 runs every step at tiny shapes (the training runs in float32, the GPU tests skipped)
# with the current environment's packages, to check this script on a CPU.
set -u
OUT=${OUT:-gpu_out}
BUDGET_S=${BUDGET_S:-480}
mkdir -p "$OUT"
# upstream's process sees its own site first, then the carried wheels (ftfy) and the image;
# never this repo's open_flamingo package
UPSTREAM_PATH=${PYTHONPATH:-}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# upstream open-flamingo 2.0.1 and its transformers 4.46.3 / open_clip 2.32, for the side-by-side
# figures, in a folder of their own that goes first on upstream's PYTHONPATH only
UPSTREAM_SITE=$PWD/.cache/upstream-site  # `make upstream`
if [[ ${SMOKE:-0} != 1 ]] && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
    UPSTREAM_PATH="/tmp/site${UPSTREAM_PATH:+:$UPSTREAM_PATH}"
    UPSTREAM_SITE=/tmp/upstream-site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$UPSTREAM_SITE" .whl/upstream/*.whl || exit 1
fi
UPSTREAM_PATH="$UPSTREAM_SITE${UPSTREAM_PATH:+:$UPSTREAM_PATH}"

train=()
generate=()
upstream=()
training_runs=()
llama=llama
if [[ ${SMOKE:-0} == 1 ]]; then
    # the ZeRO-1 run and its SIGKILL + resume; zero1-slurm's config (and the CPU Adam it builds)
    # is run on the CPU by tests/test_slurm.py, so the smoke check leaves it out
    training_runs=(--cpu --runs zero1 zero1-killed)
    llama=tiny-llama
    tiny=(--lm tiny-mpt --vision_encoder_path ViT-Tiny-16)
    tiny_step=(--batch_size_laion 2 --max_tokens_laion 16 --batch_size_interleaved 2
        --max_tokens_interleaved 48 --images_per_doc 3 --steps 1)
    tiny_generate=(--batch_size 2 --new_tokens 3 --batches 1)
    train=("${tiny[@]}" "${tiny_step[@]}" --warmup 0)
    generate=("${tiny[@]}" "${tiny_generate[@]}" --warmup 1)
    upstream=("${tiny[@]}" "${tiny_step[@]}" --warmup 0 "${tiny_generate[@]}" --warmup_batches 1)
fi

python3 -c "import sys, torch, transformers, open_clip
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'
print(sys.version.split()[0], torch.__version__, transformers.__version__, open_clip.__version__, gpu)" \
    >>"$OUT/log.txt" 2>&1

started=$SECONDS
run() {  # run LIMIT_S COMMAND...: its JSON lines to results.jsonl, all else to log.txt
    local limit=$1
    shift
    local left=$((BUDGET_S - (SECONDS - started)))
    if ((left < 30)); then
        echo "skipped, budget spent: $*" >>"$OUT/log.txt"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $* (limit ${limit} s)" >>"$OUT/log.txt"
    local phase=$SECONDS
    RUN_LIMIT_S=$limit timeout "$limit" "$@" >"$OUT/stdout.tmp" 2>>"$OUT/log.txt" ||
        echo "!! exit $? after $((SECONDS - started)) s: $*" >>"$OUT/log.txt"
    echo "-- took $((SECONDS - phase)) s" >>"$OUT/log.txt"
    grep '^{' "$OUT/stdout.tmp" >>"$OUT/results.jsonl"
    grep -v '^{' "$OUT/stdout.tmp" >>"$OUT/log.txt"
    rm -f "$OUT/stdout.tmp"
}

# 1. the training step, ours then upstream's (upstream's process also times its generation, on
# the same build); 2. our generation; 3. the training job; 4. the GPU tests; 5. the options
run 150 python3 scripts/benchmark_train.py "${train[@]}" --profile "$OUT/train_profile.txt"
PYTHONPATH=$UPSTREAM_PATH run 180 python3 scripts/benchmark_upstream.py "${upstream[@]}" \
    --profile "$OUT/upstream_train_profile.txt"
run 90 python3 scripts/benchmark_generate.py "${generate[@]}"
# a folder of this run's own (two runs on one machine, e.g. test sessions, must not share one),
# outside $OUT (the runs' checkpoints are not results)
training_dir="${TMPDIR:-/tmp}/gpu_training_runs.$$"
run 240 python3 scripts/gpu_training_runs.py --out "$training_dir" "${training_runs[@]}"
rm -rf "$training_dir"
run 150 python3 -m pytest -p no:cacheprovider -q -k cuda tests/test_gpu.py \
    tests/test_training_precision.py::test_bf16_frozen_weights_give_bitwise_the_same_loss_and_gradients
TORCH_LOGS=perf_hints run 180 python3 scripts/benchmark_generate.py "${generate[@]}" --compile \
    --profile "$OUT/generate_compiled.txt"
run 120 python3 scripts/benchmark_train.py "${train[@]}" --gradient_checkpointing selective
run 240 python3 scripts/benchmark_train.py "${train[@]}" --compile
run 120 python3 scripts/benchmark_train.py "${train[@]}" --lm "$llama"
echo "done after $((SECONDS - started)) s" >>"$OUT/log.txt"
