#!/usr/bin/env bash
# The one script a GPU session runs (one H100 or H200): full-size correctness of the fused kernels, then the entropy
# benchmark, then the training-step benchmarks (a transformers step, and verl's own actor update with and without
# AEnt). Every stage runs under its own time limit (110 + 30 + 150 + 60 + 120 s at most,
# so the whole script fits one 480-s device call with time left for a rerun in a 15-minute budget) and a failing
# stage does not stop the next one; the exit status is non-zero if any stage failed or did not run (a stage whose
# prerequisites do not import counts as failed, and the summary names it).
#
#   bash scripts/gpu_checks.sh            # from the repository root (or anywhere: it changes into the root)
#   AENT_GPU_PYTEST=1 bash scripts/gpu_checks.sh   # also run `pytest -m gpu` (repeats the verify stage; +90 s cap)
#
# Output: everything printed goes to $OUT/gpu_checks.log as well; the results files benchmarks/entropy.csv and
# benchmarks/step.csv and benchmarks/verl_update.csv get rows appended and are copied to $OUT. Without $OUT a temporary folder is used and named at
# the end. Needs python3 with torch (CUDA) and Triton; transformers for the step benchmark (when it does not import,
# wheels in .whl/ are installed into /tmp/site first, see docs/PERFORMANCE.md); pytest is optional.
set -u -o pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then  # usage: the comment block above
    awk 'NR > 1 { if (!/^#/) exit; sub(/^# ?/, ""); print }' "$0"; exit 0
fi
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-$(mktemp -d -t aent-gpu-checks.XXXXXX)}"
mkdir -p "$OUT_DIR" benchmarks
LOG="$OUT_DIR/gpu_checks.log"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
FAILED=()

stage() {  # stage NAME SECONDS COMMAND...
    local name="$1" limit="$2"
    shift 2
    echo
    echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" -eq 0 ] || FAILED+=("$name (exit $rc)")
}

{
    echo "=== aent gpu checks, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 || true
    "$PY" - <<'EOF'
import importlib, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
for name in ("triton", "transformers", "pytest", "verl", "tqdm"):
    try:
        print(f"{name}: {importlib.import_module(name).__version__}")
    except Exception as error:
        print(f"{name}: not importable ({type(error).__name__})")
EOF

    if ! "$PY" -c "import transformers" 2>/dev/null; then
        if ls .whl/*.whl >/dev/null 2>&1; then
            echo "transformers missing: installing the wheels in .whl/ into /tmp/site"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
                && export PYTHONPATH="$PYTHONPATH:/tmp/site"
        else
            echo "transformers missing and no .whl/ folder: the step benchmark will not run (counted as failed). To bring it, see"
            echo "docs/PERFORMANCE.md ('Running on the GPU machine'): pip download the wheels into .whl/ and carry .whl"
        fi
    fi

    # 1. Correctness at full size: fused vs torch path (and the float64 reference for 1 and 3 rows), including the
    #    select's fallback passes forced on every row and row skipping (row_mask); then the registers and spills the
    #    driver reports for the compiled kernels, against the compiled-code figures of scripts/kernel_cost.py.
    stage "verify (fp32/bf16, T in 1 3 4097, V 151936, fallback, row_mask; top_k 2/64, top_p 0.99 at T <= 3)" 110 \
        "$PY" scripts/bench_entropy.py --verify
    stage "kernel registers on the device" 30 "$PY" scripts/kernel_cost.py --on-device
    if [ "${AENT_GPU_PYTEST:-0}" = 1 ]; then
        if "$PY" -c "import pytest" 2>/dev/null; then
            stage "pytest -m gpu tests/test_triton_entropy.py tests/test_fused.py" 120 \
                "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_triton_entropy.py tests/test_fused.py
        else
            echo "pytest not importable here: pytest -m gpu did NOT run"
            FAILED+=("pytest -m gpu (did not run: pytest not importable)")
        fi
    fi

    # 2. Entropy benchmark (T 4096 and 16384, fp32 and bf16, p 0.33): every variant, the fused kernels also with
    #    the fallback forced and with half the rows skipped, and two other forward block shapes.
    stage "bench_entropy" 150 "$PY" scripts/bench_entropy.py --fused-configs 1024x4 4096x8

    # 3. Step overhead on a Qwen2.5-1.5B-shaped model, 4 x 1024 tokens.
    if "$PY" -c "import transformers" 2>/dev/null; then
        stage "bench_step" 60 "$PY" scripts/bench_step.py
    else
        echo "transformers not importable here: bench_step did NOT run"
        FAILED+=("bench_step (did not run: transformers not importable)")
    fi

    # 4. verl's own actor update (FSDP engine, one GPU), plain GRPO against AEnt on a Qwen2.5-1.5B-shaped random
    #    model, bf16, with verl's own log-prob call (flash-attn's in-place cross-entropy when flash-attn is installed).
    #    Targets: update time ratio <= 1.05 (stretch 1.03), at most one logits-sized buffer more than plain.
    #    The same run has the use_fused_kernels=true rows (plain_fused: verl's op; aent_fused: aent.verl.fused).
    #    Targets: aent_fused peak_mib <= 1.1x plain_fused and >= one logits buffer below plain; time <= 1.2x aent.
    if "$PY" -c "import verl, tensordict, transformers" 2>/dev/null; then
        stage "bench_verl_update" 120 "$PY" scripts/bench_verl_update.py --device cuda --dtype bf16 --logprob verl \
            --preset qwen2.5-1.5b --vocab 151936 --seqs 4 --seq-len 1024 --prompt-len 256 --micro 4 --reps 3
    else
        echo "verl/tensordict/transformers not importable here: bench_verl_update did NOT run (carry the wheels, see"
        echo "docs/PERFORMANCE.md 'Running on the GPU machine')"
        FAILED+=("bench_verl_update (did not run: verl, tensordict or transformers not importable)")
    fi

    cp benchmarks/entropy.csv benchmarks/step.csv benchmarks/verl_update.csv "$OUT_DIR"/ 2>/dev/null
    echo
    if [ "${#FAILED[@]}" -eq 0 ]; then
        echo "=== all stages passed; results in $OUT_DIR"
    else
        echo "=== ${#FAILED[@]} stage(s) failed or did not run; results so far in $OUT_DIR:"
        printf '===   %s\n' "${FAILED[@]}"
    fi
    [ "${#FAILED[@]}" -eq 0 ]
} 2>&1 | tee "$LOG"
