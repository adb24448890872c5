#!/usr/bin/env bash
# The one place that installs what the tests need (scripts/test.sh sources it; so does nothing
# else). Prints every install it makes. Without root, or without apt-get, it stops at once with
# the exact commands to run.
#
#   Debian packages: gcc, g++, valgrind, cmake, pkg-config, binutils (objdump, nm), python3-venv,
#                    libinsighttoolkit5-dev (ITK 5, the viewer-plugin example), dicom3tools
#                    (dciodvfy, one of the DICOM-SEG validator's readers: tests/dicom); when root
#                    also orthanc, orthanc-dev and libjsoncpp-dev (the Orthanc plugin and its
#                    tests, tests/orthanc, which scripts/test.sh skips without Orthanc)
#   Python:          a project-local virtual environment .venv-test/ with
#                    training/requirements-test.txt and NVIDIA's NVRTC wheel (the CUDA kernels
#                    compile in the tests; no GPU needed). The system interpreter is not touched.
#
# Usage: scripts/test-deps.sh [--quick]   (--quick: only what `cargo test` needs: cc, c++, objdump)
# Afterwards .venv-test/bin is what scripts/test.sh puts first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == --quick ]] && quick=1
NVRTC_WHEEL=nvidia-cuda-nvrtc==13.0.88
VENV=.venv-test

need_apt=()
want() { # command, Debian package
  command -v "$1" >/dev/null 2>&1 || need_apt+=("$2")
}
want cc gcc
want c++ g++
want objdump binutils
if [[ $quick == 0 ]]; then
  want valgrind valgrind
  want cmake cmake
  want pkg-config pkg-config
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
  compgen -G "/usr/lib/cmake/ITK-5*" >/dev/null || compgen -G "/usr/lib/*/cmake/ITK-5*" >/dev/null ||
    need_apt+=(libinsighttoolkit5-dev)
  want dciodvfy dicom3tools
  # Optional (the Orthanc part skips without them): installed when we can, else named below.
  optional_apt=()
  command -v Orthanc >/dev/null 2>&1 || optional_apt+=(orthanc)
  [[ -f /usr/include/orthanc/OrthancCPlugin.h ]] || optional_apt+=(orthanc-dev)
  pkg-config --exists jsoncpp 2>/dev/null || optional_apt+=(libjsoncpp-dev)
  if [[ ${#optional_apt[@]} -gt 0 ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      need_apt+=("${optional_apt[@]}")
    else
      echo "test-deps: the Orthanc plugin's tests will skip; to run them: sudo apt-get install -y ${optional_apt[*]}" >&2
    fi
  fi
fi

if [[ ${#need_apt[@]} -gt 0 ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "test-deps: installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "test-deps: missing Debian packages: ${need_apt[*]}. Run, then retry:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
fi
[[ $quick == 1 ]] && exit 0

if [[ ! -x $VENV/bin/python ]]; then
  echo "test-deps: creating the Python environment $VENV (python3 -m venv)"
  python3 -m venv "$VENV"
fi
# Installed once; a changed requirements file is installed again.
stamp=$VENV/.installed
want_stamp="$(cat training/requirements-test.txt) $NVRTC_WHEEL"
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want_stamp" ]]; then
  echo "test-deps: pip install -r training/requirements-test.txt $NVRTC_WHEEL into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r training/requirements-test.txt "$NVRTC_WHEEL"
  printf '%s' "$want_stamp" > "$stamp"
fi
