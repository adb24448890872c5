"""Scores exported models on held-out volumes.

    python -m ichseg_training.evaluate classifier --model c.onnx --data DIR --split split.json \\
        [--subset test] [--json out.json]
    python -m ichseg_training.evaluate unet --model unet.onnx --data DIR --split split.json \\
        [--subset test] [--ichseg /path/to/ichseg] --pred-dir DIR [--json out.json]

``classifier`` runs the ONNX model in onnxruntime on every slice of the subset, preprocessed as
its ``ichseg.*`` metadata says (window, input size, 3 channels), and reports slice accuracy
(bleed probability >= 0.5), ROC AUC, sensitivity and specificity against the slice labels.

``unet`` runs ``ichseg segment --model MODEL CT -o PRED`` (the Rust library, native grid) on
each volume of the subset, then ``ichseg eval --json`` against the ground-truth masks: IoU,
mIoU, Dice, CL/ML/FPL as METHOD.md section 6 defines them (dataset-level sums).
``--min-lesion-ml ML`` passes that filter to ``ichseg segment``; without it the model's tuned
``ichseg.segment.min_lesion_ml`` applies, if it has one.

    python -m ichseg_training.evaluate filter --model unet.onnx --data DIR --split split.json \
        (--pred-dir DIR | --val-scores V.json --test-scores T.json) [--filters 0,0.05,0.1,0.2,0.5,1] \
        [--write] [--json out.json]

``filter`` chooses a U-Net's small-lesion filter: it segments the val and test subsets once,
unfiltered (or reuses the predictions of ``unet --min-lesion-ml 0 --json`` runs given as
``--val-scores`` / ``--test-scores``), scores each filter on both (``ichseg eval
--min-lesion-ml``), keeps the one with the best **val** mIoU (a tie keeps the smaller) and, with
``--write``, writes it into the model as ``ichseg.segment.min_lesion_ml`` (its run record keeps
the table as ``segment_filter``).

    python -m ichseg_training.evaluate masks --masks DIR --data DIR --split split.json \\
        [--subset train] [--json out.json]

``masks`` scores masks made already, e.g. ``ichseg pseudo-label --dataset`` output named like the
CT files, on one subset with ``ichseg eval`` (what ``ship`` records as ``pseudo_train``: the
masks a weak U-Net learns from).

    python -m ichseg_training.evaluate misses --scores S.json [--near-px 3] [--json out.json]

``misses`` reads the (prediction, ground truth) pairs of an ``unet --json`` run and says which
ground-truth sites (per-slice components, 8-connectivity, as CL counts them) the predictions
missed: CL by the site's area in pixels and (ground truth in a BCIHM layout) by the subtypes its
slice is labelled with, and how many missed sites lie within ``--near-px``
pixels of another site of the same slice that was found (a fragment of a found bleed).
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

from . import common as C
from . import datasets as D


def onnx_metadata(path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def classifier_probs(model_path, ds, patients, threads=None):
    """(bleed probabilities [N], SliceSet) for every slice of ``patients``."""
    import onnxruntime as ort

    meta = onnx_metadata(model_path)
    size = C.parse_size(meta.get("ichseg.input_size", "384x384"))
    level, width = (float(v) for v in meta.get("ichseg.window", "50,130").split(","))
    bleed = int(meta.get("ichseg.bleed_index", "1"))
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    sl = C.load_slices(ds, patients, size, with_masks=False, window=(level, width))
    probs = []
    for i in range(0, len(sl), 64):
        x = np.repeat(sl.images[i:i + 64][:, None], 3, axis=1)
        logits = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs.append(e[:, bleed] / e.sum(1))
    return np.concatenate(probs), sl


def eval_classifier(model, data, split, subset="test", layout="bcihm", threads=None) -> dict:
    ds = D.open_dataset(layout, data)
    patients = C.read_patients(split, ds, subset)
    t0 = time.time()
    prob, sl = classifier_probs(model, ds, patients, threads)
    sc = C.classification_scores(prob, sl.labels)
    sc.update(subset=subset, patients=patients, model=str(model), seconds=time.time() - t0)
    return sc


def find_ichseg(explicit=None) -> str:
    repo_build = pathlib.Path(__file__).resolve().parents[2] / "target" / "release" / "ichseg"
    for cand in (explicit, shutil.which("ichseg"), "target/release/ichseg", repo_build):
        if cand and pathlib.Path(cand).is_file():
            return str(cand)
    raise SystemExit("ichseg binary not found: pass --ichseg PATH (cargo build --release)")


def eval_unet(model, data, split, pred_dir, subset="test", layout="bcihm", ichseg=None, threads=0,
              min_lesion_ml=None, threshold=None) -> dict:
    """Segments each volume of ``subset`` with the Rust CLI and scores it with ``ichseg eval``;
    ``min_lesion_ml`` drops smaller lesions first (``ichseg segment --min-lesion-ml``; ``None``:
    the model's tuned filter, if any); ``threshold`` is the bleed probability that marks a voxel
    (``ichseg segment --threshold``; ``None``: its default)."""
    exe = find_ichseg(ichseg)
    ds = D.open_dataset(layout, data)
    patients = C.read_patients(split, ds, subset)
    pred_dir = pathlib.Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    pairs, seg_seconds = [], {}
    for p in patients:
        stem = C.ct_stem(ds, p)
        if isinstance(ds, D.BHSD):
            ct, gt = ds._files[p]
        else:
            ct = D._find(ds.root / "ct_scans", p)
            gt = D._find(ds.root / "masks", p)
        pred = pred_dir / f"{stem}.nii.gz"
        t0 = time.time()
        extra = ["--min-lesion-ml", str(min_lesion_ml)] if min_lesion_ml is not None else []
        extra += ["--threshold", str(threshold)] if threshold is not None else []
        subprocess.run([exe, "segment", "--model", str(model), str(ct), "-o", str(pred), "--quiet",
                        "--threads", str(threads), *extra], check=True)
        seg_seconds[stem] = time.time() - t0
        pairs.append((pred, gt))
    scores = score_pairs(exe, pairs)
    scores.update(subset=subset, patients=patients, model=str(model), segment_seconds=seg_seconds,
                  min_lesion_ml=min_lesion_ml, threshold=threshold, pairs=[[str(p), str(g)] for p, g in pairs])
    return scores


FILTERS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)  # mL; 0 first, so a tie keeps every lesion


def choose_filter(model, data, split, pred_dir=None, filters=FILTERS, layout="bcihm", ichseg=None, threads=0,
                  unfiltered=None) -> dict:
    """The U-Net's small-lesion filter, chosen on val: segments val and test once, unfiltered,
    into ``pred_dir/SUBSET`` (or reuses ``unfiltered``, the :func:`eval_unet` scores of such runs
    by subset), scores every filter on both, and keeps the best val mIoU."""
    exe = find_ichseg(ichseg)
    if unfiltered is None:
        if pred_dir is None:
            raise SystemExit("choose_filter: a --pred-dir for the unfiltered predictions, or their scores")
        unfiltered = {s: eval_unet(model, data, split, pathlib.Path(pred_dir) / s, s, layout, exe, threads, 0.0)
                      for s in ("val", "test")}
    for s, doc in unfiltered.items():
        check_unfiltered(doc, model, s)
    def overall(doc, ml):
        return score_pairs(exe, doc["pairs"], ml, table=False)["overall"] if ml else doc["overall"]
    rows = [{"min_lesion_ml": ml, **{s: overall(doc, ml) for s, doc in unfiltered.items()}} for ml in filters]
    return {"model": str(model), "rows": rows, "chosen": best_filter(rows)}


def check_unfiltered(doc, model, subset) -> None:
    """Refuses scores that are not ``model``'s unfiltered predictions of ``subset``."""
    if doc.get("subset") != subset:
        raise SystemExit(f"the {subset} scores given are of the {doc.get('subset')!r} subset")
    if doc.get("min_lesion_ml") != 0:
        raise SystemExit(f"the {subset} scores given were made with --min-lesion-ml {doc.get('min_lesion_ml')}, not 0")
    if pathlib.Path(doc.get("model", "")).resolve() != pathlib.Path(model).resolve():
        raise SystemExit(f"the {subset} scores given are of {doc.get('model')}, not {model}")
    missing = [p for p, _ in doc["pairs"] if not pathlib.Path(p).is_file()]
    if missing:
        raise SystemExit(f"the {subset} scores' prediction {missing[0]} is gone")


def best_filter(rows) -> float:
    """The ``min_lesion_ml`` of the row with the best val mIoU; ties and undefined scores go to the
    smaller filter."""
    return max(rows, key=lambda r: (C.miou_or_worst(r["val"]["miou"]), -r["min_lesion_ml"]))["min_lesion_ml"]


MISS_AREAS = (0, 5, 20, 50, 100, 300)  # px; the lower edges of the area bins


@functools.lru_cache(maxsize=None)
def _read_labels(root):
    return D.read_labels(root)


def slice_subtypes(gt_path):
    """{slice index: "Subtype+Subtype"} of a ground truth that sits in a BCIHM layout
    (``ROOT/masks/NNN.nii[.gz]`` beside ``ROOT/hemorrhage_diagnosis_raw_ct.csv``), else None."""
    gt = pathlib.Path(gt_path)
    root = gt.parent.parent
    if gt.parent.name != "masks" or not (root / "hemorrhage_diagnosis_raw_ct.csv").is_file():
        return None
    labels = _read_labels(root).get(int(gt.name.split(".")[0]), [])  # one CSV read per dataset
    return {lab.slice_number - 1: "+".join(n for n, on in zip(D.SUBTYPES, lab.subtypes) if on) or "none"
            for lab in labels}


def miss_analysis(pairs, near_px=3, areas=MISS_AREAS) -> dict:
    """The ground-truth sites of (prediction, ground truth) NIfTI pairs as CL counts them (per
    slice, 8-connected; found if a predicted pixel overlaps), binned by area in pixels and (for
    ground truths in a BCIHM layout) by their slice's labelled subtypes, and the missed sites
    within ``near_px`` pixels of a found site of the same slice."""
    import nibabel as nib
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    found_area, missed_area, missed_near, by_subtypes = [], [], 0, {}
    for pred, gt in pairs:
        p = np.asarray(nib.load(str(pred)).dataobj) > 0
        g = np.asarray(nib.load(str(gt)).dataobj) > 0
        if p.shape != g.shape:
            raise SystemExit(f"{pred} and {gt} differ in shape: {p.shape} and {g.shape}")
        kinds = slice_subtypes(gt)
        for z in np.flatnonzero(g.any(axis=(0, 1))):
            sites, n = ndimage.label(g[:, :, z], eight)
            area = np.bincount(sites.ravel(), minlength=n + 1)
            found = np.zeros(n + 1, bool)
            found[np.unique(sites[p[:, :, z]])] = True
            found[0] = False
            near_found = ndimage.binary_dilation(np.isin(sites, np.flatnonzero(found)), eight, iterations=near_px)
            if kinds is not None:
                row = by_subtypes.setdefault(kinds.get(int(z), "unlabelled"), {"n_gt_sites": 0, "n_found": 0})
                row["n_gt_sites"] += n
                row["n_found"] += int(found.sum())
            for i in range(1, n + 1):
                if found[i]:
                    found_area.append(area[i])
                else:
                    missed_area.append(area[i])
                    missed_near += bool((near_found & (sites == i)).any())
    found_area, missed_area = np.array(found_area, int), np.array(missed_area, int)
    edges = (*areas, np.inf)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        nf = int(((found_area >= lo) & (found_area < hi)).sum())
        nm = int(((missed_area >= lo) & (missed_area < hi)).sum())
        rows.append({"min_px": lo, "max_px": None if hi == np.inf else hi, "n_gt_sites": nf + nm,
                     "n_found": nf, "cl": nf / (nf + nm) if nf + nm else None})
    n_gt = len(found_area) + len(missed_area)
    return {"by_area": rows, "by_slice_subtypes": dict(sorted(by_subtypes.items(), key=lambda kv: -kv[1]["n_gt_sites"])),
            "n_gt_sites": n_gt, "n_found": len(found_area), "cl": len(found_area) / n_gt if n_gt else None,
            "near_px": near_px, "n_missed_near_found": missed_near}


def eval_masks(mask_dir, data, split, subset="train", layout="bcihm", ichseg=None) -> dict:
    """Scores masks already made (e.g. ``ichseg pseudo-label --dataset`` output, named like the
    CT files) of ``subset`` against the ground truth with ``ichseg eval``."""
    exe = find_ichseg(ichseg)
    ds = D.open_dataset(layout, data)
    if isinstance(ds, D.BHSD):
        raise SystemExit("eval_masks reads the BCIHM / phantom layout")
    patients = C.read_patients(split, ds, subset)
    pairs = [(C.find_mask(mask_dir, C.ct_stem(ds, p)), D._find(ds.root / "masks", p)) for p in patients]
    scores = score_pairs(exe, pairs)
    scores.update(subset=subset, patients=patients, masks=str(mask_dir))
    return scores


def score_pairs(exe, pairs, min_lesion_ml=None, table=True) -> dict:
    """``ichseg eval`` over (prediction, ground truth) pairs: dataset-level scores, per volume,
    and (with ``table``, a second run) the text table; with ``min_lesion_ml``, of the predictions
    without their smaller lesions."""
    cmd = [exe, "eval", *(["--min-lesion-ml", str(min_lesion_ml)] if min_lesion_ml is not None else [])]
    for pred, gt in pairs:
        cmd += ["--pred", str(pred), "--gt", str(gt)]
    res = subprocess.run(cmd + ["--json"], check=True, capture_output=True, text=True)
    table = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout if table else None
    doc = json.loads(res.stdout)
    return {"ichseg": exe, "overall": doc["overall"], "per_volume": doc["per_volume"], "table": table}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("misses")
    sp.add_argument("--scores", required=True, help="the JSON of an `evaluate unet --json` run (its pairs)")
    sp.add_argument("--near-px", type=int, default=3,
                    help="a missed site this close (pixels) to a found one of its slice counts as its fragment")
    sp.add_argument("--json", default=None, help="also write the analysis here")
    sp = sub.add_parser("masks", help="score masks already made (e.g. pseudo masks) on one subset")
    sp.add_argument("--masks", required=True, help="folder of NNN.nii.gz masks named like the CT files")
    sp.add_argument("--data", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--subset", default="train")
    sp.add_argument("--ichseg", default=None, help="the ichseg binary (default: PATH, then target/release/ichseg)")
    sp.add_argument("--json", default=None, help="also write the scores here")
    for name in ("classifier", "unet", "filter"):
        sp = sub.add_parser(name)
        sp.add_argument("--model", required=True)
        sp.add_argument("--data", required=True)
        sp.add_argument("--layout", choices=("bcihm", "bhsd"), default="bcihm")
        sp.add_argument("--split", required=True)
        if name != "filter":  # filter scores val and test
            sp.add_argument("--subset", default="test")
        sp.add_argument("--json", default=None, help="also write the scores here")
        if name != "classifier":
            sp.add_argument("--pred-dir", required=name == "unet", help="where the predicted masks go")
            sp.add_argument("--ichseg", default=None,
                            help="the ichseg binary (default: PATH, then target/release/ichseg)")
            sp.add_argument("--threads", type=int, default=0)
        if name == "unet":
            sp.add_argument("--min-lesion-ml", type=float, default=None,
                            help="drop lesions smaller than this (mL) before scoring (ichseg segment --min-lesion-ml; "
                                 "default: the model's ichseg.segment.min_lesion_ml, if any)")
            sp.add_argument("--threshold", type=float, default=None,
                            help="bleed probability that marks a voxel (ichseg segment --threshold; default its own)")
        if name == "filter":
            sp.add_argument("--filters", default=",".join(f"{f:g}" for f in FILTERS),
                            help="the small-lesion filters to try, in mL (comma-separated)")
            sp.add_argument("--write", action="store_true",
                            help="write the chosen filter into the model (ichseg.segment.min_lesion_ml)")
            for subset in ("val", "test"):
                sp.add_argument(f"--{subset}-scores", metavar="JSON",
                                help=f"reuse the predictions of `evaluate unet --subset {subset} --min-lesion-ml 0 "
                                     "--json JSON` instead of segmenting again (with the other subset's)")
    a = ap.parse_args(argv)
    if a.cmd == "misses":
        if a.near_px < 0:
            ap.error("--near-px must be >= 0")
        sc = miss_analysis(json.loads(pathlib.Path(a.scores).read_text())["pairs"], a.near_px)
        for r in sc["by_area"]:
            top = "+" if r["max_px"] is None else f"-{r['max_px']:g}"
            cl = "n/a" if r["cl"] is None else f"{100 * r['cl']:.1f} %"
            print(f"sites of {r['min_px']:g}{top} px: {r['n_found']} of {r['n_gt_sites']} found, CL {cl}")
        for kind, r in sc["by_slice_subtypes"].items():
            print(f"sites on slices labelled {kind}: {r['n_found']} of {r['n_gt_sites']} found, "
                  f"CL {100 * r['n_found'] / r['n_gt_sites']:.1f} %")
        missed = sc["n_gt_sites"] - sc["n_found"]
        print(f"all: {sc['n_found']} of {sc['n_gt_sites']} found; {sc['n_missed_near_found']} of the {missed} "
              f"missed lie within {a.near_px} px of a found site of their slice")
    elif a.cmd == "masks":
        sc = eval_masks(a.masks, a.data, a.split, a.subset, ichseg=a.ichseg)
        print(sc["table"], end="")
    elif a.cmd == "classifier":
        sc = eval_classifier(a.model, a.data, a.split, a.subset, a.layout)
        print(f"{a.model} on {a.subset} ({sc['n']} slices, {sc['positives']} bleeding): "
              f"accuracy {sc['accuracy']:.4f}  AUC {sc['auc']:.4f}  sensitivity {sc['sensitivity']:.4f}  "
              f"specificity {sc['specificity']:.4f}")
    elif a.cmd == "unet":
        sc = eval_unet(a.model, a.data, a.split, a.pred_dir, a.subset, a.layout, a.ichseg, a.threads,
                       a.min_lesion_ml, a.threshold)
        print(sc["table"], end="")
    else:
        filters = [float(f) for f in a.filters.split(",")]
        if (a.val_scores is None) != (a.test_scores is None):
            ap.error("--val-scores and --test-scores go together")
        if a.val_scores is None and a.pred_dir is None:
            ap.error("filter needs --pred-dir, or --val-scores and --test-scores")
        unfiltered = None if a.val_scores is None else {
            s: json.loads(pathlib.Path(f).read_text()) for s, f in (("val", a.val_scores), ("test", a.test_scores))}
        sc = choose_filter(a.model, a.data, a.split, a.pred_dir, filters, a.layout, a.ichseg, a.threads, unfiltered)
        for r in sc["rows"]:
            print(f"< {r['min_lesion_ml']:g} mL: val mIoU {100 * r['val']['miou']:.2f}, "
                  f"test mIoU {100 * r['test']['miou']:.2f}")
        print(f"chosen on val: {sc['chosen']:g} mL")
        if a.write:
            sc["command"] = C.command_line("ichseg_training.evaluate", argv)
            C.write_segment_filter(a.model, sc["chosen"], sc)
    if a.json:
        C.write_json(a.json, sc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
