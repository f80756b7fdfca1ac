#!/usr/bin/env bash
# The GPU check of compute/: the tests marked `cuda` and `python -m benchmarks gpu`, in one run
# of under 5 minutes on a machine with a CUDA GPU (the device machine: PyTorch, JAX and CuPy
# preinstalled, no network).
#
#   scripts/gpu-check.sh prepare   here, with network: fetch the wheels the GPU machine lacks
#                                  (natsort, for the pipeline benchmark) into .whl/ (git-ignored)
#   scripts/gpu-check.sh           there: the tests and the benchmark; log and results in $OUT
#   scripts/gpu-check.sh --cpu     anywhere: the same commands; without CUDA every GPU test
#                                  skips with its reason and the benchmark says it skipped
#
# From a session with a device machine, in the repository root, after `prepare`:
#   device run, command "bash scripts/gpu-check.sh", carry [".whl"], timeout_s 330
# Results: $OUT/gpu-check.log (everything), $OUT/gpu-tests.xml (JUnit), $OUT/gpu-bench.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl
NEEDED="natsort==8.4.0"     # the pinned version in constraints.txt

if [[ "${1:-}" == "prepare" ]]; then
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d "$WHEELS" $NEEDED
fi

OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
exec > >(tee "$LOG") 2>&1

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/gpu-check-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX would take 75 % of the GPU at start; torch and CuPy share it here
export XLA_PYTHON_CLIENT_PREALLOCATE=false

echo "# gpu-check $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: none"
"$PY" - <<'EOF'
import importlib
for name in ("numpy", "torch", "jax", "cupy", "natsort", "scipy", "skimage", "pytest"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as e:
        print(f"{name}: {type(e).__name__}: {e}")
EOF

status=0
echo "## tests (marked cuda)"
timeout 180 "$PY" -m pytest -q -m cuda -p no:cacheprovider -o addopts="" -rA \
    --junitxml="$OUT/gpu-tests.xml" --basetemp=/tmp/gpu-check-pytest \
    tests/test_gpu.py tests/test_memory.py || status=$?

echo "## benchmark"
timeout 100 "$PY" -m benchmarks gpu | tee "$OUT/gpu-bench.md"
bench=${PIPESTATUS[0]}
[[ $bench -ne 0 ]] && status=$bench
echo "# gpu-check done: exit $status"
exit $status
