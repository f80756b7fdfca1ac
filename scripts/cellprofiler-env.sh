#!/usr/bin/env bash
# CellProfiler's own LoadData module, for tests/test_plate_views.py: cellprofiler-core (the
# nightly 5.0 build; CellProfiler 4.2 pins wxPython and javabridge and cannot be installed
# here) in a virtual environment of its own, next to numpy<2 (what it is built against) and
# imagecodecs<2025 (LZW vendor TIFFs through its ImageIO reader). Built once per clone, in
# build/cellprofiler-env; a stamp says it is complete. Exit 1 (and pip's last lines) where it
# cannot be built: the test then skips with that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV="${CELLPROFILER_ENV:-build/cellprofiler-env}"
PACKAGES=("cellprofiler-core-nightly==5.0.0.dev784" "numpy<2" "imagecodecs<2025")
stamp="$ENV/.built-$(printf '%s\n' "${PACKAGES[@]}" | sha1sum | cut -c1-12)"
[ -f "$stamp" ] && exit 0
rm -rf "$ENV"
mkdir -p "$(dirname "$ENV")"
"${PYTHON:-python3}" -m venv "$ENV"
log="$ENV.log"
if ! "$ENV/bin/python" -m pip install -q "${PACKAGES[@]}" >"$log" 2>&1; then
    tail -n 5 "$log" >&2
    exit 1
fi
touch "$stamp"
