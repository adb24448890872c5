#!/usr/bin/env bash
# Installs libichseg into a temporary prefix (scripts/install.sh; debug profile, the test build's
# libraries, or ICHSEG_PROFILE=release or dist to reuse such a build) and builds the examples of docs/C-API.md
# against it: bindings/examples/minimal.cpp with CMake find_package (ichseg::ichseg shared and
# ichseg::ichseg_static) and with pkg-config (ichseg.pc), and bindings/examples/minimal.c with
# pkg-config (ichseg.pc, and ichseg-static.pc). Each program segments a small volume with the
# fixture U-Net and must succeed. Then, with ITK 5, the viewer-plugin example
# bindings/cpp/examples/itk_segment (NIfTI and DICOM input, segmentation and pseudo-labelling)
# against the ichseg CLI.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in cmake pkg-config c++; do
  command -v $tool >/dev/null || { echo "packaging: $tool missing (apt-get install cmake pkg-config g++)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
profile=${ICHSEG_PROFILE:-debug}
cargo_flags=()
[[ $profile == release ]] && cargo_flags=(--release)
[[ $profile == dist ]] && cargo_flags=(--profile dist)
scripts/install.sh --prefix "$tmp/prefix" --profile "$profile" >/dev/null
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
# Versioned install: the programs ask for the SONAME, which links to the versioned file.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
needed=$(objdump -p "$tmp/build/consumer_shared" | awk '$1 == "NEEDED" && $2 ~ /ichseg/ {print $2}')
[[ $needed == "libichseg.so.${version%%.*}" ]] || { echo "packaging: consumer_shared needs '$needed', not the SONAME" >&2; exit 1; }
[[ $(readlink -f "$tmp/prefix/lib/libichseg.so") == "$(readlink -f "$tmp/prefix/lib/libichseg.so.$version")" &&
   -f "$tmp/prefix/lib/libichseg.so.$version" && -L "$tmp/prefix/lib/$needed" ]] ||
  { echo "packaging: the install lacks libichseg.so -> $needed -> libichseg.so.$version" >&2; exit 1; }
echo "packaging: shared library installed as libichseg.so.$version, SONAME $needed"

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
# (Debian: libinsighttoolkit5-dev; .ci/run installs it and sets ICHSEG_REQUIRE_ITK=1). Its masks
# must equal the CLI's, geometry included (ichseg eval refuses headers whose sizes, voxel sizes
# or affines differ by more than 1e-5 relative): segmentation of the NIfTI sample and of a DICOM
# series made from it here, and pseudo-labelling with the shipped classifiers.
if ! cmake -S bindings/cpp/examples/itk_segment -B "$tmp/itk" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
     -DCMAKE_BUILD_TYPE=Release >"$tmp/itk.log" 2>&1; then
  if [[ "${ICHSEG_REQUIRE_ITK:-0}" == 1 ]]; then cat "$tmp/itk.log" >&2; exit 1; fi
  echo "packaging: SKIPPED the ITK example (ITK 5 not found: apt-get install libinsighttoolkit5-dev)"
  exit 0
fi
cmake --build "$tmp/itk" -j 2 >/dev/null
cmake -S tests/packaging/make_dicom -B "$tmp/make_dicom" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$tmp/make_dicom" -j 2 >/dev/null
itk=$tmp/itk/itk_segment
bin=${CARGO_TARGET_DIR:-target}/$profile/ichseg
# The CLI of the same build; for debug the test build's (install.sh built it: `cargo build --bin`
# would compile tract again, its features differ).
if [[ $profile == debug ]]; then cargo test --locked --no-run -q; else cargo build --locked --bin ichseg -q "${cargo_flags[@]}"; fi  # a no-op when fresh
same_mask() { # ITK_MASK CLI_MASK WHAT: equal voxels and geometry
  "$bin" eval --pred "$1" --gt "$2" --json >"$tmp/eval.json"
  python3 - "$tmp/eval.json" "$3" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))["overall"]
assert o["iou_background"] == 1.0 and o["iou_hemorrhage"] == 1.0, o
print(f"packaging: {sys.argv[2]} (geometry and voxels)")
PY
}
itk_run() { # ARGS...: runs itk_segment, which must succeed
  out=$("$itk" "$@" --device cpu 2>/dev/null) && grep -q "itk_segment done" <<<"$out" ||
    { echo "packaging: itk_segment $* failed: $out" >&2; exit 1; }
}

sample=models/samples/sample.nii.gz unet=models/unet.onnx
itk_run "$unet" "$sample" "$tmp/itk_mask.nii.gz"
echo "packaging: itk_segment on $sample: $(grep lesions <<<"$out")"
"$bin" segment --model "$unet" "$sample" -o "$tmp/cli_mask.nii.gz" --device cpu --quiet
same_mask "$tmp/itk_mask.nii.gz" "$tmp/cli_mask.nii.gz" "itk_segment mask == ichseg segment mask"

# DICOM: the sample as a series of int16 slices with a rescale intercept (the helper checks that
# every HU value and the geometry survive the round trip), segmented from the folder.
"$tmp/make_dicom/make_dicom_series" "$sample" "$tmp/dicom" | sed 's/^/packaging: /'
itk_run "$unet" "$tmp/dicom" -o "$tmp/itk_dicom_mask.nii.gz"
same_mask "$tmp/itk_dicom_mask.nii.gz" "$tmp/itk_mask.nii.gz" "itk_segment mask of the DICOM series == of the NIfTI"
# The library's own DICOM reader (no GDCM) on the series GDCM wrote: the same mask and geometry
# as ITK's, as NIfTI and as a DICOM-SEG placed back on the series.
"$bin" segment --model "$unet" "$tmp/dicom" -o "$tmp/cli_dicom_mask.nii.gz" --device cpu --quiet
same_mask "$tmp/cli_dicom_mask.nii.gz" "$tmp/itk_dicom_mask.nii.gz" "ichseg segment mask of the DICOM series == itk_segment's"
"$bin" segment --model "$unet" "$tmp/dicom" -o "$tmp/cli_dicom_seg.dcm" --device cpu --quiet
same_mask "$tmp/cli_dicom_seg.dcm" "$tmp/itk_dicom_mask.nii.gz" "ichseg segment DICOM-SEG of the series == itk_segment's mask"

# Pseudo-labelling with the shipped classifiers and the sample's slice labels (a slice bleeds
# where its ground-truth mask has a voxel), against `ichseg pseudo-label` with the same inputs.
classifiers=(--classifier models/classifier_slim34.onnx --classifier models/classifier_slim50.onnx)
python3 - models/samples/sample_mask.nii.gz "$tmp/labels.csv" <<'PY'
import gzip, struct, sys  # no nibabel: a uint8 NIfTI-1 mask is simple to read
raw = gzip.open(sys.argv[1]).read()
nx, ny, nz = struct.unpack_from("<8h", raw, 40)[1:4]
assert struct.unpack_from("<h", raw, 70)[0] == 2, "expected a uint8 mask"
data, plane = raw[int(struct.unpack_from("<f", raw, 108)[0]):], nx * ny
with open(sys.argv[2], "w") as f:
    f.write("slice,label\n" + "".join(f"{z},{int(any(data[z * plane:(z + 1) * plane]))}\n" for z in range(nz)))
PY
itk_run "${classifiers[@]}" --labels "$tmp/labels.csv" models/samples/sample.nii.gz -o "$tmp/itk_pseudo.nii.gz"
echo "packaging: itk_segment pseudo-labelling: $(grep -E '^(slices|mask)' <<<"$out" | tr -s ' ' | paste -sd ';')"
"$bin" pseudo-label "${classifiers[@]}" --labels "$tmp/labels.csv" models/samples/sample.nii.gz \
  -o "$tmp/cli_pseudo.nii.gz" --device cpu --quiet
same_mask "$tmp/itk_pseudo.nii.gz" "$tmp/cli_pseudo.nii.gz" "itk_segment pseudo mask == ichseg pseudo-label mask"

# Errors: a clear message, exit status 1, no output file.
expect_error() { # MESSAGE ARGS...
  local msg=$1; shift
  local rc=0
  err=$("$itk" "$@" -o "$tmp/never.nii.gz" --device cpu 2>&1 >/dev/null) || rc=$?
  if [[ $rc != 1 || $err != *"$msg"* || -e $tmp/never.nii.gz ]]; then
    echo "packaging: itk_segment $* should fail with \"$msg\" (rc $rc, output $(ls "$tmp/never.nii.gz" 2>&1)): $err" >&2
    exit 1
  fi
  echo "packaging: itk_segment error as expected: $(tail -1 <<<"$err")"
}
expect_error "$tmp/missing.onnx" --classifier "$tmp/missing.onnx" "${classifiers[@]}" models/samples/sample.nii.gz
printf 'slice,label\n99,1\n' >"$tmp/bad_labels.csv"
expect_error "slice 99 but the volume has" "${classifiers[@]}" --labels "$tmp/bad_labels.csv" models/samples/sample.nii.gz
