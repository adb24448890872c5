#!/usr/bin/env bash
# Builds the release wheel of the Python package ichseg (abi3, CPython >= 3.10; or the dev
# profile's, below) into target/wheels/ (or $1), installs it into a fresh virtual environment,
# and checks that the installed package segments the shipped sample exactly as the `ichseg` CLI
# does.
#
#   bindings/python/build_wheel.sh [OUT_DIR]
#
# Needs .venv-test (scripts/test-deps.sh: maturin) and the CLI to compare with ($ICHSEG_BIN,
# default the debug build `cargo test` makes). CARGO_TARGET_DIR is honoured.
# ICHSEG_WHEEL_PROFILE=dev builds the wheel with Cargo's dev profile instead of release: the same
# package, made from what bindings/python/run_tests.sh compiled (scripts/test.sh does this, so
# that the packaging and installing are checked without a second build of tract).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venv=$root/.venv-test
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
out=${1:-$CARGO_TARGET_DIR/wheels}
cli=${ICHSEG_BIN:-$CARGO_TARGET_DIR/debug/ichseg}
[[ -x $cli ]] || { echo "build_wheel.sh: $cli missing: cargo test --no-run, or set ICHSEG_BIN" >&2; exit 1; }
mkdir -p "$out"
rm -f "$out"/ichseg-*.whl
profile=${ICHSEG_WHEEL_PROFILE:-release}
case $profile in release | dev) ;; *) echo "build_wheel.sh: ICHSEG_WHEEL_PROFILE must be release or dev" >&2; exit 2 ;; esac
"$venv/bin/maturin" build --profile "$profile" --locked -q -m bindings/python/Cargo.toml -o "$out"
wheel=$(ls "$out"/ichseg-*.whl)
echo "build_wheel.sh: built $wheel ($profile profile, $(du -k "$wheel" | cut -f1) KiB)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel"
"$cli" segment models/samples/sample.nii.gz -m models/unet.onnx -o "$work/cli.nii.gz" --device cpu --quiet
cd "$work"  # not the source tree: the installed wheel must be what imports
"$work/venv/bin/python" - "$root" <<'PY'
import sys, pathlib
import numpy as np
import ichseg
root = pathlib.Path(sys.argv[1])
assert "venv" in ichseg.__file__, f"imported {ichseg.__file__}, not the installed wheel"
engine = ichseg.Engine(device="cpu")
result = ichseg.Segmenter(engine, root / "models/unet.onnx").segment(ichseg.read_volume(root / "models/samples/sample.nii.gz"))
cli = ichseg.read_volume("cli.nii.gz").array
assert np.array_equal(result.mask, cli.astype(np.uint8)), "the wheel's mask differs from the CLI's"
print(f"build_wheel.sh: the installed wheel (ichseg {ichseg.__version__}) segments the sample as the CLI does: "
      f"{len(result.lesions)} lesion(s), {result.total_volume_ml:.2f} mL")
PY
