"""``python -m ichseg.distributed {pseudo-label,segment} --dataset DIR -o OUT ...``: see
:mod:`ichseg.distributed` and docs/SCALE-OUT.md. Exit status 0 when every volume is written or
skipped, 1 when one failed (named in the summary JSON), 2 for bad arguments, 130 on Ctrl-C."""

from __future__ import annotations

import argparse
import sys

import ichseg
from ichseg import distributed


def _pair(text: str, kind=float) -> tuple:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two comma-separated values, got {text!r}")
    return kind(parts[0]), kind(parts[1])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ichseg.distributed",
                                 description="Pseudo-label or segment a dataset on a Ray cluster, one task per volume.")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", required=True, help="DIR/ct_scans/*.nii[.gz] (BCIHM layout), or DIR/*.nii[.gz]")
        p.add_argument("-o", "--output", required=True, help="output folder (outputs that exist are skipped)")
        p.add_argument("--address", default="auto",
                       help="Ray cluster: auto (the running one, or RAY_ADDRESS), local (start one here), HOST:PORT")
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (a task then also asks for one GPU)")
        p.add_argument("--cpus-per-task", type=float, default=1, help="CPUs each task declares [1]")
        p.add_argument("--threads", type=int, default=0, help="engine threads per task [--cpus-per-task]")
        p.add_argument("--memory-mb", type=int, default=0,
                       help="memory each task declares; also the engine's memory limit [0: none]")
        p.add_argument("--max-in-flight", type=int, default=0, help="tasks submitted at once [2 per slot]")
        p.add_argument("--retries", type=int, default=2, help="retries of a task whose worker died [2]")
        p.add_argument("--summary", help=f"summary JSON [OUTPUT/{distributed.SUMMARY_NAME}]")
        p.add_argument("--quiet", action="store_true", help="no line per volume")
        p.add_argument("--threshold", type=float)
        p.add_argument("--batch", type=int)
        p.add_argument("--min-lesion-ml", type=float)
        p.add_argument("--intracranial-margin-mm", type=float, help="apply the intracranial mask (docs/INTRACRANIAL.md)")

    pl = sub.add_parser("pseudo-label", help="pseudo masks from slice classifiers (ichseg pseudo-label --dataset)")
    common(pl)
    pl.add_argument("--classifier", action="append", required=True, help="classifier ONNX model; repeat")
    pl.add_argument("--taps", action="append",
                    help="comma-separated tap tensors of the classifier in the same position; repeat")
    pl.add_argument("--use-predictions", action="store_true", help="the classifiers decide the slices")
    pl.add_argument("--cam", choices=["sf", "layer", "grad"])
    pl.add_argument("--scf", type=lambda t: _pair(t), help="C,W (SCF reach and weight)")
    pl.add_argument("--no-scf", action="store_true")
    pl.add_argument("--no-crf", action="store_true")
    pl.add_argument("--aggregate", choices=["or", "and"])
    pl.add_argument("--max-hu", type=float)

    sg = sub.add_parser("segment", help="U-Net masks (ichseg segment on each volume)")
    common(sg)
    sg.add_argument("-m", "--model", required=True, help="U-Net ONNX model")
    sg.add_argument("--prob", action="store_true", help="also write NAME_prob.nii.gz")
    sg.add_argument("--report", action="store_true", help="also write NAME.json (findings)")
    return ap


def _options(a: argparse.Namespace) -> dict:
    o = {k: getattr(a, k) for k in ("threshold", "batch", "min_lesion_ml", "intracranial_margin_mm")
         if getattr(a, k) is not None}
    if a.command == "pseudo-label":
        if a.taps:
            o["taps"] = [t.split(",") for t in a.taps]
        for k in ("cam", "aggregate", "max_hu"):
            if getattr(a, k) is not None:
                o[k] = getattr(a, k)
        if a.no_scf:
            o["scf"] = None
        elif a.scf is not None:
            o["scf"] = a.scf
        if a.no_crf:
            o["crf"] = False
    return o


def main(argv=None) -> int:
    a = _parser().parse_args(argv)

    def progress(done: int, total: int, r: dict) -> None:
        if a.quiet:
            return
        where = f" on node {r['node']} pid {r['pid']}" if "node" in r else ""
        took = f" in {r['seconds']:.2f} s" if "seconds" in r else ""
        error = f": {r['error']}" if r.get("error") else ""
        print(f"[{done:>{len(str(total))}}/{total}] {r['volume']}: {r['status']}{took}{where}{error}",
              file=sys.stderr, flush=True)

    common = dict(device=a.device, threads=a.threads, memory_mb=a.memory_mb, cpus_per_task=a.cpus_per_task,
                  address=a.address, max_in_flight=a.max_in_flight, retries=a.retries, summary=a.summary,
                  progress=progress, **_options(a))
    try:
        if a.command == "pseudo-label":
            s = distributed.pseudo_label_dataset(a.dataset, a.output, a.classifier,
                                                 use_predictions=a.use_predictions, **common)
        else:
            s = distributed.segment_dataset(a.dataset, a.output, a.model, prob=a.prob, report=a.report, **common)
    except KeyboardInterrupt:
        print("interrupted: the summary lists what finished; rerun to resume", file=sys.stderr)
        return 130
    except ichseg.Error as e:
        print(f"ichseg.distributed: {e}", file=sys.stderr)
        return 2
    if not a.quiet:
        print(f"volumes   {s['volumes']}: written {s['written']}, skipped {s['skipped']} (output exists), "
              f"failed {s['failed']}")
        print(f"cluster   {s['cluster']['nodes']} node(s), {s['cluster']['cpus']:g} CPUs; "
              f"{s['task']['max_in_flight']} tasks in flight at most")
        print(f"time      {s['wall_s']:.2f} s")
        print(f"summary   {s['summary']}")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
