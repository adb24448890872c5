#!/usr/bin/env bash
# Compares two builds of the ichseg CLI on the shipped sample, in one run on one machine:
# segmentation (models/unet.onnx) and pseudo-labelling (the two shipped classifiers, CRF on),
# each run alternately A, B, A, B ... so drift hits both alike. Prints each side's median wall
# time and peak resident memory (GNU time) and the ratio B/A, with the CPU model.
#
#   scripts/bench_versions.sh OLD_ICHSEG NEW_ICHSEG [RUNS=5] [THREADS=2]
#
# For checking that a change (a refactor) left speed and memory alone; the comparison with
# onnxruntime and PyTorch is scripts/bench_segment.py and scripts/bench_pseudo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { echo "usage: scripts/bench_versions.sh OLD_ICHSEG NEW_ICHSEG [RUNS] [THREADS]" >&2; exit 2; }
a=$1 b=$2 runs=${3:-5} threads=${4:-2}
[[ -x /usr/bin/time ]] || { echo "bench_versions: GNU time missing (apt-get install time)" >&2; exit 1; }
for bin in "$a" "$b"; do [[ -x $bin ]] || { echo "bench_versions: $bin is not executable" >&2; exit 1; }; done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sample=models/samples/sample.nii.gz

# job NAME BIN: one run; appends "wall_s max_rss_kb" to $work/NAME.times
job() {
  local name=$1 bin=$2 args
  case $name in
    segment) args=(segment --model models/unet.onnx "$sample" -o "$work/mask.nii.gz") ;;
    pseudo) args=(pseudo-label --classifier models/classifier_slim34.onnx --classifier models/classifier_slim50.onnx
                  --use-predictions "$sample" -o "$work/pseudo.nii.gz") ;;
  esac
  /usr/bin/time -f "%e %M" -a -o "$work/$name.$3.times" "$bin" "${args[@]}" --threads "$threads" --quiet >/dev/null
}
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

echo "cpu      $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1) (family $(sed -n 's/^cpu family\s*: //p' /proc/cpuinfo | head -1)), $(nproc) cores, $threads threads"
echo "A        $a"
echo "B        $b"
for name in segment pseudo; do
  job "$name" "$a" warm && job "$name" "$b" warm   # warm-up: page cache, first plans
  for ((i = 0; i < runs; i++)); do job "$name" "$a" A; job "$name" "$b" B; done
  wa=$(cut -d' ' -f1 "$work/$name.A.times" | median); wb=$(cut -d' ' -f1 "$work/$name.B.times" | median)
  ma=$(cut -d' ' -f2 "$work/$name.A.times" | median); mb=$(cut -d' ' -f2 "$work/$name.B.times" | median)
  awk -v n="$name" -v r="$runs" -v wa="$wa" -v wb="$wb" -v ma="$ma" -v mb="$mb" 'BEGIN {
    printf "%-8s %d runs each: wall A %.2f s, B %.2f s (B/A %.2f); peak RSS A %.0f MB, B %.0f MB (B/A %.2f)\n",
      n, r, wa, wb, wb / wa, ma / 1024, mb / 1024, mb / ma }'
done
