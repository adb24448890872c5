#!/usr/bin/env python3
"""Times U-Net segmentation of a CT volume in onnxruntime and in the ichseg CLI, same run.

A base-width-64 U-Net (depth 4, ConvTranspose upsampling, 1 input channel, 2 logits, 384x384
input, seeded random weights; training/ichseg_training) is exported to a temporary folder
(never committed), and a synthetic 512x512x32 head CT (int16 NIfTI, scl_inter -1024) is
segmented by

(a) onnxruntime (intra_op_num_threads = --threads): window 50/130 -> bilinear resize of each
    axial slice to 384x384 (torch interpolate, align_corners=False) -> one batch-1 run per
    slice -> softmax bleed probability -> bilinear resize back -> threshold 0.5. Model load
    (session creation) is timed apart from the per-volume time; the volume is already in
    memory, so per-volume time is the pipeline alone;
(b) the ichseg CLI: ``target/release/ichseg segment --model M.onnx IN.nii.gz -o OUT.nii.gz
    --report R.json --threads N --quiet``, whose report JSON gives ``timings.load_s`` (model
    parse + plan), ``timings.total_s`` (the segmentation call on the volume in memory:
    preprocess + inference + postprocess, compared with (a)'s per-volume time) and
    ``timings.inference_s`` (network runs only, compared with (a)'s summed ``run`` calls).

onnxruntime and each ichseg level take turns (--repeat rounds of one run each), so that a machine
whose speed drifts slows them alike. The two masks are compared voxel by voxel. With --out
(default docs/BENCHMARKS.md) the section between ``<!-- bench_segment:begin -->`` and
``<!-- bench_segment:end -->`` is replaced (the file and the section are created when missing). --dry-run uses a tiny U-Net and 2 slices of
128x128 to test this script quickly; it writes markdown only when --out is given.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))

BEGIN, END = "<!-- bench_segment:begin -->", "<!-- bench_segment:end -->"
WINDOW = (50.0, 130.0)
SCL_INTER = -1024.0
SEED = 1234


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=32, help="axial slices (nz), default 32")
    p.add_argument("--size", type=int, default=512, help="native slice size nx = ny, default 512")
    p.add_argument("--base", type=int, default=64, help="U-Net base width, default 64")
    p.add_argument("--depth", type=int, default=4, help="U-Net poolings, default 4")
    p.add_argument("--input", type=int, default=384, help="model input size HxW, default 384")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines, default 2")
    p.add_argument("--repeat", type=int, default=1, help="per-volume runs per engine (median reported)")
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="markdown file to update (default docs/BENCHMARKS.md; none with --dry-run)")
    p.add_argument("--ichseg", type=pathlib.Path, default=ROOT / "target" / "release" / "ichseg",
                   help="ichseg binary (default target/release/ichseg)")
    p.add_argument("--skip-ichseg", action="store_true", help="time onnxruntime only")
    p.add_argument("--cpu-levels", default="default",
                   help="ichseg runs per CPU kernel level, comma-separated: default (the CPU's best) "
                        "and/or avx2, portable (ICHSEG_CPU_LEVEL), e.g. default,avx2 on an AVX-512 CPU")
    p.add_argument("--keep", type=pathlib.Path, default=None, help="keep model, volume and outputs here")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny U-Net (base 4, depth 2, 64x64 input), 2 slices of 128x128")
    args = p.parse_args()
    if args.dry_run:
        args.slices, args.size, args.base, args.depth, args.input = 2, 128, 4, 2, 64
    elif args.out is None:
        args.out = ROOT / "docs" / "BENCHMARKS.md"
    if args.input % (2**args.depth):
        p.error(f"--input {args.input} must be a multiple of 2**depth = {2**args.depth}")
    if min(args.slices, args.size, args.base, args.threads, args.repeat) < 1:
        p.error("--slices, --size, --base, --threads and --repeat must be >= 1")
    return args


# --------------------------------------------------------------------------------------------
# Inputs


def make_volume(n: int, nz: int, seed: int = SEED) -> np.ndarray:
    """Synthetic head CT in HU, [nz, n, n] float32 (integers): air, skull, brain, 3 bleeds."""
    rng = np.random.default_rng(seed)
    c = (n - 1) / 2
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    x, y = (x - c) / n, (y - c) / n
    vol = np.empty((nz, n, n), dtype=np.float32)
    for k in range(nz):
        t = k / max(nz - 1, 1)
        ax, ay = 0.40 - 0.12 * t, 0.46 - 0.12 * t
        r = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)
        sl = np.full((n, n), -1000.0, dtype=np.float32)
        sl[(r >= 0.9) & (r < 1.0)] = 800.0
        sl[r < 0.9] = 35.0
        for bx, by, br in [(-0.12, 0.05, 0.06), (0.10, -0.10, 0.035), (0.05, 0.18, 0.025)]:
            if abs(t - 0.5) < 0.35:
                sl[np.hypot(x - bx, y - by) < br] = 70.0
        sl += rng.normal(0.0, 6.0, (n, n)).astype(np.float32)
        vol[k] = np.round(sl)
    return vol


def write_nifti(path: pathlib.Path, hu_zyx: np.ndarray) -> np.ndarray:
    """int16 NIfTI, slope 1, inter -1024, pixdim 0.45 0.45 5; returns the HU read back."""
    import nibabel as nib

    stored = (hu_zyx.transpose(2, 1, 0) - SCL_INTER).astype(np.int16)
    affine = np.diag([0.45, 0.45, 5.0, 1.0])
    img = nib.Nifti1Image(stored, affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(1.0, SCL_INTER)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return read_hu(path)


def read_hu(path: pathlib.Path) -> np.ndarray:
    import nibabel as nib

    img = nib.load(str(path))
    raw = np.asarray(img.dataobj.get_unscaled()).astype(np.float32)
    slope = np.float32(img.dataobj.slope)
    inter = np.float32(img.dataobj.inter)
    return np.ascontiguousarray((raw * slope + inter).transpose(2, 1, 0))


def export_model(args, path: pathlib.Path, hu_zyx: np.ndarray):
    """Exports the seeded benchmark U-Net; returns its parameter count and the torch model."""
    import torch
    from ichseg_training import UNet, export_onnx, segmenter_metadata

    torch.manual_seed(SEED)
    model = UNet(in_channels=1, n_classes=2, base_width=args.base, depth=args.depth, upsampling="transpose")
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    calibrate_head(model.eval(), hu_zyx[len(hu_zyx) // 2], args.input)
    size = (args.input, args.input)
    export_onnx(model.eval(), path, size, 1, segmenter_metadata(size, 1, WINDOW, None, 1,
                                                                 trained_on="random weights (benchmark)"))
    return sum(p.numel() for p in model.parameters()), model


def calibrate_head(model, hu_slice: np.ndarray, input_size: int, positive: float = 0.1) -> None:
    """Shifts the bleed-logit bias so about ``positive`` of the middle slice is segmented, and
    scales the head so few probabilities sit near 0.5: the masks are then worth comparing."""
    import torch
    import torch.nn.functional as F

    level, width = WINDOW
    win = np.clip((hu_slice - np.float32(level - width / 2)) / np.float32(width), 0, 1).astype(np.float32)
    x = F.interpolate(torch.from_numpy(win)[None, None], size=(input_size, input_size),
                      mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = model(x)
        d = (logits[:, 1] - logits[:, 0]).flatten()
        scale = 8.0 / max(float(d.std()), 1e-6)
        shift = -float(torch.quantile(d * scale, 1.0 - positive))
        model.head.weight.mul_(scale)
        model.head.bias.mul_(scale)
        model.head.bias[1] += shift / 2
        model.head.bias[0] -= shift / 2


# --------------------------------------------------------------------------------------------
# (a) onnxruntime


def ort_session(path: pathlib.Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_segment(sess, hu_zyx: np.ndarray, input_size: int) -> np.ndarray:
    """The ichseg pipeline with onnxruntime, slice by slice, batch 1; returns the mask and the
    seconds spent in ``sess.run``."""
    import torch
    import torch.nn.functional as F

    level, width = WINDOW
    lo, w = np.float32(level - width / 2), np.float32(width)
    nz, ny, nx = hu_zyx.shape
    mask = np.empty((nz, ny, nx), dtype=np.uint8)
    run_s = 0.0
    for k in range(nz):
        win = np.clip((hu_zyx[k] - lo) / w, np.float32(0), np.float32(1))
        t = torch.from_numpy(win)[None, None]
        t = F.interpolate(t, size=(input_size, input_size), mode="bilinear", align_corners=False)
        x = t.numpy()
        t0 = time.perf_counter()
        logits = sess.run(["logits"], {"image": x})[0]
        run_s += time.perf_counter() - t0
        prob = torch.softmax(torch.from_numpy(logits), dim=1)[:, 1:2]
        prob = F.interpolate(prob, size=(ny, nx), mode="bilinear", align_corners=False)
        mask[k] = (prob[0, 0] >= 0.5).numpy()
    return mask, run_s


class OrtRuns:
    """onnxruntime's session (created, and timed, once) and its per-volume runs."""

    def __init__(self, args, model: pathlib.Path, hu: np.ndarray):
        import torch

        torch.set_num_threads(args.threads)
        self.args, self.hu = args, hu
        t0 = time.perf_counter()
        self.sess = ort_session(model, args.threads)
        self.load_s = time.perf_counter() - t0
        self.times, self.runs, self.mask = [], [], None

    def run(self) -> None:
        t0 = time.perf_counter()
        self.mask, run_s = ort_segment(self.sess, self.hu, self.args.input)
        self.times.append(time.perf_counter() - t0)
        self.runs.append(run_s)

    def result(self) -> dict:
        return {"load_s": self.load_s, "volume_s": statistics.median(self.times),
                "inference_s": statistics.median(self.runs), "runs_s": self.times, "mask": self.mask}


# --------------------------------------------------------------------------------------------
# (b) ichseg CLI


def ichseg_version(binary: pathlib.Path) -> str:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().split()[-1]
    except OSError:
        pass
    import re

    m = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    return (m.group(1) if m else "?") + " (Cargo.toml)"


def ichseg_usable(binary: pathlib.Path) -> bool:
    if binary.is_file() and os.access(binary, os.X_OK):
        return True
    print(f"[bench] ichseg binary not found at {binary}: build it with `cargo build --release` "
          "(from the repository root), then rerun; timing onnxruntime only.", file=sys.stderr)
    return False


def ichseg_run(args, model: pathlib.Path, volume: pathlib.Path, work: pathlib.Path, level: str) -> dict | None:
    """One `ichseg segment` of the volume at CPU `level`: its report's timings, the process's
    wall clock and the kernels it used; None (said on stderr) when it failed."""
    out, report = work / f"ichseg_mask_{level}.nii.gz", work / f"ichseg_report_{level}.json"
    cmd = [str(args.ichseg), "segment", "--model", str(model), str(volume), "-o", str(out),
           "--report", str(report), "--threads", str(args.threads), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "ICHSEG_CPU_LEVEL"}
    if level != "default":
        env["ICHSEG_CPU_LEVEL"] = level
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"[bench] ichseg failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
              f"{proc.stderr.strip()}", file=sys.stderr)
        return None
    try:
        rep = json.loads(report.read_text())
        timings = rep["timings"]
        run = {k: float(timings[k]) for k in ("load_s", "inference_s", "total_s")} | {"wall_s": wall}
        if "preprocess_s" in timings and "postprocess_s" in timings:
            run |= {k: float(timings[k]) for k in ("preprocess_s", "postprocess_s")}
        return run | {"kernels": rep.get("cpu_kernels", "?"), "mask_file": out}
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"[bench] cannot read timings (load_s, inference_s, total_s) from {report}: {e!r}", file=sys.stderr)
        return None


def ichseg_result(args, runs: list) -> dict:
    """The medians of one level's runs, its kernels, the last run's mask and the version."""
    res = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k not in ("kernels", "mask_file")}
    res["runs"] = runs
    res["kernels"] = runs[-1]["kernels"]
    res["mask"] = read_mask(runs[-1]["mask_file"])
    res["version"] = ichseg_version(args.ichseg)
    return res


def read_mask(path: pathlib.Path) -> np.ndarray:
    import nibabel as nib

    return np.ascontiguousarray(np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0) != 0)


# --------------------------------------------------------------------------------------------
# Report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    logical = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = logical
    cores = f"{logical} logical cores" + (f" ({usable} usable)" if usable != logical else "")
    family = model = ""
    flags: set[str] = set()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (x.strip() for x in line.partition(":"))
            if key == "cpu family" and not family:
                family = value
            elif key == "model" and not model:
                model = value
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    ident = f", family {family} model {model}" if family else ""
    return f"{cpu}{ident} ({isa}), {cores}, {platform.system()} {platform.release()}"


def markdown(args, ort_res: dict, ichs: list, command: str, n_params: int) -> str:
    import onnxruntime

    nz = args.slices
    lines = [
        BEGIN,
        f"## U-Net segmentation: ichseg vs onnxruntime (CPU; current: {machine().rsplit(', ', 2)[0]})",
        "",
        f"Volume {args.size}x{args.size}x{nz} HU (synthetic head CT); U-Net base width {args.base}, "
        f"depth {args.depth}, ConvTranspose, 1 channel, 2 logits, {args.input}x{args.input} input "
        f"({n_params:,} parameters, seeded random weights); {args.threads} thread(s); "
        f"median of {args.repeat} run(s), the engines taking turns run by run. Per volume = window, "
        "resize to the model input, "
        f"{nz} batch-1 runs, bleed probability, resize back, threshold, on the volume in memory "
        "(ichseg: report `timings.total_s`, which also labels 3D lesions); network only = "
        f"the {nz} runs (ichseg: `timings.inference_s`). Model load: session creation / "
        "report `timings.load_s`.",
        "",
        "| engine | model load (s) | per volume (s) | per slice (s) | ichseg / onnxruntime "
        "| network only (s) | ichseg / onnxruntime, network |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| onnxruntime {onnxruntime.__version__} | {ort_res['load_s']:.3f} | {ort_res['volume_s']:.3f} | "
        f"{ort_res['volume_s'] / nz:.4f} | 1.00 | {ort_res['inference_s']:.3f} | 1.00 |",
    ]
    for level, ich, _ in ichs:
        if ich is None:
            why = "skipped (--skip-ichseg)" if args.skip_ichseg else "not run (binary missing or failed)"
            lines.append(f"| ichseg ({level}) | - | - | - | {why} | - | - |")
            continue
        lines.append(
            f"| ichseg {ich['version']}, kernels {ich['kernels']} | {ich['load_s']:.3f} | {ich['total_s']:.3f} | "
            f"{ich['total_s'] / nz:.4f} | {ich['total_s'] / ort_res['volume_s']:.2f} | "
            f"{ich['inference_s']:.3f} | {ich['inference_s'] / ort_res['inference_s']:.2f} |")
    lines.append("")
    for level, ich, agreement in ichs:
        if ich is not None:
            lines.append(f"ichseg (kernels {ich['kernels']}) process wall clock {ich['wall_s']:.3f} s (NIfTI "
                         "read/write, model load, lesions and report included). "
                         f"Mask agreement with onnxruntime: {agreement * 100:.4f} % of voxels "
                         f"({int(ich['mask'].sum())} vs {int(ort_res['mask'].sum())} mask voxels).")
            lines.append("")
    ich = next((i for _, i, _ in ichs if i is not None), None)
    lines += [
        f"- Machine: {machine()}",
        f"- Versions: onnxruntime {onnxruntime.__version__}, ichseg "
        f"{ich['version'] if ich else ichseg_version(args.ichseg)}, Python {platform.python_version()}, "
        f"numpy {np.__version__}",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Command: `{command}`",
        END,
    ]
    return "\n".join(lines) + "\n"


def update_markdown(path: pathlib.Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replaces the part of `path` between the markers `begin` and `end` by `section` (which
    holds them), or appends it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    b, e = text.find(begin), text.find(end)
    if b >= 0 and e > b:
        tail = text[e + len(end):]
        text = text[:b] + section.rstrip("\n") + ("\n\n" + tail.lstrip("\n") if tail.strip() else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> int:
    args = parse_args()
    command = shlex.join(["python", "scripts/bench_segment.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory(prefix="bench_segment_") as tmp:
        work = args.keep or pathlib.Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, volume = work / "unet.onnx", work / "ct.nii.gz"
        print(f"[bench] exporting U-Net base {args.base}, depth {args.depth}, input {args.input} -> {model}")
        hu = write_nifti(volume, make_volume(args.size, args.slices))
        n_params, _ = export_model(args, model, hu)
        print(f"[bench] {n_params:,} parameters, {model.stat().st_size / 1e6:.1f} MB; "
              f"volume {args.size}x{args.size}x{args.slices} -> {volume}")

        # onnxruntime and each ichseg level take turns, run by run, so that a machine whose
        # speed drifts slows them alike (only ratios within one round compare)
        levels = args.cpu_levels.split(",")
        usable = not args.skip_ichseg and ichseg_usable(args.ichseg)
        ort = OrtRuns(args, model, hu)
        ich_runs = {level: [] if usable else None for level in levels}
        for r in range(args.repeat):
            running = ", ".join(lv for lv in levels if ich_runs[lv] is not None) or "no level"
            print(f"[bench] round {r + 1} of {args.repeat}: onnxruntime, then ichseg at {running}; "
                  f"{args.threads} thread(s)")
            ort.run()
            for level in levels:
                if ich_runs[level] is not None:
                    run = ichseg_run(args, model, volume, work, level)
                    ich_runs[level] = None if run is None else ich_runs[level] + [run]
        ort_res = ort.result()
        print(f"[bench] onnxruntime: load {ort_res['load_s']:.3f} s, per volume {ort_res['volume_s']:.3f} s "
              f"({ort_res['volume_s'] / args.slices:.4f} s/slice), network {ort_res['inference_s']:.3f} s, mask {int(ort_res['mask'].sum())} voxels")
        ichs = []
        for level in levels:
            ich = ichseg_result(args, ich_runs[level]) if ich_runs[level] else None
            if ich is not None:
                print(f"[bench] ichseg {args.ichseg} (CPU level {level}):")
            ichs.append((level, ich, report_ichseg(args, ort_res, ich)))

        section = markdown(args, ort_res, ichs, command, n_params)
        if args.out is not None:
            update_markdown(args.out, section)
            print(f"[bench] updated {args.out}")
        else:
            print(section)
    return 0


def report_ichseg(args, ort_res: dict, ich) -> float | None:
    """Prints one ichseg run's numbers against onnxruntime's; the mask agreement."""
    agreement = None
    if ich is not None:
        if ich["mask"].shape != ort_res["mask"].shape:
            print(f"[bench] mask shapes differ: ichseg {ich['mask'].shape} vs onnxruntime "
                  f"{ort_res['mask'].shape}", file=sys.stderr)
            agreement = 0.0
        else:
            agreement = float(np.mean(ich["mask"] == ort_res["mask"].astype(bool)))
        print(f"[bench]   load {ich['load_s']:.3f} s, per volume {ich['total_s']:.3f} s "
              f"({ich['total_s'] / args.slices:.4f} s/slice), network {ich['inference_s']:.3f} s, "
              f"process wall {ich['wall_s']:.3f} s; ratio ichseg/onnxruntime "
              f"{ich['total_s'] / ort_res['volume_s']:.2f} (network {ich['inference_s'] / ort_res['inference_s']:.2f}); "
              f"mask agreement {agreement * 100:.4f} %")
    return agreement


if __name__ == "__main__":
    sys.exit(main())
