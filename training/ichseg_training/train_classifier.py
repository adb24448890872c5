"""Trains a slice classifier (no bleed / bleed) and exports it to ONNX with CAM taps.

    python -m ichseg_training.train_classifier --data DIR --split split.json --arch resnet34 \\
        --out resnet34.onnx [--layout bcihm] [--size 384] [--epochs 200] [--batch 64] \\
        [--lr 1e-3] [--patience 20] [--max-minutes M] [--device cpu|cuda] [--seed 0]

METHOD.md / the paper: AdamW, initial learning rate 1e-3, batch 64, cross-entropy, 200 epochs
with early stopping; inputs are 3-channel windowed slices (50/130, the slice repeated).
Augmentation: ``augment.ClassifierAugment``.  Choices: cosine decay of the learning rate over
``--epochs`` (``--schedule none`` keeps it constant), AdamW weight decay 0.01 (torch's
default), early stopping on the validation cross-entropy (``--select``) with ``--patience``.

Writes ``OUT`` (ONNX, METHOD.md section 8 metadata incl. ``ichseg.taps`` and
``ichseg.deep_tap``), ``OUT`` stem + ``.train.json`` (the run record: command, seed, data,
time, per-epoch history, validation scores) and checkpoints ``last.pt`` / ``best.pt`` in
``--ckpt-dir`` (default: ``OUT`` stem + ``.ckpt/``).  ``--resume`` continues from ``last.pt``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

from . import common as C
from . import datasets as D

MODULE = "ichseg_training.train_classifier"


def parse_args(argv=None):
    from .classifiers import ARCHS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="dataset root (BCIHM or BHSD layout)")
    ap.add_argument("--layout", choices=("bcihm", "bhsd"), default="bcihm")
    ap.add_argument("--split", help="split JSON (datasets.py split); without it every patient trains "
                                    "and nothing validates")
    ap.add_argument("--arch", choices=ARCHS, default="resnet34")
    ap.add_argument("--width", type=int, default=16, help="base width of slim34/slim50")
    ap.add_argument("--out", required=True, help="ONNX file to write")
    ap.add_argument("--size", default="384", help="input size, e.g. 384 or 160x160")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--schedule", choices=("cosine", "none"), default="cosine")
    ap.add_argument("--patience", type=int, default=20, help="epochs without improvement before stopping")
    ap.add_argument("--select", choices=("loss", "auc", "accuracy"), default="loss",
                    help="validation score for early stopping and the exported weights")
    ap.add_argument("--neg-fraction", type=float, default=1.0,
                    help="each epoch: every bleeding slice and a fresh random fraction of the others")
    ap.add_argument("--no-prior-correction", action="store_true",
                    help="with --neg-fraction < 1, do not fold log(neg-fraction) into the bleed logit's bias")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop after this much training time (with --resume, the epochs before count)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--no-channels-last", action="store_true",
                    help="keep NCHW tensors (channels-last is faster on the CPU and the default there)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--trained-on", default=None, help="free text for ichseg.trained_on")
    ap.add_argument("--skull-strip-mm", type=float, default=None, metavar="MM",
                    help="the data were made by `ichseg skull-strip --margin-mm MM`: write ichseg.skull_strip_mm, "
                         "so that the library strips the model's inputs the same way")
    args = ap.parse_args(argv)
    if args.skull_strip_mm is not None:
        try:
            C.check_skull_strip_mm(args.skull_strip_mm)
        except ValueError as e:
            ap.error(f"--skull-strip-mm: {e}")
    return args


def final_linear(model):
    """The last Linear layer (the 2-logit head) of a classifier."""
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def prior_shift(args) -> float:
    """Added to the bleed logit (minus the other) to undo the class prior that negative
    subsampling gives the training batches: log(neg_fraction) (0 without subsampling)."""
    import math

    if args.neg_fraction >= 1.0 or args.no_prior_correction:
        return 0.0
    return math.log(args.neg_fraction)


def predict(model, images, device, batch=128, memory_format=None, shift=0.0):
    """Bleed probabilities and logits of [N, H, W] windowed slices (eval mode, no augmentation);
    ``shift`` is added to the bleed logit (prior correction, see ``prior_shift``)."""
    import torch

    fmt = memory_format or torch.contiguous_format
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch])[:, None].to(device).expand(-1, 3, -1, -1)
            out.append(model(x.contiguous(memory_format=fmt)).float().cpu())
    logits = torch.cat(out) if out else torch.zeros(0, 2)
    logits[:, 1] += shift
    return torch.softmax(logits, 1)[:, 1].numpy(), logits


def main(argv=None):
    import torch
    import torch.nn.functional as F

    from . import augment
    from . import classifiers

    args = parse_args(argv)
    argv_used, out, ckpt_dir, log, device, size = C.start_run(args, argv)
    started, t_start = C.now_iso(), time.time()

    ds = D.open_dataset(args.layout, args.data)
    train_p = C.read_patients(args.split, ds, "train")
    val_p = C.read_patients(args.split, ds, "val") if args.split else []
    log(f"{MODULE}: arch {args.arch}, size {size[0]}x{size[1]}, device {device}, "
        f"{torch.get_num_threads()} threads, seed {args.seed}")
    train = C.load_slices(ds, train_p, size, with_masks=False, log=log)
    val = C.load_slices(ds, val_p, size, with_masks=False, log=log) if val_p else None

    model = classifiers.build(args.arch, args.width)
    fmt = C.memory_format(model, device, args.no_channels_last, size, log)
    model = model.to(device, memory_format=fmt)
    n_params = classifiers.count_params(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.epochs, 1))
             if args.schedule == "cosine" else None)
    aug = None if args.no_augment else augment.ClassifierAugment()
    gen = torch.Generator(device=device).manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    history, best, best_epoch, start_epoch = C.resume_state(args.resume, ckpt_dir, model, opt, sched, gen, rng,
                                                            device, log)
    log(f"{n_params} parameters; {len(train)} training slices, {0 if val is None else len(val)} validation")

    pos_slices = np.flatnonzero(train.labels == 1)
    neg_slices = np.flatnonzero(train.labels == 0)
    shift = prior_shift(args)
    images_t = torch.from_numpy(train.images)
    labels_t = torch.from_numpy(train.labels)
    budget_s = None if args.max_minutes is None else args.max_minutes * 60.0
    stop_reason = "epochs"
    t_train = time.time() - sum(r["seconds"] for r in history)  # a resumed run's budget counts the epochs before
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        model.train()
        perm = C.epoch_order(len(train), pos_slices, neg_slices, args.neg_fraction, rng)
        tot, n = 0.0, 0
        for i in range(0, len(perm), args.batch):
            idx = torch.from_numpy(perm[i:i + args.batch])
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            x = images_t[idx][:, None].to(device)
            y = labels_t[idx].to(device)
            if aug is not None:
                x = aug(x, gen)
            logits = model(x.expand(-1, 3, -1, -1).contiguous(memory_format=fmt))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            n += len(idx)
        lr = opt.param_groups[0]["lr"]
        if sched:
            sched.step()
        row = {"epoch": epoch, "train_loss": tot / max(n, 1), "lr": lr}
        if val is not None:
            prob, logits = predict(model, val.images, device, memory_format=fmt, shift=shift)
            row["val_loss"] = float(F.cross_entropy(logits, torch.from_numpy(val.labels)))
            sc = C.classification_scores(prob, val.labels)
            row.update(val_accuracy=sc["accuracy"], val_auc=sc["auc"])
            key = {"loss": -row["val_loss"], "auc": row["val_auc"], "accuracy": row["val_accuracy"]}[args.select]
            key = -np.inf if key != key else key  # NaN AUC (one class) never improves
        else:
            key = float(epoch)  # no validation: the last epoch is the best
        row["seconds"] = time.time() - t0
        history.append(row)
        improved = best is None or key > best
        if improved:
            best, best_epoch = key, epoch
            torch.save({"model": model.state_dict(), "epoch": epoch, "arch": args.arch, "width": args.width},
                       ckpt_dir / "best.pt")
        C.save_state(ckpt_dir, model, opt, sched, gen, rng, history, best, best_epoch, epoch)
        msg = f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  lr {lr:.2e}"
        if val is not None:
            msg += f"  val loss {row['val_loss']:.4f}  acc {row['val_accuracy']:.4f}  auc {row['val_auc']:.4f}"
        log(msg + f"  {row['seconds']:.1f}s" + ("  *" if improved else ""))
        if val is not None and epoch - best_epoch >= args.patience:
            stop_reason = f"early stop: no better validation {args.select} for {args.patience} epochs"
            break
        if budget_s is not None and time.time() - t_train > budget_s:
            stop_reason = f"time budget of {args.max_minutes} min"
            break
    log(f"stopped ({stop_reason}); best epoch {best_epoch}")

    st = torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=False)
    model = classifiers.build(args.arch, args.width)
    model.load_state_dict(st["model"])
    model.eval()
    if shift:
        with torch.no_grad():  # the exported model carries the prior correction in its bias
            final_linear(model).bias[1] += shift
    trained_on = args.trained_on or (f"{args.layout} {pathlib.Path(args.data).name}, "
                                     f"{len(train_p)} training volumes (seed {args.seed})")
    _, meta = classifiers.export(model, args.arch, out, size, trained_on=trained_on,
                                 skull_strip_mm=args.skull_strip_mm)
    val_scores = None
    if val is not None:
        prob, _ = predict(model, val.images, torch.device("cpu"))
        val_scores = C.classification_scores(prob, val.labels)
    wall = time.time() - t_start
    C.write_json(C.record_path(out), {
        "tool": MODULE, "command": C.command_line(MODULE, argv_used), "args": vars(args),
        "seed": args.seed, "data": str(pathlib.Path(args.data).resolve()), "layout": args.layout,
        "split": str(pathlib.Path(args.split).resolve()) if args.split else None,
        "patients": {"train": train_p, "val": val_p},
        "slices": {"train": len(train), "train_bleeding": int(train.labels.sum()),
                   "val": 0 if val is None else len(val),
                   "val_bleeding": 0 if val is None else int(val.labels.sum())},
        "arch": args.arch, "width": args.width if args.arch.startswith("slim") else None,
        "parameters": n_params, "input_size": list(size), "device": str(device),
        "threads": torch.get_num_threads(), "machine": C.machine_description(),
        "torch": torch.__version__, "git_commit": C.git_commit(),
        "started": started, "finished": C.now_iso(), "wall_seconds": wall,
        "epochs_run": len(history), "best_epoch": best_epoch, "stop": stop_reason,
        "prior_shift": shift, "val_scores": val_scores, "history": history, "metadata": meta,
        "onnx": {"path": str(out), "bytes": out.stat().st_size, "sha256": C.sha256(out)},
    })
    log(f"wrote {out} ({out.stat().st_size} bytes) and {C.record_path(out)}; {wall / 60:.1f} min")
    if val_scores:
        log(f"validation (best weights): accuracy {val_scores['accuracy']:.4f}  auc {val_scores['auc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
