#!/usr/bin/env python3
"""Peak resident memory of a segmentation: `ichseg segment` (default and --low-memory) against
onnxruntime running the same network in a process that imports only numpy and onnxruntime.

Inputs: the benchmark U-Net and volume that `python scripts/bench_segment.py --keep DIR` leaves
in DIR (`unet.onnx`, `ct.nii.gz`: base width 64, 124 MB of float32 weights; 512x512x32 CT).

- ichseg: `ichseg segment --model DIR/unet.onnx DIR/ct.nii.gz -o MASK --threads T --quiet
  --report R [--low-memory]`, peak RSS from `/usr/bin/time -f %M`, network time from the
  report's `timings.inference_s`.
- onnxruntime: a child `python -c` that imports numpy and onnxruntime only, creates a session
  (intra_op_num_threads T, the default CPU memory arena) and runs one batch-1 384x384 input per
  slice of the volume (the network alone: onnxruntime does not read NIfTI or resize); peak RSS
  the same way. The same process that only imports numpy and onnxruntime is measured too, so
  the interpreter's share is known.

Pseudo-labelling (no onnxruntime peer: it has no gradients): `ichseg pseudo-label` with the
shipped classifiers on the shipped sample and its slice labels (models/), default and
--low-memory, network time from the report's `timings.inference_s`.

With --baseline OLD (another build of the CLI, e.g. from an earlier commit) its default setting
runs in the same alternation, labelled --baseline-label, so that a change's cost in speed and
memory is measured in one run.

Runs alternate, --repeat of each; the table gives the median. With --out (default
docs/BENCHMARKS.md, none with --dry-run) the part between `<!-- bench_memory:begin -->` and
`<!-- bench_memory:end -->` is replaced.

    python scripts/bench_memory.py --dir DIR [--threads 2] [--repeat 2] [--ichseg target/release/ichseg]
        [--baseline OLD/ichseg --baseline-label COMMIT]
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
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_segment import machine, update_markdown  # noqa: E402

BEGIN, END = "<!-- bench_memory:begin -->", "<!-- bench_memory:end -->"
MODELS = ROOT / "models"

# The onnxruntime child: the network on `slices` batch-1 inputs; prints its network seconds.
ORT_CHILD = """
import sys, time, numpy as np, onnxruntime as ort
model, threads, slices = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
o = ort.SessionOptions(); o.intra_op_num_threads = threads
s = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = np.random.default_rng(0).random((1, 1, 384, 384), dtype=np.float32)
t = time.perf_counter()
for _ in range(slices):
    s.run(None, {i.name: x})
print(time.perf_counter() - t)
"""
IMPORT_ONLY = "import numpy, onnxruntime"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=pathlib.Path, required=True, help="unet.onnx and ct.nii.gz from bench_segment.py --keep")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="runs of each, alternating (median reported)")
    p.add_argument("--ichseg", type=pathlib.Path, default=ROOT / "target" / "release" / "ichseg")
    p.add_argument("--baseline", type=pathlib.Path, default=None, help="another ichseg build, run with its defaults")
    p.add_argument("--baseline-label", default="baseline", help="what --baseline is (a commit)")
    p.add_argument("--out", type=pathlib.Path, default=None, help="markdown to update (default docs/BENCHMARKS.md)")
    p.add_argument("--dry-run", action="store_true", help="print the table only")
    args = p.parse_args()
    if not args.dry_run and args.out is None:
        args.out = ROOT / "docs" / "BENCHMARKS.md"
    for name in ("unet.onnx", "ct.nii.gz"):
        if not (args.dir / name).is_file():
            p.error(f"{args.dir / name} is missing: run python scripts/bench_segment.py --keep {args.dir} first")
    if args.baseline and not args.baseline.is_file():
        p.error(f"--baseline {args.baseline} is not a file")
    if min(args.threads, args.repeat) < 1:
        p.error("--threads and --repeat must be >= 1")
    return args


def peak_kib(cmd: list[str], work: pathlib.Path) -> tuple[int, str]:
    """Runs `cmd` under /usr/bin/time; its peak RSS in KiB and its standard output."""
    stats = work / "time.txt"
    out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(stats), *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return int(stats.read_text().split()[-1]), out.stdout


def slices_of(volume: pathlib.Path) -> int:
    import nibabel

    return int(nibabel.load(str(volume)).shape[2])


def main() -> int:
    args = parse_args()
    model, volume = args.dir / "unet.onnx", args.dir / "ct.nii.gz"
    slices = slices_of(volume)
    runs: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)

        def timings(report: pathlib.Path) -> tuple[float, float]:
            t = json.loads(report.read_text())["timings"]
            return t["inference_s"], t["total_s"]

        def ichseg(extra: list[str], binary: pathlib.Path = args.ichseg) -> tuple[float, float, float]:
            report = work / "report.json"
            cmd = [str(binary), "segment", "--model", str(model), str(volume), "-o", str(work / "mask.nii.gz"),
                   "--threads", str(args.threads), "--quiet", "--report", str(report), *extra]
            kib, _ = peak_kib(cmd, work)
            return kib, *timings(report)

        def pseudo(extra: list[str], binary: pathlib.Path = args.ichseg) -> tuple[float, float, float]:
            report = work / "report.json"
            classifiers = [a for m in ("classifier_slim34", "classifier_slim50") for a in ("--classifier", str(MODELS / f"{m}.onnx"))]
            cmd = [str(binary), "pseudo-label", *classifiers, str(MODELS / "samples" / "sample.nii.gz"),
                   "-o", str(work / "pseudo.nii.gz"), "--labels", str(MODELS / "samples" / "sample_slices.csv"),
                   "--threads", str(args.threads), "--quiet", "--report", str(report), *extra]
            kib, _ = peak_kib(cmd, work)
            return kib, *timings(report)

        def ort() -> tuple[float, float, float]:
            kib, out = peak_kib([sys.executable, "-c", ORT_CHILD, str(model), str(args.threads), str(slices)], work)
            return kib, float(out.split()[-1]), float("nan")

        def imports() -> tuple[float, float, float]:
            return peak_kib([sys.executable, "-c", IMPORT_ONLY], work)[0], float("nan"), float("nan")

        settings = {
            "ichseg (default)": lambda: ichseg([]),
            "ichseg --low-memory": lambda: ichseg(["--low-memory"]),
            **({f"ichseg (default), build {args.baseline_label}": lambda: ichseg([], args.baseline)} if args.baseline else {}),
            "onnxruntime (network only)": ort,
            "the same Python process, imports only": imports,
            "ichseg pseudo-label, shipped classifiers and sample (default)": lambda: pseudo([]),
            "ichseg pseudo-label, the same, --low-memory": lambda: pseudo(["--low-memory"]),
            **({f"ichseg pseudo-label (default), build {args.baseline_label}": lambda: pseudo([], args.baseline)}
               if args.baseline else {}),
        }
        for r in range(args.repeat):
            for name, run in settings.items():
                kib, seconds, total = run()
                runs.setdefault(name, []).append((kib, seconds, total))
                print(f"[memory] run {r + 1}: {name}: {kib / 1024:.0f} MiB, network {seconds:.2f} s, total {total:.2f} s",
                      file=sys.stderr)
    section = markdown(args, runs, slices)
    print(section)
    if args.out:
        update_markdown(args.out, section, BEGIN, END)
        print(f"[memory] updated {args.out}", file=sys.stderr)
    return 0


def markdown(args, runs: dict, slices: int) -> str:
    import onnxruntime

    version = subprocess.run([str(args.ichseg), "--version"], capture_output=True, text=True).stdout.strip()
    rows = []
    for name, values in runs.items():
        kib = statistics.median(v[0] for v in values)
        network, total = (median_or_blank([v[i] for v in values]) for i in (1, 2))
        each = ", ".join(f"{v[0] / 1024 ** 2:.2f}" for v in values)
        rows.append(f"| {name} | {kib / 1024 ** 2:.2f} GiB ({each}) | {network} | {total} |")
    command = f"python scripts/bench_memory.py --dir DIR --threads {args.threads} --repeat {args.repeat}"
    if args.baseline:
        command += f" --baseline OLD/ichseg --baseline-label {shlex.quote(args.baseline_label)}"
    return "\n".join([
        BEGIN,
        f"Peak resident memory, the benchmark U-Net on the 512x512x{slices} benchmark volume, {args.threads} threads, "
        f"runs alternating, median of {args.repeat} (each run in brackets); network time per volume "
        f"(ichseg: the report's `inference_s`; onnxruntime: its {slices} batch-1 runs) and, for ichseg, the "
        "whole call on the volume in memory (the report's `total_s`). Pseudo-labelling: "
        "the shipped classifiers on the shipped 256x256x33 sample.",
        "",
        "| setting | peak RSS | network (s) | total (s) |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"- Machine: {machine()}",
        f"- Versions: {version or 'ichseg'}, onnxruntime {onnxruntime.__version__}, Python {sys.version.split()[0]}",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command}` (DIR from `python scripts/bench_segment.py --keep DIR`)",
        END,
        "",
    ])


def median_or_blank(seconds: list[float]) -> str:
    """The median to 0.1 s of the figures that were measured (NaN: not measured), or blank."""
    measured = [s for s in seconds if s == s]
    return f"{statistics.median(measured):.1f}" if measured else ""


if __name__ == "__main__":
    sys.exit(main())
