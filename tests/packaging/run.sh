#!/usr/bin/env bash
# Installs libichseg into a temporary prefix (scripts/install.sh, debug profile) and builds the
# examples of docs/C-API.md against it: bindings/examples/minimal.cpp with CMake find_package
# (ichseg::ichseg shared and ichseg::ichseg_static) and with pkg-config (ichseg.pc), and
# bindings/examples/minimal.c with pkg-config (ichseg.pc, and ichseg-static.pc). Each program
# segments a small volume with the fixture U-Net and must succeed.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in cmake pkg-config c++; do
  command -v $tool >/dev/null || { echo "packaging: $tool missing (apt-get install cmake pkg-config g++)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/install.sh --prefix "$tmp/prefix" --profile debug >/dev/null
model=tests/fixtures/unet/unet_transpose.onnx

cmake -S tests/packaging -B "$tmp/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$tmp/build" -j 2 >/dev/null
for exe in consumer_shared consumer_static; do
  out=$("$tmp/build/$exe" "$model")
  grep -q "minimal done" <<<"$out" || { echo "packaging: $exe failed: $out" >&2; exit 1; }
  echo "packaging: cmake $exe: $(head -1 <<<"$out")"
done
# the shared build really links the shared library
# (ldd's output captured first: grep -q closing the pipe early would fail it under pipefail)
deps=$(ldd "$tmp/build/consumer_shared")
grep -q "libichseg.so" <<<"$deps" || { echo "packaging: consumer_shared is not linked to libichseg.so" >&2; exit 1; }

export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
run() { # name, then the compile command
  local name=$1; shift
  "$@" -o "$tmp/$name"
  out=$("$tmp/$name" "$model")
  grep -q "minimal done" <<<"$out" || { echo "packaging: $name failed: $out" >&2; exit 1; }
  echo "packaging: $name: $(head -1 <<<"$out")"
}
rpath=-Wl,-rpath,"$tmp/prefix/lib"
run cpp_pkgconfig c++ -std=c++17 bindings/examples/minimal.cpp $(pkg-config --cflags --libs ichseg) "$rpath"
run c_pkgconfig cc -std=c11 -Wall -Werror bindings/examples/minimal.c $(pkg-config --cflags --libs ichseg) "$rpath"
run c_static cc -std=c11 bindings/examples/minimal.c $(pkg-config --cflags --libs ichseg-static)
deps=$(ldd "$tmp/c_static")
if grep -q libichseg <<<"$deps"; then echo "packaging: c_static links libichseg.so" >&2; exit 1; fi

# The ITK viewer-plugin example (bindings/cpp/examples/itk_segment), when ITK 5 is installed
# (Debian: libinsighttoolkit5-dev; .ci/run installs it and sets ICHSEG_REQUIRE_ITK=1). Its mask
# must equal `ichseg segment`'s, geometry included (ichseg eval refuses a geometry mismatch).
if ! cmake -S bindings/cpp/examples/itk_segment -B "$tmp/itk" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
     -DCMAKE_BUILD_TYPE=Release >"$tmp/itk.log" 2>&1; then
  if [[ "${ICHSEG_REQUIRE_ITK:-0}" == 1 ]]; then cat "$tmp/itk.log" >&2; exit 1; fi
  echo "packaging: SKIPPED the ITK example (ITK 5 not found: apt-get install libinsighttoolkit5-dev)"
  exit 0
fi
cmake --build "$tmp/itk" -j 2 >/dev/null
sample=models/samples/sample.nii.gz unet=models/unet.onnx
[[ -f $sample && -f $unet ]] || { sample=tests/fixtures/unet/ct_small.nii.gz unet=$model; }
out=$("$tmp/itk/itk_segment" "$unet" "$sample" "$tmp/itk_mask.nii.gz" --device cpu 2>/dev/null)
grep -q "itk_segment done" <<<"$out" || { echo "packaging: itk_segment failed: $out" >&2; exit 1; }
echo "packaging: itk_segment on $sample: $(grep lesions <<<"$out")"
bin=${CARGO_TARGET_DIR:-target}/debug/ichseg
[[ -x $bin ]] || cargo build --locked --bin ichseg -q
"$bin" segment --model "$unet" "$sample" -o "$tmp/cli_mask.nii.gz" --device cpu --quiet
"$bin" eval --pred "$tmp/itk_mask.nii.gz" --gt "$tmp/cli_mask.nii.gz" --json >"$tmp/eval.json"
python3 - "$tmp/eval.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))["overall"]
assert o["iou_background"] == 1.0 and o["iou_hemorrhage"] == 1.0, o
print("packaging: itk_segment mask == ichseg segment mask (geometry and voxels)")
PY
