#!/usr/bin/env python3
"""Times pseudo-labelling of a CT volume: `ichseg pseudo-label` against the same pipeline in
Python, same weights, same volume, same run.

Classifiers: torchvision ResNet34 and ResNet50 (2 logits, seeded random weights, BatchNorm
statistics randomised so activations are not trivial), 3-channel 384x384 input, taps layer1 and
layer2 (their last ReLU outputs), exported with the METHOD.md section 8 metadata. Volume: the
synthetic 512x512x32 head CT of scripts/bench_segment.py. Every slice is labelled positive
(a labels CSV), so every stage runs on every slice.

(a) The Python peer, per batch of slices: window -> bilinear resize to the input (PyTorch) ->
    CAMs of both taps -> SF-CAM (with the layer-1 tanh amplification) at the input size ->
    bilinear to the native grid; then BME over the two models, SCF (c 2, w 0.5), BLA (OR,
    TH 0.2) and, when pydensecrf is importable and --crf is on, the dense CRF per slice
    (pydensecrf, the paper's tool). Timed per volume with the volume already in memory. Two peers:

    --peer grad-cam (default on cpu when pytorch_grad_cam imports): what the paper's authors
      would run (--threads for PyTorch and OpenCV). pytorch-grad-cam's
      ``LayerCAM(model, target_layers=[layer1, layer2])`` with ``ClassifierOutputTarget(1)`` gives the per-layer LayerCAM maps at the input size (its
      ``compute_cam_per_layer``; the multi-layer average is skipped) and the taps' activations
      (its ``activations_and_grads``); PC1 in numpy (centred channels, K x K covariance, eigh).
      Where this differs from METHOD.md section 3 (read from grad-cam 1.5.7's source):
      - C is min-max normalised, ``(L - min L) / (max(L - min L) + 1e-7)``, not ``L / max L``:
        the same only where L is 0 somewhere. This benchmark's random weights give L > 0 on
        whole slices, so the peer's fused maps differ from ichseg's by a few percent (relative
        L2) and the masks near the threshold with them; --peer torch, which follows METHOD.md,
        matches ichseg to ~1e-7.
      - Resizes are ``cv2.resize`` INTER_LINEAR (half-pixel centres, as PyTorch's bilinear with
        align_corners=False and ichseg): the same maps. This script resizes P and the SF-CAM
        to the native grid the same way.
      - Its backward is ``loss.backward()`` on the summed bleed logits: it also computes every
        parameter's gradient, down to the stem, where ichseg and --peer torch differentiate
        only to the taps. Kept: that is the library as users run it.
      - PC1: its EigenCAM projection (``get_2d_projection``) is a full SVD with
        full_matrices=True (a (h*w)^2 U, 340 MB per ResNet layer1 slice at 384x384) and leaves
        the sign to the SVD; here the covariance + eigh gives the same direction, oriented as
        METHOD.md says. The orientation is taken on the tap grid against grad-cam's LayerCAM
        map area-averaged down to it (grad-cam returns it only at the input size; ichseg uses
        the raw L: a centred correlation keeps its sign under min-max, the averaging can flip
        it only where it is about 0).
      numpy's OpenBLAS runs on --blas-threads (default 1) threads: its PC1 products are small
      (K <= 512) and on a shared 2-core machine two OpenBLAS threads busy-wait each other out
      (PC1 + SF-CAM of 4 slices of ResNet34+50: 12.5 s with 2 threads, 0.25 s with 1, at a load
      average of 5). One thread is the peer at its best.
    --peer torch (the GPU path, ``--device cuda``): a hand-written LayerCAM in PyTorch (forward
      hooks, autograd to the taps only) and PC1 by torch.linalg.eigh, all on the device, then
      the CRF on the CPU. On CPUs torch.linalg.eigh can be pathologically slow (issue 4 measured
      4 s per 256x256 call on the 2-core EPYC of docs/BENCHMARKS.md): use grad-cam there.
(b) ``ichseg pseudo-label --classifier R34 --classifier R50 CT -o OUT --labels CSV --device D
    --threads T --batch B --report R.json --cam-out CAMS``: the report's ``timings.total_s``
    (the labelling of the volume in memory) is compared with (a); model load + gradient graphs
    + plans are reported apart, stage times from the report.

Both run with the CRF or both without (without when pydensecrf is missing). The masks are
compared voxel by voxel, before and after the CRF, and the fused maps (SCAM) by relative L2.
Peer and ichseg alternate over --repeat (other processes may share the CPU: both then see the
same load); the load average is recorded at the start and after each repeat.
Writes ``--out-dir``/bench_pseudo.json and bench_pseudo.md (a section for docs/BENCHMARKS.md).
--dry-run: tiny sizes (ResNet18 at 64x64, 2 slices of 96x96).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "training"))
import bench_segment as bs  # noqa: E402

LAMBDA, SCF_C, SCF_W, TH = 2.0, 2, 0.5, 0.2
CRF = dict(gauss_sxy=3, gauss_compat=3, bil_sxy=80, bil_srgb=13, bil_compat=10, iters=10, gt_prob=0.7)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ichseg", type=pathlib.Path, default=ROOT / "target" / "release" / "ichseg")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--peer", choices=["grad-cam", "torch"], default=None,
                   help="the Python pipeline: pytorch-grad-cam + numpy (default on cpu when installed) or torch")
    p.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench-pseudo-out"))
    p.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/ichseg-pseudo-work"))
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--input", type=int, default=384)
    p.add_argument("--archs", default="resnet34,resnet50")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both (0 = all cores)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="numpy's BLAS threads in the grad-cam peer (its PC1; see the docstring)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--no-crf", action="store_true", help="leave the dense CRF out of both pipelines")
    p.add_argument("--parity-slices", type=int, default=0,
                   help="with --device cuda: also compare ichseg CPU vs CUDA (CAM maps, masks) on this many slices")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()
    if a.dry_run:
        a.slices, a.size, a.input, a.archs, a.batch, a.repeat = 2, 96, 64, "resnet18,resnet18", 2, 1
    return a


def tap_names(proto) -> list[str]:
    """The outputs of the last ReLU of layer1 and of layer2 in a torchvision ResNet export."""
    names = []
    for layer in ("/layer1/", "/layer2/"):
        relus = [n.output[0] for n in proto.graph.node if n.op_type == "Relu" and n.name.startswith(layer)]
        names.append(relus[-1])
    return names


def export_classifiers(args, work: pathlib.Path):
    import torch
    import torchvision
    from ichseg_training.unet import export_onnx

    nets, paths = [], []
    for i, arch in enumerate(args.archs.split(",")):
        torch.manual_seed(bs.SEED + i)
        net = getattr(torchvision.models, arch)(weights=None, num_classes=2).eval()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0.0, 0.1)
                    m.running_var.uniform_(0.5, 2.0)
        path = work / f"{arch}_{i}.onnx"
        proto = export_onnx(net, path, args.input, 3)
        taps = tap_names(proto)
        meta = {"ichseg.kind": "classifier", "ichseg.input_size": f"{args.input}x{args.input}",
                "ichseg.channels": "3", "ichseg.window": "50,130", "ichseg.bleed_index": "1",
                "ichseg.taps": f"layer1={taps[0]},layer2={taps[1]}",
                "ichseg.trained_on": "random weights (benchmark)"}
        export_onnx(net, path, args.input, 3, meta)
        nets.append((net, [net.layer1, net.layer2]))
        paths.append(path)
    return nets, paths


def has_grad_cam() -> bool:
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        return False
    return True


def model_input(vol, args):
    """Window to [0, 1], bilinear to the model input, 3 channels: [b, ny, nx] -> [b, 3, S, S]."""
    import torch.nn.functional as F

    level, width = bs.WINDOW
    x = ((vol - (level - width / 2)) / width).clamp(0, 1)[:, None]
    x = F.interpolate(x, size=(args.input, args.input), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


def lap(times: dict, key: str, since: float) -> float:
    """Adds the time since `since` to times[key]; returns now (the next stage's start)."""
    now = time.perf_counter()
    times[key] = times.get(key, 0.0) + now - since
    return now


def sca(ecam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SCF + BLA (OR) of the BME maps [taps, z, y, x]: the fused maps and the mask."""
    import torch

    scam = scf(torch.from_numpy(ecam)).numpy()
    return scam, (scam > TH).any(0).astype(np.uint8)


def torch_pseudo(nets, hu: np.ndarray, args) -> tuple[np.ndarray, dict, np.ndarray, np.ndarray]:
    """The --peer torch pipeline on args.device (the CRF on the CPU)."""
    import torch

    dev = torch.device(args.device)
    nz, ny, nx = hu.shape
    t0 = time.perf_counter()
    vol = torch.from_numpy(hu).to(dev)
    ecam = torch.zeros((2, nz, ny, nx), device=dev)
    for net, layers in nets:
        net = net.to(dev)
        acts = {}
        hooks = [layer.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, o))
                 for k, layer in enumerate(layers)]
        for s in range(0, nz, args.batch):
            logits = net(model_input(vol[s:s + args.batch], args))
            grads = torch.autograd.grad(logits[:, 1].sum(), [acts[0], acts[1]])
            with torch.no_grad():
                for t in (0, 1):
                    ecam[t, s:s + args.batch] += sf_cam(acts[t], grads[t], t == 0, (args.input, args.input), (ny, nx)) / len(nets)
        for h in hooks:
            h.remove()
    with torch.no_grad():
        scam = scf(ecam)
        mask = (scam > TH).any(0).to(torch.uint8)
    mask = mask.cpu().numpy()
    if args.device == "cuda":
        torch.cuda.synchronize()
    times = {"cam_sca_s": time.perf_counter() - t0}
    pre = mask
    if args.crf:
        mask = crf(hu, mask)
        times["crf_s"] = time.perf_counter() - t0 - times["cam_sca_s"]
    times["total_s"] = time.perf_counter() - t0
    return mask, times, scam.cpu().numpy(), pre  # the fused maps for the agreement, untimed


def per_layer_layercam(net, layers):
    """pytorch-grad-cam's LayerCAM, returning its per-layer maps ([b, 1, S, S] each, min-max
    normalised, resized to the input) instead of their average."""
    from pytorch_grad_cam import LayerCAM

    class PerLayerCAM(LayerCAM):
        def aggregate_multi_layers(self, cam_per_target_layer):
            return cam_per_target_layer

    return PerLayerCAM(net, target_layers=layers)


def gradcam_pseudo(nets, hu: np.ndarray, args) -> tuple[np.ndarray, dict, np.ndarray, np.ndarray]:
    """The --peer grad-cam pipeline on the CPU; stage times in the returned dict."""
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    nz, ny, nx = hu.shape
    times = dict.fromkeys(("preprocess_s", "gradcam_s", "sfcam_s", "sca_s", "crf_s"), 0.0)
    start = time.perf_counter()
    vol = torch.from_numpy(hu)
    ecam = np.zeros((2, nz, ny, nx), np.float32)
    for net, layers in nets:
        cam = per_layer_layercam(net, layers)
        try:
            for s in range(0, nz, args.batch):
                t0 = time.perf_counter()
                x = model_input(vol[s:s + args.batch], args)
                t0 = lap(times, "preprocess_s", t0)
                maps = cam(x, [ClassifierOutputTarget(1)] * len(x))
                acts = [a.numpy() for a in cam.activations_and_grads.activations]
                t0 = lap(times, "gradcam_s", t0)
                for t in (0, 1):
                    sf = sf_cam_np(acts[t], maps[t][:, 0], t == 0)
                    ecam[t, s:s + len(x)] += resize(sf, (ny, nx)) / len(nets)
                lap(times, "sfcam_s", t0)
        finally:
            cam.activations_and_grads.release()  # not `with`: BaseCAM.__exit__ swallows IndexError
    t0 = time.perf_counter()
    scam, mask = sca(ecam)
    t0 = lap(times, "sca_s", t0)
    pre = mask
    if args.crf:
        mask = crf(hu, mask)
        lap(times, "crf_s", t0)
    times["total_s"] = time.perf_counter() - start
    return mask, times, scam, pre


def resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear per slice with OpenCV, as pytorch-grad-cam scales its maps (half-pixel centres,
    like PyTorch's align_corners=False): [b, h, w] -> [b, rows, cols]."""
    import cv2

    rows, cols = size
    return np.stack([cv2.resize(m, (cols, rows), interpolation=cv2.INTER_LINEAR) for m in maps])


def pc1(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """PC1 of one tap (METHOD.md section 3, step 3) for a batch: activations [b, K, h, w] ->
    [b, h, w] in [0, 1], oriented to correlate positively with the LayerCAM maps c ([b, S, S])."""
    import cv2

    b, k, h, w = a.shape
    x = a.reshape(b, k, h * w)
    x = x - x.mean(2, keepdims=True)
    # The K x K covariance, not grad-cam's full SVD of the h*w x K matrix: same top direction.
    _, vecs = np.linalg.eigh((x @ x.transpose(0, 2, 1)).astype(np.float64))
    p = (vecs[:, :, -1].astype(np.float32)[:, None] @ x)[:, 0].reshape(b, h, w)
    for i in range(b):
        ref = cv2.resize(c[i], (w, h), interpolation=cv2.INTER_AREA)  # grad-cam gives C only at S x S
        if np.sum(p[i] * (ref - ref.mean())) < 0:
            p[i] = -p[i]
    lo, hi = p.min((1, 2), keepdims=True), p.max((1, 2), keepdims=True)
    return np.where(hi > lo, (p - lo) / np.maximum(hi - lo, 1e-30), 0).astype(np.float32)


def sf_cam_np(a: np.ndarray, c: np.ndarray, amplify: bool) -> np.ndarray:
    """SF-CAM of one tap for a batch at the input size (METHOD.md section 3, steps 3-5) from the
    activations a and pytorch-grad-cam's LayerCAM maps c (already normalised and resized)."""
    p = resize(pc1(a, c), c.shape[1:])
    cam = (c + p * c) / 2
    if amplify:
        m = cam.max((1, 2), keepdims=True)
        cam = np.where(m > 0, np.tanh(LAMBDA * cam / np.maximum(m, 1e-30)), 0)
    return cam.astype(np.float32)


def sf_cam(a, g, amplify: bool, model_input, native):
    """METHOD.md section 3 for one tap of a batch: [b, K, h, w] -> SF-CAM at the model's input size
    (as pytorch-grad-cam scales CAMs), then bilinear to the native grid (as ichseg does)."""
    import torch
    import torch.nn.functional as F

    b, k, h, w = a.shape
    lcam = torch.relu((torch.relu(g) * a).sum(1))
    mx = lcam.amax((1, 2), keepdim=True)
    c = torch.where(mx > 0, lcam / mx.clamp_min(1e-30), torch.zeros_like(lcam))
    x = a.reshape(b, k, h * w).transpose(1, 2)
    x = x - x.mean(1, keepdim=True)
    _, vecs = torch.linalg.eigh(x.transpose(1, 2) @ x)
    p = (x @ vecs[..., -1:])[..., 0].reshape(b, h, w)
    sign = torch.sign((p * lcam).sum((1, 2)))
    p = p * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None, None]
    pmin, pmax = p.amin((1, 2), keepdim=True), p.amax((1, 2), keepdim=True)
    pn = torch.where(pmax > pmin, (p - pmin) / (pmax - pmin).clamp_min(1e-30), torch.zeros_like(p))
    up = lambda m, size: F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]  # noqa: E731
    c, pn = up(c, model_input), up(pn, model_input)
    cam = (c + pn * c) / 2
    if amplify:
        m = cam.amax((1, 2), keepdim=True)
        cam = torch.where(m > 0, torch.tanh(LAMBDA * cam / m.clamp_min(1e-30)), torch.zeros_like(cam))
    return up(cam, native)


def scf(ecam):
    """SCF over one run of all slices (every slice is positive here), per tap."""
    import torch

    nz = ecam.shape[1]
    num, den = ecam.clone(), torch.ones((1, nz, 1, 1), device=ecam.device)
    for d in range(1, SCF_C + 1):
        if d >= nz:
            break
        wgt = SCF_W / d
        num[:, d:] += wgt * ecam[:, :-d]
        num[:, :-d] += wgt * ecam[:, d:]
        den[:, d:] += wgt
        den[:, :-d] += wgt
    return num / den


def crf(hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    level, width = bs.WINDOW
    out = np.zeros_like(mask)
    for z in range(hu.shape[0]):
        if not mask[z].any():
            continue
        grey = (np.clip((hu[z] - (level - width / 2)) / width, 0, 1) * 255).astype(np.uint8)
        ny, nx = grey.shape
        d = dcrf.DenseCRF2D(nx, ny, 2)
        d.setUnaryEnergy(unary_from_labels(mask[z].astype(np.int32), 2, gt_prob=CRF["gt_prob"], zero_unsure=False))
        d.addPairwiseGaussian(sxy=CRF["gauss_sxy"], compat=CRF["gauss_compat"])
        d.addPairwiseBilateral(sxy=CRF["bil_sxy"], srgb=CRF["bil_srgb"],
                               rgbim=np.ascontiguousarray(np.repeat(grey[..., None], 3, 2)), compat=CRF["bil_compat"])
        out[z] = np.argmax(np.array(d.inference(CRF["iters"])).reshape(2, ny, nx), 0)
    return out


def ichseg_command(args, paths, volume, labels, work: pathlib.Path) -> tuple[list, dict]:
    """The `ichseg pseudo-label` command line and the paths of its outputs."""
    out = {"mask": work / "ichseg_pseudo.nii.gz", "report": work / "ichseg_pseudo.json",
           "cams": work / "ichseg_cams.nii"}
    cmd = [str(args.ichseg), "pseudo-label", *sum((["--classifier", str(p)] for p in paths), []), str(volume),
           "-o", str(out["mask"]), "--labels", str(labels), "--device", args.device, "--threads", str(args.threads),
           "--batch", str(args.batch), "--report", str(out["report"]), "--cam-out", str(out["cams"]), "--quiet"]
    return cmd + ([] if args.crf else ["--no-crf"]), out


def run_ichseg(cmd: list, out: dict) -> dict | None:
    """One ichseg run: its report's timings and the process wall clock (None if it failed)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"[pseudo] ichseg failed: {' '.join(cmd)}\n{proc.stderr}", file=sys.stderr)
        return None
    return {**json.loads(out["report"].read_text())["timings"], "wall_s": time.perf_counter() - t0}


def ichseg_outputs(out: dict) -> tuple[np.ndarray, np.ndarray]:
    """ichseg's mask and fused maps ([taps, z, y, x]; written after timings.total_s stops)."""
    import nibabel as nib

    cams = np.asarray(nib.load(str(out["cams"])).dataobj, dtype=np.float32).transpose(3, 2, 1, 0)
    return bs.read_mask(out["mask"]), cams


def median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))


def parity(args, paths, work: pathlib.Path) -> dict:
    """ichseg CUDA (strict FP32 and default math) vs ichseg CPU on a short volume: the fused
    CAM maps (relative L2, goal <= 1e-3) and the masks (goal >= 99.9 %)."""
    import nibabel as nib

    vol, labels = work / "ct_parity.nii.gz", work / "labels_parity.csv"
    bs.write_nifti(vol, bs.make_volume(args.size, args.parity_slices))
    labels.write_text("slice,label\n" + "".join(f"{z},1\n" for z in range(args.parity_slices)))
    out = {}
    for name, device, env in (("cpu", "cpu", {}), ("strict", "cuda", {"NVIDIA_TF32_OVERRIDE": "0"}),
                              ("default", "cuda", {})):
        mask, cams = work / f"par_{name}.nii.gz", work / f"par_{name}_cams.nii"
        cmd = [str(args.ichseg), "pseudo-label", *sum((["--classifier", str(p)] for p in paths), []), str(vol),
               "-o", str(mask), "--cam-out", str(cams), "--labels", str(labels), "--device", device,
               "--batch", str(args.batch), "--quiet"] + (["--no-crf"] if not args.crf else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        print(f"[pseudo] parity run {name}: exit {proc.returncode} in {time.perf_counter() - t0:.1f} s")
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            return {"ok": False, "why": f"{name} run failed"}
        out[name] = (bs.read_mask(mask), np.asarray(nib.load(str(cams)).dataobj, dtype=np.float32))
    res = {}
    for name in ("strict", "default"):
        res[name] = {"cam_rel_l2": rel_l2(out[name][1], out["cpu"][1]),
                     "mask_agreement": float(np.mean(out[name][0] == out["cpu"][0]))}
    res["ok"] = res["strict"]["cam_rel_l2"] <= 1e-3 and res["strict"]["mask_agreement"] >= 0.999
    print(f"[pseudo] parity: {json.dumps(res)}")
    return res


PEERS = {"grad-cam": "pytorch-grad-cam {grad-cam} LayerCAM (PyTorch {torch} eager) + numpy {numpy} PC1 (eigh of "
                        "the covariance) + OpenCV {opencv} bilinear resizes",
         "torch": "PyTorch {torch} eager: hand-written LayerCAM (autograd to the taps) + torch.linalg.eigh PC1"}
STAGES = {
    "ichseg": [("preprocess_s", "window + resize"), ("inference_s", "forward + gradients to the taps"),
               ("cam_s", "LayerCAM + PC1 + SF-CAM + resize to the native grid"), ("fusion_s", "BME + SCF + BLA"),
               ("crf_s", "dense CRF")],
    "grad-cam": [("preprocess_s", "window + resize (PyTorch)"),
                 ("gradcam_s", "pytorch-grad-cam: forward, backward, LayerCAM maps at the input size"),
                 ("sfcam_s", "numpy PC1 + SF-CAM + OpenCV resizes + BME"), ("sca_s", "SCF + BLA"),
                 ("crf_s", "pydensecrf")],
    "torch": [("cam_sca_s", "CAMs + SCA on the device"), ("crf_s", "pydensecrf")],
}


def versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name, dist in (("torch", "torch"), ("numpy", "numpy"), ("grad-cam", "grad-cam"),
                       ("opencv", "opencv-python-headless"), ("pydensecrf", "pydensecrf2")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def agreement(ich_mask: np.ndarray, ich_scam: np.ndarray, mask: np.ndarray, pre: np.ndarray,
              scam: np.ndarray) -> dict:
    """How far ichseg's outputs are from the peer's: fused maps per tap, masks before and after
    the CRF."""
    ich_pre = (ich_scam > TH).any(0)
    a, b = ich_mask, mask.astype(bool)
    return {"scam_rel_l2": [rel_l2(ich_scam[t], scam[t]) for t in range(len(scam))],
            "mask_agreement_pre_crf": float(np.mean(ich_pre == pre.astype(bool))),
            "mask_voxels_pre_crf": [int(ich_pre.sum()), int(pre.sum())],
            "mask_agreement": float(np.mean(a == b)), "mask_voxels": [int(a.sum()), int(b.sum())],
            "dice": float(2 * np.sum(a & b) / max(int(a.sum()) + int(b.sum()), 1))}


def main() -> int:
    args = parse_args()
    args.crf = not args.no_crf
    if args.crf:
        try:
            import pydensecrf.densecrf  # noqa: F401
        except ImportError:
            print("[pseudo] pydensecrf is not installed: both pipelines run without the CRF")
            args.crf = False
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        if not args.dry_run:
            print("[pseudo] --device cuda but PyTorch sees no GPU", file=sys.stderr)
            return 1
        args.device, args.parity_slices = "cpu", 0  # the dry run tests the script on any machine
    if args.peer is None:
        args.peer = "grad-cam" if args.device == "cpu" and has_grad_cam() else "torch"
    if args.peer == "grad-cam" and not has_grad_cam():
        print("[pseudo] --peer grad-cam needs pytorch-grad-cam (pip install grad-cam)", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
        if args.peer == "grad-cam":
            import cv2

            cv2.setNumThreads(args.threads)
    if args.peer == "grad-cam":
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.blas_threads, user_api="blas")  # stays in force (not used as a context)
    load_before = os.getloadavg()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    volume, labels = args.work / "ct.nii.gz", args.work / "labels.csv"
    hu = bs.write_nifti(volume, bs.make_volume(args.size, args.slices))
    labels.write_text("slice,label\n" + "".join(f"{z},1\n" for z in range(args.slices)))
    nets, paths = export_classifiers(args, args.work)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else bs.machine()

    peer = gradcam_pseudo if args.peer == "grad-cam" else torch_pseudo
    peer(nets, hu[:min(2, len(hu))], args)  # warm-up (allocator, cuDNN, OpenBLAS threads)
    cmd, out = ichseg_command(args, paths, volume, labels, args.work)
    if not args.ichseg.is_file():
        print(f"[pseudo] no ichseg binary at {args.ichseg}: build it (cargo build --release)", file=sys.stderr)
    # Peer and ichseg alternate, so that both see the same share of a busy machine.
    runs, loads = {"peer": [], "ichseg": []}, []
    for _ in range(args.repeat):
        mask, t, scam, pre = peer(nets, hu, args)
        runs["peer"].append(t)
        if args.ichseg.is_file() and (i := run_ichseg(cmd, out)) is not None:
            runs["ichseg"].append(i)
        loads.append(os.getloadavg())
    ref = median(runs["peer"])
    print(f"[pseudo] {args.peer} {args.device}: {ref['total_s']:.3f} s per volume "
          + ", ".join(f"{k} {v:.3f}" for k, v in ref.items() if k != "total_s"))
    ok = len(runs["ichseg"]) == args.repeat
    par = parity(args, paths, args.work) if args.parity_slices and ok else None
    res = {"parity": par, "device": args.device, "card": card, "peer": args.peer, "versions": versions(),
           "crf": args.crf, "torch_s": ref, "load_avg": [load_before, *loads], "runs": runs,
           "command": "python scripts/bench_pseudo.py " + shlex.join(sys.argv[1:]),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if ok:
        ich = res["ichseg_s"] = median(runs["ichseg"])
        report = json.loads(out["report"].read_text())
        res["cam_device"] = report.get("cam_device", "?")
        if report.get("taps_on_device"):  # the GPU kernels read the networks' outputs in place
            res["cam_device"] += ", taps read in place"
        res.update(agreement(*ichseg_outputs(out), mask, pre, scam))
        print(f"[pseudo] ichseg {args.device}: {ich['total_s']:.3f} s per volume (load {ich['load_s']:.2f} s); "
              f"ratio ichseg/{args.peer} {ich['total_s'] / ref['total_s']:.2f}; masks agree "
              f"{100 * res['mask_agreement']:.3f} % (before the CRF {100 * res['mask_agreement_pre_crf']:.3f} %); "
              f"SCAM rel L2 {', '.join(f'{v:.2e}' for v in res['scam_rel_l2'])}")
    print(f"[pseudo] load average (1, 5, 15 min): before {load_before}, after each repeat {loads}")
    (args.out_dir / "bench_pseudo.json").write_text(json.dumps(res, indent=1))
    (args.out_dir / "bench_pseudo.md").write_text(markdown(args, res))
    ok = ok and (par is None or par.get("ok", False))
    return 0 if ok or args.dry_run else 1


def stage_line(name: str, times: dict, stages: list) -> str:
    parts = [f"{label} {times[k]:.3f}" for k, label in stages if k in times]
    return f"- {name}: " + "; ".join(parts) + f" (total {times['total_s']:.3f})"


def markdown(args, r: dict) -> str:
    tag = f"bench_pseudo_{args.device}"
    v = r["versions"]
    peer = PEERS[r["peer"]].format(**v) + (f" + pydensecrf2 {v['pydensecrf']} (CRF, on the CPU)" if r["crf"] else "")
    crf = "with the dense CRF" if r["crf"] else ("without the dense CRF (--no-crf)" if args.no_crf
                                                  else "without the dense CRF (pydensecrf missing)")
    where = "CPU" if args.device == "cpu" else r["card"]
    t_peer = r["torch_s"]["total_s"]
    lines = [f"<!-- {tag}:begin -->", f"## Pseudo-labelling: ichseg vs a Python pipeline ({where})", "",
             f"Volume {args.size}x{args.size}x{args.slices} (synthetic head CT), every slice labelled positive; "
             f"classifiers {args.archs} (seeded random weights), {args.input}x{args.input} input, taps layer1 + "
             f"layer2, SF-CAM, BME, SCF (c {SCF_C}, w {SCF_W}), BLA (OR, TH {TH}), {crf}; batch {args.batch}; "
             f"{args.threads or 'all'} thread(s); median of {args.repeat} after a warm-up; per volume = the "
             f"labelling of the volume in memory (ichseg: report `timings.total_s`).", "",
             f"Peer (`--peer {r['peer']}`): {peer}.", "",
             "| engine | per volume (s) | per slice (s) | ichseg / peer |", "|---|---:|---:|---:|",
             f"| peer ({r['peer']}) | {t_peer:.3f} | {t_peer / args.slices:.3f} | 1.00 |"]
    if "ichseg_s" in r:
        i = r["ichseg_s"]
        ratio = i["total_s"] / t_peer
        lines.append(f"| ichseg ({args.device}) | {i['total_s']:.3f} | {i['total_s'] / args.slices:.3f} | {ratio:.2f} |")
        verdict = (f"ichseg is faster than the peer ({1 / ratio:.2f}x)" if ratio < 1
                   else f"ichseg is slower than the peer ({ratio:.2f}x the peer's time)")
        lines += ["", f"**{verdict}.** Stage times, seconds per volume:", "",
                  stage_line(f"ichseg (CAMs on {r.get('cam_device', '?')})", i, STAGES["ichseg"]), stage_line(f"peer ({r['peer']})", r["torch_s"], STAGES[r["peer"]]),
                  "", f"ichseg model load + gradient graphs + plans: {i['load_s']:.2f} s (process wall "
                  f"{i['wall_s']:.2f} s, NIfTI read/write and the fused-map output included).", "",
                  f"Agreement: fused maps (SCAM) relative L2 per tap "
                  f"{', '.join(f'{x:.2e}' for x in r['scam_rel_l2'])}; masks before the CRF agree on "
                  f"{100 * r['mask_agreement_pre_crf']:.4f} % of voxels ({r['mask_voxels_pre_crf'][0]} vs "
                  f"{r['mask_voxels_pre_crf'][1]} mask voxels), after the CRF on {100 * r['mask_agreement']:.4f} % "
                  f"({r['mask_voxels'][0]} vs {r['mask_voxels'][1]}; Dice {r['dice']:.4f})."]
    if r.get("parity"):
        p = r["parity"]
        if "strict" in p:
            lines += ["", f"Parity, ichseg CUDA vs ichseg CPU on {args.parity_slices} slices (fused CAM maps relative L2; "
                      f"masks agreeing): strict FP32 {p['strict']['cam_rel_l2']:.2e}, "
                      f"{100 * p['strict']['mask_agreement']:.3f} %; default (TF32) {p['default']['cam_rel_l2']:.2e}, "
                      f"{100 * p['default']['mask_agreement']:.3f} % ({'pass' if p['ok'] else 'FAIL'}: <= 1e-3, >= 99.9 %)."]
        else:
            lines += ["", f"Parity: FAIL ({p.get('why')})"]
    loads = "; ".join(", ".join(f"{x:.2f}" for x in load) for load in r["load_avg"])
    per_run = ", ".join(f"{p['total_s']:.1f} / {i['total_s']:.1f}" for p, i in zip(r["runs"]["peer"], r["runs"]["ichseg"]))
    lines += ["", f"- Machine: {bs.machine() if args.device == 'cpu' else r['card']}",
              f"- Load average (1, 5, 15 min) at the start and after each repeat: {loads}. Other processes "
              "shared the CPU: times carry that noise. Peer and ichseg alternate (peer, ichseg, peer, ...) "
              f"so both see the same load; per repeat, peer / ichseg seconds: {per_run}.",
              f"- Versions: Python {v['python']}, torch {v['torch']}, numpy {v['numpy']}, grad-cam {v['grad-cam']}, "
              f"opencv {v['opencv']}, pydensecrf2 {v['pydensecrf']}",
              f"- Date: {r['date']}; command: `{r['command']}`", f"<!-- {tag}:end -->"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
