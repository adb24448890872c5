"""Trains the segmentation U-Net on a directory of NIfTI masks and exports it to ONNX.

    python -m ichseg_training.train_unet --data DIR --masks MASKDIR --split split.json \\
        --out unet.onnx [--layout bcihm] [--size 384] [--base-width 64] [--depth 4] \\
        [--epochs 200] [--batch 32] [--lr 0.01] [--patience 20] [--max-minutes M] \\
        [--device cpu|cuda] [--seed 0]

``--masks`` holds one mask per CT, named like the CT (``NNN.nii[.gz]`` for BCIHM): the pseudo
masks of ``ichseg pseudo-label`` for the weakly supervised model, or the ground truth
(``DIR/masks`` for BCIHM) for the fully supervised baseline; omitted, the dataset's own ground
truth is used.  The U-Net trains on every slice of the training patients (negative slices
have empty masks) and validates on the validation patients' masks from ``--val-masks``
(default: the same folder as ``--masks``, so a weakly supervised run never looks at ground
truth; pass the ground truth explicitly to select on it).

METHOD.md section 5 / the paper: SGD, initial learning rate 0.01, batch 32, loss = CE + soft
Dice (bleed class), horizontal and vertical flips, 200 epochs with early stopping.  Choices:
momentum 0.9, weight decay 1e-4, cosine decay over ``--epochs``, Dice weight 1
(``--dice-weight``), early stopping on the validation Dice (pixel sums over all validation
slices at the model resolution), ``--neg-fraction`` (default 1: every negative slice each epoch).
Input: 1 channel, the windowed slice; output 2 logits (softmax, bleed index 1).
``--site-weight W`` (not in the paper; default 0, off) weighs the CE of each mask pixel by
1 + W / sqrt(area of its per-slice component), so a few-pixel site, which counts in CL as much
as a large one, is not lost in the loss (docs/RESULTS.md, "Where the fully supervised U-Net's
CL stops").  ``--appearance`` (not in the paper; off by default) also varies each training slice's
brightness, contrast, noise and sharpness (``augment.Appearance``, the image only), as other
scanners would; measured, not adopted (docs/RESULTS.md, "Appearance augmentation").

Writes ``OUT``, ``OUT`` stem + ``.train.json`` and checkpoints like train_classifier.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

from . import common as C
from . import datasets as D

MODULE = "ichseg_training.train_unet"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="dataset root (BCIHM or BHSD layout)")
    ap.add_argument("--layout", choices=("bcihm", "bhsd"), default="bcihm")
    ap.add_argument("--masks", default=None, help="training masks (default: the dataset's ground truth)")
    ap.add_argument("--val-masks", default=None, help="validation masks (default: as --masks)")
    ap.add_argument("--split", help="split JSON; without it every patient trains and nothing validates")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", default="384")
    ap.add_argument("--base-width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--upsampling", choices=("transpose", "resize"), default="transpose")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--schedule", choices=("cosine", "none"), default="cosine")
    ap.add_argument("--dice-weight", type=float, default=1.0, help="loss = CE + w * soft Dice loss")
    ap.add_argument("--neg-fraction", type=float, default=1.0,
                    help="fraction of the negative (empty-mask) slices drawn afresh each epoch")
    ap.add_argument("--crop", type=int, default=None,
                    help="train on CROPxCROP patches (a multiple of 2**depth) instead of whole slices")
    ap.add_argument("--crop-fg", type=float, default=0.5,
                    help="with --crop: probability that a patch is centred on a random mask pixel")
    ap.add_argument("--site-weight", type=float, default=0.0,
                    help="CE weight 1 + W / sqrt(area) for the pixels of each per-slice mask component (0: off)")
    ap.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and at the last)")
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--appearance", action="store_true",
                    help="also vary brightness, contrast, noise and sharpness of the training slices "
                         "(augment.Appearance; not in the paper)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop after this much training time (with --resume, the epochs before count)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--no-channels-last", action="store_true",
                    help="keep NCHW tensors (channels-last is faster on the CPU and the default there)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--trained-on", default=None)
    a = ap.parse_args(argv)
    if not 0 <= a.site_weight < float("inf"):
        ap.error(f"--site-weight {a.site_weight}: must be finite and >= 0")
    if a.appearance and a.no_augment:
        ap.error("--appearance is an augmentation: not with --no-augment")
    return a


def predict_masks(model, images, device, batch=64, memory_format=None):
    """Argmax masks (uint8 [N, H, W]) of windowed slices."""
    import torch

    fmt = memory_format or torch.contiguous_format
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch])[:, None].to(device).contiguous(memory_format=fmt)
            out.append(model(x).argmax(1).to(torch.uint8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0,) + images.shape[1:], np.uint8)


def crop_batch(images, masks, idx, crop, p_fg, rng):
    """Patches [B, crop, crop] of the slices ``idx``: centred on a random mask pixel with
    probability ``p_fg`` (when the slice has one), else at a uniformly random position."""
    n_rows, n_cols = images.shape[1:]
    xs = np.empty((len(idx), crop, crop), np.float32)
    ys = np.empty((len(idx), crop, crop), np.int64)
    for j, i in enumerate(idx):
        fg = np.flatnonzero(masks[i]) if rng.random() < p_fg else ()
        if len(fg):
            r, c = divmod(int(fg[rng.integers(len(fg))]), n_cols)
            r0 = min(max(r - crop // 2, 0), n_rows - crop)
            c0 = min(max(c - crop // 2, 0), n_cols - crop)
        else:
            r0 = int(rng.integers(0, n_rows - crop + 1))
            c0 = int(rng.integers(0, n_cols - crop + 1))
        xs[j] = images[i, r0:r0 + crop, c0:c0 + crop]
        ys[j] = masks[i, r0:r0 + crop, c0:c0 + crop]
    return xs, ys


def site_weights(masks, weight):
    """CE weights [B, rows, cols] of masks [B, rows, cols]: 1 for background, 1 + ``weight`` /
    sqrt(area) for the pixels of a component of ``area`` pixels (8-connected per slice, the
    sites CL counts)."""
    from scipy import ndimage

    out = np.ones(masks.shape, np.float32)
    for j, m in enumerate(masks):
        sites, n = ndimage.label(m, np.ones((3, 3), bool))
        if n:
            per_site = 1.0 + weight / np.sqrt(np.maximum(np.bincount(sites.ravel()), 1)).astype(np.float32)
            per_site[0] = 1.0
            out[j] = per_site[sites]
    return out


def soft_dice_loss(logits, target, eps=1.0):
    """1 - soft Dice of the bleed class over the whole batch."""
    import torch

    p = torch.softmax(logits, 1)[:, 1]
    t = target.float()
    return 1.0 - (2.0 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)


def main(argv=None):
    import torch
    import torch.nn.functional as F

    from . import augment
    from .unet import UNet, export_onnx, segmenter_metadata

    args = parse_args(argv)
    argv_used, out, ckpt_dir, log, device, size = C.start_run(args, argv)
    if size[0] % 2**args.depth or size[1] % 2**args.depth:
        raise SystemExit(f"--size {args.size}: must be divisible by 2**depth = {2**args.depth}")
    if args.crop is not None and (args.crop % 2**args.depth or args.crop > min(size)):
        raise SystemExit(f"--crop {args.crop}: must be a multiple of {2**args.depth} and at most the size")
    started, t_start = C.now_iso(), time.time()

    ds = D.open_dataset(args.layout, args.data)
    train_p = C.read_patients(args.split, ds, "train")
    val_p = C.read_patients(args.split, ds, "val") if args.split else []
    val_masks = args.val_masks if args.val_masks is not None else args.masks
    log(f"{MODULE}: size {size[0]}x{size[1]}, base width {args.base_width}, depth {args.depth}, "
        f"device {device}, {torch.get_num_threads()} threads, seed {args.seed}")
    log(f"training masks: {args.masks or 'dataset ground truth'}; validation masks: {val_masks or 'dataset ground truth'}")
    train = C.load_slices(ds, train_p, size, masks_dir=args.masks, log=log)
    val = C.load_slices(ds, val_p, size, masks_dir=val_masks, log=log) if val_p else None

    model = UNet(1, 2, args.base_width, args.depth, args.upsampling)
    fmt = C.memory_format(model, device, args.no_channels_last, size, log)
    model = model.to(device, memory_format=fmt)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.epochs, 1))
             if args.schedule == "cosine" else None)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    appearance = augment.Appearance() if args.appearance else None
    rng = np.random.default_rng(args.seed)
    history, best, best_epoch, start_epoch = C.resume_state(args.resume, ckpt_dir, model, opt, sched, gen, rng,
                                                            device, log)
    pos_slices = np.flatnonzero(train.masks.reshape(len(train), -1).any(1))
    neg_slices = np.setdiff1d(np.arange(len(train)), pos_slices)
    log(f"{n_params} parameters; {len(train)} training slices ({len(pos_slices)} with mask pixels), "
        f"{0 if val is None else len(val)} validation")

    images_t = torch.from_numpy(train.images)
    masks_t = torch.from_numpy(train.masks)  # uint8: int64 would be 8 times the masks' memory
    budget_s = None if args.max_minutes is None else args.max_minutes * 60.0
    stop_reason = "epochs"
    t_train = time.time() - sum(r["seconds"] for r in history)  # a resumed run's budget counts the epochs before
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        model.train()
        perm = C.epoch_order(len(train), pos_slices, neg_slices, args.neg_fraction, rng)
        tot_ce = tot_dice = 0.0
        n = 0
        for i in range(0, len(perm), args.batch):
            idx = perm[i:i + args.batch]
            if len(idx) < 2:
                continue
            if args.crop is None:
                x = images_t[idx][:, None].to(device)
                y = masks_t[idx].long().to(device)
            else:
                xs, ys = crop_batch(train.images, train.masks, idx, args.crop, args.crop_fg, rng)
                x = torch.from_numpy(xs)[:, None].to(device)
                y = torch.from_numpy(ys).to(device)
            if not args.no_augment:
                x, y = augment.flips(x, y, gen)
                if appearance is not None:
                    x = appearance(x, gen)
            logits = model(x.contiguous(memory_format=fmt))
            if args.site_weight > 0:
                w = torch.from_numpy(site_weights(y.cpu().numpy(), args.site_weight)).to(device)
                ce = (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()
            else:
                ce = F.cross_entropy(logits, y)
            dl = soft_dice_loss(logits, y)
            loss = ce + args.dice_weight * dl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_ce += float(ce.detach()) * len(idx)
            tot_dice += float(dl.detach()) * len(idx)
            n += len(idx)
        lr = opt.param_groups[0]["lr"]
        if sched:
            sched.step()
        row = {"epoch": epoch, "train_ce": tot_ce / max(n, 1), "train_dice_loss": tot_dice / max(n, 1),
               "slices": int(n), "lr": lr}
        last = epoch == args.epochs - 1 or (budget_s is not None and time.time() - t_train > budget_s)
        validate = val is not None and ((epoch + 1) % max(args.val_every, 1) == 0 or last)
        if validate:
            pred = predict_masks(model, val.images, device, memory_format=fmt)
            sc = C.segmentation_scores(pred, val.masks)
            row.update({f"val_{k}": v for k, v in sc.items()})
            key = sc["dice"]
        else:
            key = float(epoch) if val is None else None
        row["seconds"] = time.time() - t0
        history.append(row)
        improved = key is not None and (best is None or key > best)
        if improved:
            best, best_epoch = key, epoch
            torch.save({"model": model.state_dict(), "epoch": epoch}, ckpt_dir / "best.pt")
        C.save_state(ckpt_dir, model, opt, sched, gen, rng, history, best, best_epoch, epoch)
        msg = f"epoch {epoch:3d}  ce {row['train_ce']:.4f}  dice loss {row['train_dice_loss']:.4f}  lr {lr:.2e}"
        if validate:
            msg += f"  val dice {row['val_dice']:.4f}  mIoU {row['val_miou']:.4f}"
        log(msg + f"  {row['seconds']:.1f}s" + ("  *" if improved else ""))
        if val is not None and epoch - best_epoch >= args.patience:
            stop_reason = f"early stop: no better validation Dice for {args.patience} epochs"
            break
        if last and budget_s is not None and epoch < args.epochs - 1:
            stop_reason = f"time budget of {args.max_minutes} min"
            break
    log(f"stopped ({stop_reason}); best epoch {best_epoch}")

    st = torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=False)
    model = UNet(1, 2, args.base_width, args.depth, args.upsampling)
    model.load_state_dict(st["model"])
    model.eval()
    supervision = f"masks from {args.masks}" if args.masks else "ground-truth masks"
    trained_on = args.trained_on or (f"{args.layout} {pathlib.Path(args.data).name}, {len(train_p)} training "
                                     f"volumes, {supervision} (seed {args.seed})")
    meta = segmenter_metadata(size, 1, trained_on=trained_on)
    export_onnx(model, out, size, 1, meta)
    val_scores = None
    if val is not None:
        val_scores = C.segmentation_scores(predict_masks(model, val.images, torch.device("cpu")), val.masks)
    wall = time.time() - t_start
    C.write_json(C.record_path(out), {
        "tool": MODULE, "command": C.command_line(MODULE, argv_used), "args": vars(args),
        "seed": args.seed, "data": str(pathlib.Path(args.data).resolve()), "layout": args.layout,
        "masks": args.masks, "val_masks": val_masks,
        "split": str(pathlib.Path(args.split).resolve()) if args.split else None,
        "patients": {"train": train_p, "val": val_p},
        "slices": {"train": len(train), "train_with_mask": int(len(pos_slices)),
                   "val": 0 if val is None else len(val)},
        "parameters": n_params, "input_size": list(size), "device": str(device),
        "threads": torch.get_num_threads(), "machine": C.machine_description(),
        "torch": torch.__version__, "git_commit": C.git_commit(),
        "started": started, "finished": C.now_iso(), "wall_seconds": wall,
        "epochs_run": len(history), "best_epoch": best_epoch, "stop": stop_reason,
        "val_scores_model_resolution": val_scores, "history": history, "metadata": meta,
        "onnx": {"path": str(out), "bytes": out.stat().st_size, "sha256": C.sha256(out)},
    })
    log(f"wrote {out} ({out.stat().st_size} bytes) and {C.record_path(out)}; {wall / 60:.1f} min")
    if val_scores:
        log(f"validation (best weights, model resolution): Dice {val_scores['dice']:.4f}  mIoU {val_scores['miou']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
