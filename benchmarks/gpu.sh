#!/usr/bin/env bash
# GPU verification in one call: environment, the GPU tests, then the GPU benchmark.
#
#   bash benchmarks/gpu.sh [OUTDIR]     # from the repository root; OUTDIR: $OUT, else runs/gpu
#
# Runs with the machine's own python3 (PYTHON=... to choose another) and its torch,
# transformers and triton: mmbert is installed without dependencies and without an index (no
# downloads), and src/ is put first on PYTHONPATH, so the working tree is what runs.
#
# Stages (each under `timeout`, all within GPU_BUDGET_S seconds, default 570):
#   1. nvidia-smi, versions, whether flash_attn imports        -> OUTDIR/env.log
#   2. the GPU tests (pytest -m gpu -s)                          -> OUTDIR/test_gpu.log
#   3. mmbert bench, bf16, base preset: fixed 64x512, mixed 128x[32,512], one 8192-token
#      sequence; ours vs transformers' ModernBERT (sdpa, and flash_attention_2 when flash_attn
#      imports) and XLM-R base (random weights)                   -> OUTDIR/bench_inference.log
#   4. mmbert bench, the MLM training step: ours eager, ours under torch.compile, transformers'
#      ModernBertForMaskedLM                                      -> OUTDIR/bench_train.log
# Benchmark results: OUTDIR/results.json, results.md (tokens/s, useful TFLOP/s, MFU against
# PEAK_TFLOPS, default 989 = H100/H200 SXM dense bf16), bench.png. A failed or timed-out stage
# does not stop the later ones; the script exits 1 at the end if any stage failed.
set -euo pipefail

OUTDIR=${1:-${OUT:-runs/gpu}}
PY=${PYTHON:-python3}
BUDGET=${GPU_BUDGET_S:-570}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 TOKENIZERS_PARALLELISM=false
FAILED=""

# stage NAME CAP_SECONDS COMMAND...: COMMAND under a timeout of CAP (or what is left of the
# budget), its output teed to OUTDIR/NAME.log; a failure is remembered, not fatal.
stage() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    if ((left < 30)); then
        echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left"
        FAILED+="  $name: skipped (time budget spent)"$'\n'
        return 0
    fi
    if ((cap > left)); then
        cap=$left
    fi
    echo "== $name (timeout ${cap}s): $*"
    local start=$SECONDS rc=0
    timeout --kill-after=15 "$cap" "$@" 2>&1 | tee "$OUTDIR/$name.log" || rc=$?
    if ((rc == 124 || rc == 137)); then
        FAILED+="  $name: timed out after ${cap}s"$'\n'
    elif ((rc != 0)); then
        FAILED+="  $name: exit code $rc"$'\n'
    fi
    echo "== $name: exit code $rc after $((SECONDS - start))s"
}

environment() {
    nvidia-smi || echo "nvidia-smi: not available"
    "$PY" - <<'EOF'
import sys

import torch

print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "| CUDA build", torch.version.cuda, "| available",
      torch.cuda.is_available(), "| devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
for name in ("transformers", "triton", "safetensors", "tokenizers", "numpy"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:  # noqa: BLE001
        print(f"{name}: does not import ({type(e).__name__}: {e})")
try:
    import flash_attn

    print("flash_attn", flash_attn.__version__, "imports: the varlen kernel will be used")
except Exception as e:  # noqa: BLE001
    print(f"flash_attn: does not import ({type(e).__name__}: {e}); SDPA path only")
EOF
    # no dependencies, no index: nothing is downloaded; PYTHONPATH=src covers a failed install
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . \
        || echo "pip install -e . failed: running from src/ via PYTHONPATH"
    "$PY" -c "import mmbert.bench, mmbert.model; print('mmbert from', mmbert.model.__file__)"
}

export PY
export -f environment
echo "GPU verification -> $OUTDIR ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), budget ${BUDGET}s)"
stage env 120 bash -c environment

# The test files that hold GPU tests, named: other test modules import packages a bare GPU
# image may lack (hypothesis, onnxruntime, ...), and one failed import stops a whole session.
mapfile -t GPU_TESTS < <(grep -l "pytest.mark.gpu" tests/test_*.py)
stage test_gpu 200 "$PY" -m pytest -q -s -m gpu -p no:cacheprovider \
    --junitxml "$OUTDIR/test_gpu.xml" "${GPU_TESTS[@]}"

BENCH=("$PY" -m mmbert.cli bench --device cuda --dtype bf16 --preset mmbert-base
       --peak-tflops "$PEAK_TFLOPS" --out "$OUTDIR")
FA2=()
if "$PY" -c "from flash_attn import flash_attn_varlen_func" >/dev/null 2>&1; then
    FA2=(hf-modernbert-fa2)
fi
stage bench_inference 130 "${BENCH[@]}" --workload fixed mixed long \
    --models mmbert hf-modernbert hf-xlmr ${FA2[@]+"${FA2[@]}"}
stage bench_train 210 "${BENCH[@]}" --workload train \
    --models mmbert mmbert-compiled hf-modernbert ${FA2[@]+"${FA2[@]}"}

echo
echo "== summary ($SECONDS s in all)"
if [[ -f "$OUTDIR/results.md" ]]; then
    cat "$OUTDIR/results.md"
fi
grep -h "^\[gpu\]" "$OUTDIR/test_gpu.log" 2>/dev/null || true
tail -n 3 "$OUTDIR/test_gpu.log" 2>/dev/null || true
echo "outputs: $OUTDIR"
if [[ -n "$FAILED" ]]; then
    printf 'FAILED stages:\n%s' "$FAILED"
    exit 1
fi
echo "all stages passed"
