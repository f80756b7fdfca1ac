#!/usr/bin/env bash
# CellProfiler's own LoadData module, for tests/test_plate_views.py: cellprofiler-core (the
# nightly 5.0 build; CellProfiler 4.2 pins wxPython and javabridge and cannot be installed
# here) in a virtual environment of its own, next to numpy<2 (what it is built against) and
# imagecodecs<2025 (LZW vendor TIFFs through its ImageIO reader).
#
# Built once per machine, outside any clone (CI clones afresh), in
# ~/.cache/vfsmount-tools/cellprofiler-<hash of the pins>; a stamp marks it complete and a lock
# keeps two builds apart. Prints the environment's python on success; exits 1 with pip's last
# lines where it cannot be built (the test then skips with that reason).
set -euo pipefail
PACKAGES=("cellprofiler-core-nightly==5.0.0.dev784" "numpy<2" "imagecodecs<2025")
hash=$(printf '%s\n' "${PACKAGES[@]}" | sha1sum | cut -c1-12)
ENV="${CELLPROFILER_ENV:-${HOME:-/root}/.cache/vfsmount-tools/cellprofiler-$hash}"
mkdir -p "$(dirname "$ENV")"
exec 9>"$ENV.lock"
flock 9
if [ ! -f "$ENV/.complete" ]; then
    rm -rf "$ENV"
    "${PYTHON:-python3}" -m venv "$ENV"
    if ! "$ENV/bin/python" -m pip install -q "${PACKAGES[@]}" >"$ENV.log" 2>&1; then
        grep -v "^WARNING: Location" "$ENV.log" | tail -n 5 >&2
        exit 1
    fi
    touch "$ENV/.complete"
fi
echo "$ENV/bin/python"
