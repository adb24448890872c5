#!/usr/bin/env python3
"""GPU parity and speed of ichseg's CUDA path, against ichseg on the CPU and PyTorch CUDA eager.

Run by scripts/gpu-check.sh on the GPU machine (which sets the CUDA library path); needs numpy,
torch and nibabel, and an ichseg binary built with the `cuda` feature.

1. Parity, per U-Net: ``ichseg segment --device cpu`` and ``--device cuda`` on the same volume
   with ``--prob``; bleed probabilities must agree to max abs 1e-3 and masks on >= 99.9 % of
   voxels. Fixture U-Nets (ConvTranspose and Resize upsampling) on the fixture CT, and the
   benchmark U-Net on the benchmark volume.
2. Speed: the benchmark U-Net of scripts/bench_segment.py (base width 64, depth 4,
   ConvTranspose, 384x384 input, seeded weights) on a synthetic 512x512x32 head CT: ichseg
   ``--device cuda`` (report ``timings.total_s``, the segmentation of the volume in memory,
   median of --repeat runs after one warm-up run) against the same pipeline in PyTorch CUDA
   eager with the same weights (window, bilinear resize, network, softmax, resize back,
   threshold; the volume already on the GPU, synchronised timing), in strict FP32 and in TF32.

Prints a summary and writes ``--out-dir``/bench_gpu.json and bench_gpu.md (a markdown section for
docs/BENCHMARKS.md with the card's name, the FLOP count and the card's peak). Exit status 1 when
a parity check fails. ``--dry-run`` runs everything tiny, on whatever devices exist, to test the
script itself.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_segment as bs  # noqa: E402  (volume, weights and FLOP conventions shared)

BEGIN, END = "<!-- bench_gpu:begin -->", "<!-- bench_gpu:end -->"
PROB_TOL, MASK_AGREEMENT = 1e-3, 0.999
# Dense peaks of the cards this runs on (NVIDIA data sheets, SXM): FP32 (CUDA cores), TF32 tensor.
PEAKS_TFLOPS = {"H100": (67.0, 494.7), "H200": (67.0, 494.7)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ichseg", type=pathlib.Path, default=ROOT / "target" / "release" / "ichseg")
    p.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("gpu-check-out"))
    p.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/ichseg-gpu-work"),
                   help="scratch folder for models, volumes and outputs")
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--base", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--input", type=int, default=384)
    p.add_argument("--batch", type=int, default=8, help="slices per network run, both engines")
    p.add_argument("--parity-slices", type=int, default=8, help="slices of the benchmark-net parity volume")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="ichseg CPU threads (0 = all cores)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes; CPU-only machines too")
    a = p.parse_args()
    if a.dry_run:
        a.slices, a.size, a.base, a.depth, a.input, a.batch, a.repeat, a.parity_slices = 2, 128, 4, 2, 64, 2, 1, 2
    return a


STRICT = {"NVIDIA_TF32_OVERRIDE": "0"}  # cuBLAS/cuDNN in full FP32 (docs/CUDA.md, Precision)


def run(cmd: list[str], what: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env={**os.environ, **(env or {})})
    print(f"[gpu] {what}: exit {proc.returncode} in {time.perf_counter() - t0:.1f} s: {shlex.join(map(str, cmd))}")
    if proc.returncode != 0:
        print(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def segment(args, model, volume, device, out: pathlib.Path, extra=(), strict=False) -> dict | None:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [args.ichseg, "segment", "--model", model, volume, "-o", out / "mask.nii", "--prob", out / "prob.nii",
           "--report", out / "report.json", "--device", device, "--threads", args.threads, "--quiet", *extra]
    what = f"ichseg {device}{' strict FP32' if strict else ''} {pathlib.Path(model).name}"
    if run(cmd, what, STRICT if strict else None).returncode != 0:
        return None
    report = json.loads((out / "report.json").read_text())
    import nibabel as nib

    return {"timings": report["timings"], "device": report.get("device"), "note": report.get("device_note"),
            "prob": np.asarray(nib.load(str(out / "prob.nii")).dataobj, dtype=np.float32),
            "mask": np.asarray(nib.load(str(out / "mask.nii")).dataobj) != 0}


def parity(args, name, model, volume, work: pathlib.Path, extra=()) -> dict:
    """CPU vs CUDA in strict FP32 (judged) and in the default math mode (TF32; reported)."""
    cpu = segment(args, model, volume, "cpu", work / f"{name}_cpu", extra)
    strict = segment(args, model, volume, "cuda", work / f"{name}_cuda_strict", extra, strict=True)
    default = segment(args, model, volume, "cuda", work / f"{name}_cuda", extra)
    if cpu is None or strict is None or default is None:
        return {"name": name, "ok": False, "why": "a run failed"}
    res = {"name": name, "device": strict["device"], "mask_voxels_cpu": int(cpu["mask"].sum())}
    for key, gpu in (("strict", strict), ("default", default)):
        res[key] = {"prob_max_abs": float(np.max(np.abs(cpu["prob"] - gpu["prob"]))),
                    "mask_agreement": float(np.mean(cpu["mask"] == gpu["mask"])),
                    "mask_voxels": int(gpu["mask"].sum())}
    s = res["strict"]
    res["ok"] = s["prob_max_abs"] <= PROB_TOL and s["mask_agreement"] >= MASK_AGREEMENT and strict["device"] == "cuda:0"
    for key in ("strict", "default"):
        print(f"[gpu] parity {name} ({key}): prob max abs {res[key]['prob_max_abs']:.2e} (<= {PROB_TOL}), masks "
              f"agree {res[key]['mask_agreement'] * 100:.4f} % (>= {MASK_AGREEMENT * 100} %)")
    print(f"[gpu] parity {name}: {'OK' if res['ok'] else 'FAIL'} (judged on strict FP32)")
    return res


def conv_flops(model, input_size: int) -> float:
    """FLOPs (2 per multiply-add) of the Conv and ConvTranspose layers for one slice."""
    import torch

    total = [0.0]

    def hook(m, inp, out):
        k = m.weight.shape[2] * m.weight.shape[3]
        if isinstance(m, torch.nn.ConvTranspose2d):
            total[0] += 2.0 * inp[0].numel() * m.out_channels * k / m.groups
        else:
            total[0] += 2.0 * out.numel() * m.in_channels * k / m.groups

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        model(torch.zeros(1, 1, input_size, input_size))
    for h in hs:
        h.remove()
    return total[0]


def torch_pipeline(model, hu: np.ndarray, args, tf32: bool) -> tuple[float, np.ndarray]:
    """The segmentation pipeline in PyTorch eager on the GPU; median seconds per volume."""
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    net = model.to(dev).eval()
    vol = torch.from_numpy(hu).to(dev)
    level, width = bs.WINDOW
    lo = level - width / 2
    nz, ny, nx = hu.shape

    def once():
        mask = torch.empty((nz, ny, nx), dtype=torch.bool, device=dev)
        with torch.no_grad():
            for k in range(0, nz, args.batch):
                x = ((vol[k:k + args.batch] - lo) / width).clamp(0, 1)[:, None]
                x = F.interpolate(x, size=(args.input, args.input), mode="bilinear", align_corners=False)
                prob = torch.softmax(net(x), dim=1)[:, 1:2]
                prob = F.interpolate(prob, size=(ny, nx), mode="bilinear", align_corners=False)
                mask[k:k + args.batch] = prob[:, 0] >= 0.5
        return mask

    once()  # warm-up: cuDNN algorithm choice, allocator
    times = []
    for _ in range(args.repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        mask = once()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), mask.cpu().numpy()


def main() -> int:
    args = parse_args()
    import torch

    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = args.work
    has_cuda = torch.cuda.is_available()
    card = torch.cuda.get_device_name(0) if has_cuda else "no GPU"
    print(f"[gpu] card: {card}; torch {torch.__version__}; ichseg {args.ichseg}")
    results: dict = {"card": card, "torch": torch.__version__, "parity": [], "date": datetime.datetime.now(
        datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}

    fixtures = ROOT / "tests" / "fixtures" / "unet"
    for name in ("unet_transpose", "unet_resize"):
        results["parity"].append(parity(args, name, fixtures / f"{name}.onnx", fixtures / "ct_small.nii.gz", work))

    work.mkdir(parents=True, exist_ok=True)
    model_path, volume = work / "unet64.onnx", work / "ct.nii.gz"
    hu = bs.write_nifti(volume, bs.make_volume(args.size, args.slices))
    n_params, net = bs.export_model(args, model_path, hu)
    flops = conv_flops(net, args.input) * args.slices
    results["flops_per_volume"] = flops
    batch = ["--batch", str(args.batch)]
    small = work / "ct_parity.nii.gz"
    bs.write_nifti(small, bs.make_volume(args.size, args.parity_slices))
    results["parity"].append(parity(args, "unet64", model_path, small, work, batch))

    for key, strict in (("ichseg_fp32", True), ("ichseg_tf32", False)):
        runs = []
        for i in range(args.repeat + 1):  # the first run warms the cubin cache and cuDNN
            r = segment(args, model_path, volume, "cuda", work / f"speed_{key}_{i}", batch, strict)
            if r is None:
                break
            runs.append(r["timings"])
        if len(runs) == args.repeat + 1:
            results[key] = {k: statistics.median(t[k] for t in runs[1:]) for k in ("load_s", "total_s", "inference_s")}
            results[key]["warmup_load_s"] = runs[0]["load_s"]
    if has_cuda:
        for tf32 in (False, True):
            secs, mask = torch_pipeline(net, hu, args, tf32)
            results["torch_tf32" if tf32 else "torch_fp32"] = {"total_s": secs, "mask_voxels": int(mask.sum())}

    print(json.dumps({k: v for k, v in results.items()}, indent=1, default=str))
    (args.out_dir / "bench_gpu.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out_dir / "bench_gpu.md").write_text(markdown(args, results, n_params))
    ok = all(p["ok"] for p in results["parity"])
    print(f"[gpu] parity {'PASSED' if ok else 'FAILED'}")
    return 0 if ok or args.dry_run else 1


def markdown(args, r: dict, n_params: int) -> str:
    peak = next((v for k, v in PEAKS_TFLOPS.items() if k in r["card"]), None)
    gf = r["flops_per_volume"] / 1e9
    lines = [BEGIN, f"## U-Net segmentation on a GPU: ichseg (tract-cuda) vs PyTorch CUDA eager ({r['card']})", "",
             f"Volume {args.size}x{args.size}x{args.slices}; U-Net base {args.base}, depth {args.depth}, ConvTranspose, "
             f"{args.input}x{args.input} input, {n_params:,} parameters, seeded weights; batch {args.batch}; "
             f"{gf:,.0f} GFLOP per volume (Conv + ConvTranspose). Per volume = window, resize, network, "
             "probability, resize back, threshold on the volume in memory (ichseg: report `timings.total_s`, "
             f"3D lesions included; PyTorch: the same steps on the GPU, synchronised); median of {args.repeat} "
             "after a warm-up. FP32 = strict (ichseg with `NVIDIA_TF32_OVERRIDE=0`, PyTorch with TF32 off); "
             "TF32 = the libraries' tensor-core math (ichseg's default on this card).", "",
             "| math | engine | per volume (s) | per slice (ms) | TFLOP/s | % of card peak | ichseg / PyTorch |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for mode, pk in (("fp32", 0), ("tf32", 1)):
        t, ich = r.get(f"torch_{mode}"), r.get(f"ichseg_{mode}")
        for label, row in ((f"PyTorch {r['torch']} eager", t), ("ichseg, cuda", ich)):
            if not row:
                continue
            pct = f"{100 * gf / row['total_s'] / 1e3 / peak[pk]:.1f}" if peak else "-"
            ratio = f"{ich['total_s'] / t['total_s']:.2f}" if (t and ich and row is ich) else ""
            lines.append(f"| {mode.upper()} | {label} | {row['total_s']:.3f} | {1e3 * row['total_s'] / args.slices:.1f} | "
                         f"{gf / row['total_s'] / 1e3:.1f} | {pct} | {ratio} |")
    for mode in ("fp32", "tf32"):
        ich = r.get(f"ichseg_{mode}")
        if ich:
            lines += ["", f"ichseg {mode.upper()}: network runs {ich['inference_s']:.3f} s of it; model load + CUDA plan "
                      f"{ich['load_s']:.2f} s (warm-up process: {ich['warmup_load_s']:.2f} s)."]
    if peak:
        lines += ["", f"Card peaks used: FP32 {peak[0]} TFLOP/s (CUDA cores), TF32 {peak[1]} TFLOP/s (tensor cores), "
                  "dense, from the data sheet."]
    lines += ["", "Parity, ichseg CUDA vs ichseg CPU (bleed probability max abs; masks agreeing), judged on strict FP32 "
              f"(<= {PROB_TOL}, >= {MASK_AGREEMENT * 100} %):", ""]
    for p in r["parity"]:
        if "strict" in p:
            s, d = p["strict"], p["default"]
            lines.append(f"- {p['name']}: FP32 {s['prob_max_abs']:.2e}, {100 * s['mask_agreement']:.4f} %; "
                         f"TF32 {d['prob_max_abs']:.2e}, {100 * d['mask_agreement']:.4f} % "
                         f"({'pass' if p['ok'] else 'FAIL'})")
        else:
            lines.append(f"- {p['name']}: FAIL ({p.get('why')})")
    lines += ["", f"- Date: {r['date']}; command: `scripts/gpu-check.sh` (runs `python3 scripts/bench_gpu.py`)", END]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
