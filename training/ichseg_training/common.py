"""Shared pieces of the trainers: slice caches, seeding, devices, metrics, run records.

Preprocessing matches what libichseg does at inference (METHOD.md section 2, README
"segment"): each axial slice ``hu[:, :, k].T`` (rows = y, columns = x) is windowed (50/130 ->
[0, 1]) and then resized bilinearly to the model input with torch's
``F.interpolate(mode="bilinear", align_corners=False)`` (no antialiasing), the resize
``src/preprocess.rs`` reproduces.  Masks are resized the same way and thresholded at 0.5.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import platform
import random
import shlex
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np

from . import datasets as D


# ------------------------------------------------------------------------------------ slices

@dataclasses.dataclass
class SliceSet:
    """Preprocessed slices of some patients, in patient then slice order.

    ``images`` float32 [N, H, W] in [0, 1]; ``masks`` uint8 [N, H, W] (None when not loaded);
    ``labels`` int64 [N] (1 = bleeding, from the slice labels); ``index`` int64 [N, 2]
    (patient, 1-based slice number)."""

    images: np.ndarray
    masks: Optional[np.ndarray]
    labels: np.ndarray
    index: np.ndarray

    def __len__(self):
        return len(self.labels)


#: The largest intracranial-mask margin the library accepts (skull::intracranial::MAX_MARGIN_MM).
MAX_MARGIN_MM = 50.0


def check_skull_strip_mm(mm) -> None:
    """Raises ValueError unless ``mm`` is a margin ``ichseg skull-strip`` and the library accept."""
    if not 0 <= mm <= MAX_MARGIN_MM:
        raise ValueError(f"skull_strip_mm must be a margin in mm, 0 to {MAX_MARGIN_MM:g}, got {mm}")


def parse_size(text) -> tuple:
    """"160" or "160x160" (rows x cols) -> (rows, cols)."""
    if isinstance(text, (tuple, list)):
        return int(text[0]), int(text[1])
    s = str(text).lower()
    if "x" in s:
        r, c = s.split("x")
        return int(r), int(c)
    return int(s), int(s)


def ct_stem(ds, patient) -> str:
    """The file-name stem (no .nii/.nii.gz) of a patient's CT volume."""
    if isinstance(ds, D.BHSD):
        return ds.names[patient]
    return D._nifti_stem(D._find(ds.root / "ct_scans", patient))


def find_mask(masks_dir, stem) -> pathlib.Path:
    """``masks_dir/STEM.nii[.gz]``: masks (ground truth or pseudo masks) share the CT's stem."""
    for ext in (".nii.gz", ".nii"):
        p = pathlib.Path(masks_dir) / f"{stem}{ext}"
        if p.exists():
            return p
    raise FileNotFoundError(f"no mask {stem}.nii[.gz] in {masks_dir}")


def _resize_stack(stack: np.ndarray, size) -> np.ndarray:
    """[N, h, w] float32 -> [N, rows, cols], torch bilinear align_corners=False (numpy fallback)."""
    rows, cols = size
    if stack.shape[1:] == (rows, cols):
        return stack.astype(np.float32, copy=False)
    try:
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(stack, np.float32))[:, None]
        return F.interpolate(t, size=(rows, cols), mode="bilinear", align_corners=False)[:, 0].numpy()
    except ImportError:
        return np.stack([D.resize_bilinear(s, (rows, cols)) for s in stack])


def load_slices(ds, patients: Sequence[int], size, masks_dir=None, with_masks=True,
                window=(50.0, 130.0), log=None) -> SliceSet:
    """Loads, windows and resizes every slice of ``patients`` (see the module docstring).

    Masks come from ``masks_dir`` (files named like the CT, e.g. pseudo masks) when given,
    else from the dataset's own ground truth."""
    size = parse_size(size)
    # Each volume goes straight into arrays sized from the headers: the slices are held once
    # (a list of per-volume arrays, then their concatenation, held them twice, and glibc kept
    # the freed pieces; thin-slice training sets at 256x256 did not fit in memory).
    counts = [ds.n_slices(p) for p in patients]
    images = np.empty((sum(counts), *size), np.float32)
    masks = np.empty((sum(counts), *size), np.uint8) if with_masks else None
    labels, index = [], []
    t0, at = time.time(), 0
    for p, n in zip(patients, counts):
        hu, gt, labs = ds[p]
        if masks_dir is not None and with_masks:
            import nibabel as nib

            mpath = find_mask(masks_dir, ct_stem(ds, p))
            gt = (np.asarray(nib.load(str(mpath)).dataobj) > 0).astype(np.uint8)
            if gt.shape != hu.shape:
                raise ValueError(f"{mpath}: shape {gt.shape} differs from the CT's {hu.shape}")
        if len(labs) != hu.shape[2] or hu.shape[2] != n:
            raise ValueError(f"patient {p}: {len(labs)} slice labels for {hu.shape[2]} slices")
        sl = np.transpose(hu, (2, 1, 0))  # [z, y, x]
        images[at:at + n] = _resize_stack(D.window(sl, *window), size)
        if with_masks:
            m = np.transpose(gt, (2, 1, 0)).astype(np.float32)
            masks[at:at + n] = _resize_stack(m, size) >= 0.5
        for lab in labs:
            labels.append(int(lab.bleeding))
            index.append((p, lab.slice_number))
        at += n
    out = SliceSet(images, masks, np.asarray(labels, np.int64), np.asarray(index, np.int64).reshape(-1, 2))
    if log:
        log(f"loaded {len(patients)} volumes, {len(out)} slices ({int(out.labels.sum())} bleeding) "
            f"at {size[0]}x{size[1]} in {time.time() - t0:.1f} s")
    return out


def read_patients(split_path, ds, subset):
    """The patients of ``subset`` (train/val/test) in the split file, or all with ``split_path`` None."""
    if split_path is None:
        return list(ds.patients)
    split = D.read_split(split_path)
    missing = sorted(set(split[subset]) - set(ds.patients))
    if missing:
        raise ValueError(f"{split_path}: patients {missing[:5]} are not in the dataset")
    return list(split[subset])


# ---------------------------------------------------------------------------------- metrics

def auc(scores, labels) -> float:
    """ROC AUC by the Mann-Whitney statistic (ties count 1/2); NaN with one class only."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def classification_scores(prob_bleed, labels, threshold=0.5) -> dict:
    """Slice accuracy, AUC, sensitivity, specificity (bleeding = positive)."""
    p = np.asarray(prob_bleed, np.float64)
    y = np.asarray(labels).astype(bool)
    pred = p >= threshold
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
    return {
        "n": int(len(y)), "positives": int(y.sum()),
        "accuracy": (tp + tn) / max(len(y), 1),
        "auc": auc(p, y),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


def segmentation_scores(pred, truth) -> dict:
    """Pixel IoU (background, hemorrhage), mIoU and Dice as dataset-level sums (METHOD.md 6)."""
    p = np.asarray(pred).astype(bool)
    t = np.asarray(truth).astype(bool)
    inter_f, union_f = int((p & t).sum()), int((p | t).sum())
    inter_b, union_b = int((~p & ~t).sum()), int((~p | ~t).sum())
    iou_f = inter_f / union_f if union_f else 1.0
    iou_b = inter_b / union_b if union_b else 1.0
    denom = int(p.sum()) + int(t.sum())
    return {"iou_background": iou_b, "iou_hemorrhage": iou_f, "miou": (iou_b + iou_f) / 2.0,
            "dice": 2.0 * inter_f / denom if denom else 1.0}


def miou_or_worst(miou) -> float:
    """An mIoU as a ranking key: undefined scores (None, NaN) rank below every defined one."""
    return miou if isinstance(miou, float) and miou == miou else -1.0


def epoch_order(n: int, pos, neg, neg_fraction: float, rng) -> np.ndarray:
    """One epoch's slice indices in random order: every positive slice and a random
    ``neg_fraction`` of the negative ones (all ``n`` slices when it is 1 or more)."""
    if neg_fraction >= 1.0:
        chosen = np.arange(n)
    else:
        k = int(round(neg_fraction * len(neg)))
        chosen = np.concatenate([pos, rng.choice(neg, k, replace=False)])
    return chosen[rng.permutation(len(chosen))]


# ------------------------------------------------------------------------- seeds and devices

def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def pick_device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to torch here")
    return torch.device(name)


def memory_format(model, device, disabled: bool, input_size, log=print):
    """The tensor layout to train ``model`` in on [N, C, *input_size] batches: channels-last on the
    CPU (faster there) unless ``disabled`` or unsafe.  Unsafe: PyTorch 2.15's CPU backward of a
    channels-last 1x1 convolution with stride 2 and few input channels corrupts the heap: with 8
    channels from 46x46 maps on AVX-512 CPUs (slim34 width 8 at input 184 and up), with fewer than
    8 from 8x8 maps on an AVX2-only one (Zen 3; slim34 width 4 at input 32).  A dry forward pass
    finds such convolutions (fewer than 8 channels at any size; 8 with a margin, maps over
    40x40); the model then trains in NCHW, and the log says why."""
    import torch

    if device.type != "cpu" or disabled:
        return torch.contiguous_format
    found, hooks = [], []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) \
                and m.in_channels <= 8:
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: found.append((name, tuple(inp[0].shape[-2:]), mod.in_channels))))
    if hooks:
        first = next(model.parameters())
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, first.shape[1] if first.dim() == 4 else 1, *input_size))
        model.train(was_training)
        for h in hooks:
            h.remove()
    risky = [(name, hw, c) for name, hw, c in found if c < 8 or max(hw) > 40]
    if risky:
        name, hw, c = risky[0]
        log(f"NCHW instead of channels-last: {name} is a strided 1x1 convolution with {c} input "
            f"channels on a {hw[0]}x{hw[1]} map, whose channels-last backward crashes PyTorch's CPU kernels")
        return torch.contiguous_format
    return torch.channels_last


# ------------------------------------------------------------------------------ run records

def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def git_commit() -> Optional[str]:
    try:
        here = pathlib.Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def command_line(module: str, argv=None) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(shlex.quote(a) for a in ["python", "-m", module, *args])


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def graph_sha256(path) -> str:
    """SHA-256 of an ONNX file's graph alone (its operators and weights): what ``write_tuned`` and
    ``write_segment_filter`` leave as it was, since they change the metadata only."""
    import onnx

    return hashlib.sha256(onnx.load(str(path)).graph.SerializeToString(deterministic=True)).hexdigest()


def record_path(out) -> pathlib.Path:
    """``model.onnx`` -> ``model.train.json`` (the run record sits next to the model)."""
    out = pathlib.Path(out)
    return out.with_name(out.stem + ".train.json")


def default_ckpt_dir(out) -> pathlib.Path:
    out = pathlib.Path(out)
    return out.with_name(out.stem + ".ckpt")


def write_json(path, doc) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, pathlib.Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v)}")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Logger:
    """Prints a line with the elapsed time and appends it to a log file."""

    def __init__(self, path=None):
        self.t0 = time.time()
        self.path = pathlib.Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")


def start_run(args, argv):
    """What every trainer does first: the output path, its checkpoint folder and log, threads,
    seeds, device and input size. Returns ``(argv_used, out, ckpt_dir, log, device, size)``."""
    import torch

    out = pathlib.Path(args.out)
    ckpt_dir = pathlib.Path(args.ckpt_dir) if args.ckpt_dir else default_ckpt_dir(out)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log = Logger(ckpt_dir / "train.log")
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    return argv_used, out, ckpt_dir, log, pick_device(args.device), parse_size(args.size)


def resume_state(resume: bool, ckpt_dir, model, opt, sched, gen, rng, device, log=print):
    """With ``resume`` and a ``ckpt_dir/last.pt`` (``save_state``'s), loads the model, optimiser,
    scheduler and both random generators from it so the run goes on as if never stopped.
    Returns ``(history, best, best_epoch, start_epoch)``; a fresh run's without a checkpoint."""
    import torch

    last = pathlib.Path(ckpt_dir) / "last.pt"
    if not (resume and last.exists()):
        return [], None, -1, 0
    st = torch.load(last, map_location=device, weights_only=False)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    if sched and st.get("scheduler"):
        sched.load_state_dict(st["scheduler"])
    gen.set_state(st["generator"])
    rng.bit_generator.state = st["rng"]
    log(f"resumed from {last} at epoch {st['epoch'] + 1}")
    return st["history"], st["best"], st["best_epoch"], st["epoch"] + 1


def save_state(ckpt_dir, model, opt, sched, gen, rng, history, best, best_epoch, epoch) -> None:
    """Writes ``ckpt_dir/last.pt``: everything ``resume_state`` needs after ``epoch``."""
    import torch

    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched else None, "generator": gen.get_state(),
                "rng": rng.bit_generator.state, "history": history, "best": best,
                "best_epoch": best_epoch, "epoch": epoch}, pathlib.Path(ckpt_dir) / "last.pt")


# The pseudo-labelling settings a classifier carries tuned (METHOD.md section 8, docs/MODELS.md):
# libichseg applies them unless the caller sets them (`--preset paper`: METHOD.md's).
TUNED_KEYS = ("threshold", "intracranial_margin_mm", "max_hu", "min_hu", "min_lesion_ml", "crf_confidence", "crf_bilateral_compat")


def write_tuned(path, **settings) -> dict:
    """Sets ``ichseg.pseudo.KEY`` in the ONNX file ``path`` for each setting given (a number, or
    ``"off"``; ``None`` removes the key), keeping every other key; returns the new metadata."""
    unknown = set(settings) - set(TUNED_KEYS)
    if unknown:
        raise ValueError(f"unknown tuned settings {sorted(unknown)}; expected {TUNED_KEYS}")
    return write_metadata(path, {f"ichseg.pseudo.{k}": v if v in (None, "off") else f"{float(v):g}"
                                 for k, v in settings.items()})


def write_segment_filter(path, min_lesion_ml, choice) -> dict:
    """Sets a U-Net's tuned small-lesion filter, ``ichseg.segment.min_lesion_ml`` (what
    ``ichseg segment`` applies when the caller gives none), and keeps how it was chosen
    (``choice``) in its run record as ``segment_filter``; returns the new metadata."""
    if not (min_lesion_ml >= 0 and min_lesion_ml != float("inf")):
        raise ValueError(f"min_lesion_ml must be finite and >= 0, got {min_lesion_ml}")
    return write_metadata(path, {"ichseg.segment.min_lesion_ml": f"{float(min_lesion_ml):g}"},
                          record_fields={"segment_filter": choice})


def write_metadata(path, entries, record_fields=None) -> dict:
    """Sets the metadata ``entries`` (key: value; ``None`` removes the key) in the ONNX file
    ``path``, keeping every other key, and brings its run record up to date (plus
    ``record_fields``); returns the new metadata."""
    import pathlib

    import onnx

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    for key, value in entries.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    del proto.metadata_props[:]
    for key in sorted(meta):
        e = proto.metadata_props.add()
        e.key, e.value = key, meta[key]
    pathlib.Path(path).write_bytes(proto.SerializeToString(deterministic=True))
    # The model's training record (NAME.train.json beside it, when there is one) describes the
    # file as it now is.
    record = record_path(path)
    if record.is_file():
        rec = json.loads(record.read_text())
        rec["metadata"] = meta
        rec.update(record_fields or {})
        rec.setdefault("onnx", {}).update(bytes=pathlib.Path(path).stat().st_size, sha256=sha256(path))
        record.write_text(json.dumps(rec, indent=1) + "\n")
    return meta
