#!/usr/bin/env bash
# The GPU proof of the CUDA path (issue 5), for a GPU machine with CUDA, cuDNN and PyTorch but no
# Rust toolchain and no network. Build here first (`cargo build --release`), then run this from
# the repository root there, with target/release/ichseg carried along:
#
#   scripts/gpu-check.sh [OUT_DIR]         # OUT_DIR default: gpu-check-out
#   scripts/gpu-check.sh --dry-run         # anywhere: tiny sizes, to test the script
#
# It finds the CUDA libraries (PyTorch's pip packages nvidia/*/lib, /usr/local/cuda,
# /usr/local/nvidia) and sets LD_LIBRARY_PATH itself, prints `ichseg doctor`, lists the operators
# each model leaves on the CPU (`ichseg inspect --device cuda`), then runs scripts/bench_gpu.py
# and scripts/bench_pseudo.py: CPU-vs-GPU parity (fails the script when off) and the timing
# against PyTorch CUDA eager; then the GPU CRF's parity and time, an oversized pseudo-labelling
# batch and a U-Net batch that must be halved (GPU_CHECK_PARTS below).
# A missing nibabel is installed from wheels in .whl/ when present (no network there).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=()
if [[ "${1:-}" == "--dry-run" ]]; then dry=(--dry-run); shift; fi
out=${1:-gpu-check-out}
bin=${ICHSEG_BIN:-target/release/ichseg}
mkdir -p "$out"
# A binary with its symbols (for readable backtraces) is too large to carry as is: carry it
# gzipped (`gzip -c target/release/ichseg > DIR/ichseg.gz`, ICHSEG_BIN=DIR/ichseg.gz).
if [[ $bin == *.gz && -f $bin ]]; then
  gunzip -c "$bin" > /tmp/ichseg-bin && chmod +x /tmp/ichseg-bin && bin=/tmp/ichseg-bin
fi
[[ -x "$bin" ]] || { echo "gpu-check: $bin not found: run \`cargo build --release\` and carry it" >&2; exit 2; }

py=$(command -v python3)
libdirs=$("$py" - <<'PY'
import pathlib, site
dirs = set()
for s in site.getsitepackages() + [site.getusersitepackages()]:
    root = pathlib.Path(s) / "nvidia"
    if root.is_dir():
        dirs.update(str(p.parent) for p in root.rglob("lib*.so*"))
print(":".join(sorted(dirs)))
PY
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
  [[ -d $d ]] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
echo "gpu-check: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

if ! "$py" -c "import nibabel" 2>/dev/null && compgen -G ".whl/nibabel-*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --target /tmp/ichseg-site .whl/nibabel-*.whl && export PYTHONPATH=/tmp/ichseg-site
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$bin" doctor | tee "$out/doctor.txt"
for m in tests/fixtures/unet/unet_transpose.onnx tests/fixtures/unet/unet_resize.onnx \
         tests/fixtures/classifier/tiny_classifier.onnx; do
  echo "== inspect --device cuda $m"
  "$bin" inspect --device cuda "$m" 2>&1 | sed -n '/^cuda/,$p;/error/p' | tee -a "$out/placement.txt"
done
# GPU_CHECK_PARTS: which parts to run (default all): segment (U-Net parity and speed), pseudo
# (pseudo-labelling parity and speed, ResNet34 + ResNet50, against PyTorch CUDA without the CRF,
# which has no GPU peer there) and their placements, crf (the shipped classifiers on the sample
# volume with the CRF, CPU against CUDA in strict FP32: masks and CRF time), memory (an
# oversized batch; after pseudo), oom (a U-Net batch that cannot fit: the batch must be halved
# until it does; after segment), profile (an nsys summary of a U-Net run; after segment).
parts=${GPU_CHECK_PARTS:-segment pseudo crf memory oom profile}
# want PART: PART is asked for and the time budget (GPU_CHECK_BUDGET_S, default 480 s: a device
# call may run 600 s) is not spent; a part skipped for time is said, and fails the script.
budget=${GPU_CHECK_BUDGET_S:-480}
want() {
  [[ $parts == *$1* ]] || return 1
  if (( SECONDS > budget )); then
    echo "== $1: skipped, the time budget of $budget s is spent (GPU_CHECK_BUDGET_S)"; status=1; return 1
  fi
}
status=0
if want segment; then
  "$py" scripts/bench_gpu.py --ichseg "$bin" --out-dir "$out" "${dry[@]}" 2>&1 | tee "$out/bench_gpu.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
fi
if want pseudo; then
  "$py" scripts/bench_pseudo.py --ichseg "$bin" --device cuda --no-crf --parity-slices 4 --repeat 2 \
    --out-dir "$out" "${dry[@]}" 2>&1 | tee "$out/bench_pseudo.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  for m in /tmp/ichseg-pseudo-work/*.onnx; do
    [[ $m == *cam.onnx ]] && continue
    "$bin" cam-graph "$m" -o "${m%.onnx}.cam.onnx" --quiet 2>&1 | tail -1
    echo "== inspect --device cuda $(basename "${m%.onnx}").cam.onnx" | tee -a "$out/placement.txt"
    "$bin" inspect --device cuda "${m%.onnx}.cam.onnx" 2>&1 | sed -n '/^cuda/,$p;/error/p' | tee -a "$out/placement.txt"
  done
fi
# crf CASE VOLUME ARGS...: pseudo-label VOLUME on the CPU and on CUDA, both in strict FP32, and
# compare the masks (>= 99.9 % of voxels) and where and how fast the CRF ran.
crf_case() {
  local case=$1 volume=$2 gpu=cuda
  shift 2
  [[ ${#dry[@]} -gt 0 ]] && gpu=auto  # a dry run may have no GPU: auto falls back to the CPU
  for dev in cpu "$gpu"; do
    NVIDIA_TF32_OVERRIDE=0 "$bin" pseudo-label "$@" "$volume" --device "$dev" --batch 8 \
      -o "$out/crf_${case}_$dev.nii.gz" --report "$out/crf_${case}_$dev.json" --quiet 2>&1 | tail -3
  done
  "$py" - "$out/crf_${case}" cpu "$gpu" "${#dry[@]}" <<'PY' 2>&1 | tee -a "$out/crf.txt"
import json, sys, nibabel as nib, numpy as np
base, cpu, gpu, dry = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] != "0"
r = {d: json.load(open(f"{base}_{d}.json")) for d in (cpu, gpu)}
m = {d: np.asarray(nib.load(f"{base}_{d}.nii.gz").dataobj) for d in (cpu, gpu)}
agree = float((m[cpu] == m[gpu]).mean()) * 100
t = {d: r[d]["timings"] for d in (cpu, gpu)}
print(f"crf {base.rsplit('_', 1)[-1]}: masks agree on {agree:.4f} % of voxels ({int(m[cpu].sum())} vs {int(m[gpu].sum())} "
      f"mask voxels); crf_device {r[gpu]['crf_device']}; CRF s cpu {t[cpu]['crf_s']:.3f}, gpu {t[gpu]['crf_s']:.3f}; "
      f"total s cpu {t[cpu]['total_s']:.3f}, gpu {t[gpu]['total_s']:.3f}; threads {r[cpu]['threads']}; "
      f"cam_device {r[gpu]['cam_device']}, taps_on_device {r[gpu].get('taps_on_device')}")
sys.exit(0 if agree >= 99.9 and (dry or r[gpu]["crf_device"] == "cuda") else 1)
PY
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
}
if want crf; then
  crf_case sample models/samples/sample.nii.gz --use-predictions \
    --classifier models/classifier_slim34.onnx --classifier models/classifier_slim50.onnx
  w=/tmp/ichseg-pseudo-work  # the pseudo part's 512x512x32 volume and ResNets, when it ran
  [[ -f $w/resnet50_1.onnx && -f $w/labels.csv ]] && crf_case bench "$w/ct.nii.gz" --labels "$w/labels.csv" \
    --classifier "$w/resnet34_0.onnx" --classifier "$w/resnet50_1.onnx"
fi
# memory: a slice batch far beyond the card (256 slices of ResNet34 + ResNet50 gradient graphs at
# 384x384) must not crash: the batch is halved until it fits, and the report says which batch ran.
if want memory && [[ -f /tmp/ichseg-pseudo-work/resnet50_1.onnx ]]; then
  big=/tmp/ichseg-pseudo-work/big.nii.gz
  "$py" -c "import sys; sys.path.insert(0, 'scripts'); import bench_segment as bs; import pathlib; bs.write_nifti(pathlib.Path('$big'), bs.make_volume(256, ${GPU_CHECK_MEMORY_SLICES:-256}))"
  "$bin" pseudo-label --classifier /tmp/ichseg-pseudo-work/resnet34_0.onnx --classifier /tmp/ichseg-pseudo-work/resnet50_1.onnx \
    "$big" -o "$out/big_mask.nii.gz" --use-predictions --no-crf --device cuda --batch 256 --report "$out/memory.json" \
    --quiet 2>&1 | tail -3
  rc=${PIPESTATUS[0]}
  echo "== memory: exit $rc; $("$py" -c "import json; r = json.load(open('$out/memory.json')); print('batch asked 256, ran', r['batch'], '| timings', r['timings'])" 2>&1)"
  [[ $rc -eq 0 ]] || status=1
fi
# oom: the benchmark U-Net (base 64, its fixed 384x384 input) on 256 slices in one batch (the
# largest batch the library takes) while another process holds all but GPU_CHECK_OOM_FREE_GB
# (default 40) of the card: a real out-of-memory, whatever the card's size. Segmentation must
# halve the batch until it fits and say so in the report. A dry run goes through the same
# commands with a fixture U-Net, a small volume, no holder and `--device auto`.
if want oom; then
  holder=
  if [[ ${#dry[@]} -eq 0 ]]; then
    unet=/tmp/ichseg-gpu-work/unet64.onnx size=256 slices=${GPU_CHECK_OOM_SLICES:-256} dev=cuda
    rm -f /tmp/ichseg-oom-held
    GPU_CHECK_OOM_FREE_GB=${GPU_CHECK_OOM_FREE_GB:-40} "$py" - <<'PY' &
import os, time, torch
free, _ = torch.cuda.mem_get_info()
keep = int(float(os.environ["GPU_CHECK_OOM_FREE_GB"]) * 2**30)
held = torch.empty(max(free - keep, 0), dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
open("/tmp/ichseg-oom-held", "w").write(f"{held.numel() / 2**30:.1f} GiB held of {free / 2**30:.1f} GiB free")
time.sleep(300)
PY
    holder=$!
    for _ in $(seq 60); do [[ -s /tmp/ichseg-oom-held ]] && break; sleep 1; done
    echo "== oom: $(cat /tmp/ichseg-oom-held 2>/dev/null || echo 'no memory held')"
  else
    unet=tests/fixtures/unet/unet_transpose.onnx size=32 slices=8 dev=auto
  fi
  if [[ -f $unet ]]; then
    big=/tmp/ichseg-oom.nii.gz
    "$py" -c "import sys; sys.path.insert(0, 'scripts'); import bench_segment as bs; import pathlib; bs.write_nifti(pathlib.Path('$big'), bs.make_volume($size, $slices))"
    # the whole stderr, with a backtrace: a real out-of-memory once aborted the process here
    RUST_BACKTRACE=1 "$bin" segment --model "$unet" "$big" -o "$out/oom_mask.nii.gz" --device $dev --batch $slices \
      --report "$out/oom.json" --quiet > "$out/oom_stderr.txt" 2>&1
    rc=$?
    grep -v '^ *at /rustc' "$out/oom_stderr.txt" | head -60
    echo "== oom: exit $rc; $("$py" -c "import json; r = json.load(open('$out/oom.json')); b = r['batch']; print('batch asked $slices, ran', b, '(halving provoked)' if b < $slices else '(it fit: not provoked)', '| timings', r['timings'])" 2>&1)"
    [[ $rc -eq 0 ]] || status=1
  fi
  [[ -n $holder ]] && kill "$holder" 2>/dev/null && wait "$holder" 2>/dev/null
fi
# profile: an nsys timeline of one U-Net segmentation of the benchmark volume (after segment),
# summarised per GPU kernel, per CUDA API call and per memory copy: where the distance to
# PyTorch goes (issue 5). Needs nsys (CUDA toolkit or Nsight Systems); skipped without it.
if want profile && [[ ${#dry[@]} -eq 0 && -f /tmp/ichseg-gpu-work/unet64.onnx ]]; then
  # the host's side first: per network run, where tract's plan spends its time (ICHSEG_PROFILE_OPS)
  ICHSEG_PROFILE_OPS=1 "$bin" segment --model /tmp/ichseg-gpu-work/unet64.onnx /tmp/ichseg-gpu-work/ct.nii.gz \
    -o /tmp/ichseg-prof-mask.nii.gz --device cuda --batch 8 --report "$out/profile_host.json" --quiet \
    2>&1 | tee "$out/profile_host.txt" | cut -c1-400
  nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [[ -n $nsys ]]; then
    rep=/tmp/ichseg-prof-unet
    timeout 180 "$nsys" profile -t cuda,cudnn,cublas -o "$rep" --force-overwrite true \
      "$bin" segment --model /tmp/ichseg-gpu-work/unet64.onnx /tmp/ichseg-gpu-work/ct.nii.gz \
      -o /tmp/ichseg-prof-mask.nii.gz --device cuda --batch 8 --report "$out/profile_unet.json" --quiet 2>&1 | tail -3
    timeout 120 "$nsys" stats -r cuda_gpu_kern_sum,cuda_api_sum,cuda_gpu_mem_time_sum -f csv -o "$out/profile_unet" \
      "$rep.nsys-rep" >/dev/null 2>&1
    for f in "$out"/profile_unet_*.csv; do
      [[ -f $f ]] && { echo "== profile: $(basename "$f") (top 15)"; head -16 "$f" | cut -c1-220; }
    done
  fi
  # without nsys, or where nsys made no report (it cannot on some GPU sandboxes): Nsight Compute's
  # per-kernel durations of one batch of 8 slices (ncu replays each kernel, so a whole volume
  # would take minutes)
  if ! compgen -G "$out/profile_unet_*.csv" >/dev/null; then
    ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    if [[ -n $ncu ]]; then
      small=/tmp/ichseg-prof-8.nii.gz
      "$py" -c "import sys; sys.path.insert(0, 'scripts'); import bench_segment as bs; import pathlib; bs.write_nifti(pathlib.Path('$small'), bs.make_volume(512, 8))"
      timeout 200 "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv \
        "$bin" segment --model /tmp/ichseg-gpu-work/unet64.onnx "$small" -o /tmp/ichseg-prof-mask.nii.gz \
        --device cuda --batch 8 --report "$out/profile_unet_ncu.json" --quiet > "$out/profile_unet_ncu.csv" 2> "$out/profile_unet_ncu.err"
      echo "== profile: ncu exit $?; per-kernel summary (gpu__time_duration.sum), $(wc -l < "$out/profile_unet_ncu.csv") lines"
      "$py" scripts/ncu_summary.py "$out/profile_unet_ncu.csv" 2>&1 | tee "$out/profile_unet_ncu.md"
    else
      echo "== profile: skipped (neither nsys with a report nor ncu on this machine)"
    fi
  fi
fi
exit $status
