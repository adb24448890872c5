#!/usr/bin/env python3
"""Times pseudo-labelling of a CT volume: `ichseg pseudo-label` against the same pipeline in
PyTorch, same weights, same volume, same run.

Classifiers: torchvision ResNet34 and ResNet50 (2 logits, seeded random weights, BatchNorm
statistics randomised so activations are not trivial), 3-channel 384x384 input, taps layer1 and
layer2 (their last ReLU outputs), exported with the METHOD.md section 8 metadata. Volume: the
synthetic 512x512x32 head CT of scripts/bench_segment.py. Every slice is labelled positive
(a labels CSV), so every stage runs on every slice.

(a) PyTorch (``--device`` cpu or cuda, eager): per batch of slices, window -> bilinear resize ->
    forward with hooks -> autograd of the bleed logit to both taps -> LayerCAM and PC1
    (covariance + eigh, oriented by LayerCAM) -> SF-CAM (with the layer-1 tanh amplification)
    -> bilinear to the native grid; then BME over the two models, SCF (c 2, w 0.5), BLA (OR,
    TH 0.2) and, when pydensecrf is importable and --crf is on, the dense CRF per slice on the
    CPU (numpy + pydensecrf: the paper's tool). Timed per volume with the volume already in
    memory (on the GPU for cuda), synchronised.
(b) ``ichseg pseudo-label --classifier R34 --classifier R50 CT -o OUT --labels CSV --device D
    --report R.json``: the report's ``timings.total_s`` (the labelling of the volume in memory)
    is compared with (a); model load + gradient graphs + plans are reported apart.

Both run with the CRF or both without (without when pydensecrf is missing). The masks are
compared voxel by voxel. Writes ``--out-dir``/bench_pseudo.json and bench_pseudo.md (a section
for docs/BENCHMARKS.md). --dry-run: tiny sizes (ResNet18 at 64x64, 2 slices of 96x96).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
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
    p.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench-pseudo-out"))
    p.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/ichseg-pseudo-work"))
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--input", type=int, default=384)
    p.add_argument("--archs", default="resnet34,resnet50")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both (0 = all cores)")
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


def torch_pseudo(nets, hu: np.ndarray, args) -> tuple[np.ndarray, dict]:
    import torch
    import torch.nn.functional as F

    dev = torch.device(args.device)
    level, width = bs.WINDOW
    lo = level - width / 2
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
            x = ((vol[s:s + args.batch] - lo) / width).clamp(0, 1)[:, None]
            x = F.interpolate(x, size=(args.input, args.input), mode="bilinear", align_corners=False)
            logits = net(x.expand(-1, 3, -1, -1).contiguous())
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
    t_cam = time.perf_counter() - t0
    if args.crf:
        mask = crf(hu, mask)
    return mask, {"total_s": time.perf_counter() - t0, "cam_sca_s": t_cam}


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


def run_ichseg(args, paths, volume, labels, work: pathlib.Path) -> dict | None:
    if not args.ichseg.is_file():
        print(f"[pseudo] no ichseg binary at {args.ichseg}: build it (cargo build --release)", file=sys.stderr)
        return None
    out, report = work / "ichseg_pseudo.nii.gz", work / "ichseg_pseudo.json"
    cmd = [str(args.ichseg), "pseudo-label", *sum((["--classifier", str(p)] for p in paths), []), str(volume),
           "-o", str(out), "--labels", str(labels), "--device", args.device, "--threads", str(args.threads),
           "--batch", str(args.batch), "--report", str(report), "--quiet"] + (["--no-crf"] if not args.crf else [])
    runs = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"[pseudo] ichseg failed: {' '.join(cmd)}\n{proc.stderr}", file=sys.stderr)
            return None
        rep = json.loads(report.read_text())
        t = rep["timings"]
        runs.append({"total_s": t["total_s"], "load_s": t["load_s"], "wall_s": time.perf_counter() - t0,
                     "inference_s": t["inference_s"], "cam_s": t["cam_s"], "fusion_s": t["fusion_s"],
                     "crf_s": t["crf_s"]})
    res = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    res["cam_device"] = rep.get("cam_device", "?")
    res["mask"] = bs.read_mask(out)
    return res


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
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    volume, labels = args.work / "ct.nii.gz", args.work / "labels.csv"
    hu = bs.write_nifti(volume, bs.make_volume(args.size, args.slices))
    labels.write_text("slice,label\n" + "".join(f"{z},1\n" for z in range(args.slices)))
    nets, paths = export_classifiers(args, args.work)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else bs.machine()

    torch_pseudo(nets, hu[:min(2, len(hu))], args)  # warm-up (cuDNN, allocator)
    times, mask = [], None
    for _ in range(args.repeat):
        mask, t = torch_pseudo(nets, hu, args)
        times.append(t)
    ref = {k: statistics.median(t[k] for t in times) for k in times[0]}
    print(f"[pseudo] PyTorch {args.device}: {ref['total_s']:.3f} s per volume (CAM+SCA {ref['cam_sca_s']:.3f} s)")
    ich = run_ichseg(args, paths, volume, labels, args.work)
    par = parity(args, paths, args.work) if args.parity_slices and ich is not None else None
    res = {"parity": par,"device": args.device, "card": card, "torch": torch.__version__, "crf": args.crf, "torch_s": ref,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if ich is not None:
        res["ichseg_s"] = {k: v for k, v in ich.items() if k != "mask"}
        res["mask_agreement"] = float(np.mean(ich["mask"] == mask.astype(bool)))
        res["mask_voxels"] = [int(ich["mask"].sum()), int(mask.sum())]
        print(f"[pseudo] ichseg {args.device}: stages (s) inference {ich['inference_s']:.3f}, CAM on "
              f"{ich['cam_device']} {ich['cam_s']:.3f}, fusion {ich['fusion_s']:.3f}, CRF {ich['crf_s']:.3f}")
        print(f"[pseudo] ichseg {args.device}: {ich['total_s']:.3f} s per volume (load {ich['load_s']:.2f} s); "
              f"ratio ichseg/PyTorch {ich['total_s'] / ref['total_s']:.2f}; masks agree "
              f"{100 * res['mask_agreement']:.3f} %")
    (args.out_dir / "bench_pseudo.json").write_text(json.dumps(res, indent=1))
    (args.out_dir / "bench_pseudo.md").write_text(markdown(args, res))
    ok = ich is not None and (par is None or par.get("ok", False))
    return 0 if ok or args.dry_run else 1


def markdown(args, r: dict) -> str:
    tag = f"bench_pseudo_{args.device}"
    crf = "with the dense CRF (pydensecrf for PyTorch)" if r["crf"] else "without the dense CRF (pydensecrf missing)"
    lines = [f"<!-- {tag}:begin -->", f"## Pseudo-labelling: ichseg vs PyTorch ({args.device}, {r['card']})", "",
             f"Volume {args.size}x{args.size}x{args.slices}, every slice labelled positive; classifiers {args.archs} "
             f"(seeded random weights), {args.input}x{args.input} input, taps layer1 + layer2, SF-CAM, BME, SCF, BLA, "
             f"{crf}; batch {args.batch}; median of {args.repeat}.", "",
             "| engine | per volume (s) | ichseg / PyTorch |", "|---|---:|---:|",
             f"| PyTorch {r['torch']} eager | {r['torch_s']['total_s']:.3f} | 1.00 |"]
    if "ichseg_s" in r:
        i = r["ichseg_s"]
        lines.append(f"| ichseg | {i['total_s']:.3f} | {i['total_s'] / r['torch_s']['total_s']:.2f} |")
        lines += ["", f"ichseg model load + gradient graphs + plans: {i['load_s']:.2f} s (process wall "
                  f"{i['wall_s']:.2f} s). Masks agree on {100 * r['mask_agreement']:.3f} % of voxels "
                  f"({r['mask_voxels'][0]} vs {r['mask_voxels'][1]} mask voxels).", "",
                  f"ichseg stages (s): inference {i['inference_s']:.3f}, CAM on {i['cam_device']} {i['cam_s']:.3f}, "
                  f"fusion {i['fusion_s']:.3f}, CRF {i['crf_s']:.3f}."]
    if r.get("parity"):
        p = r["parity"]
        if "strict" in p:
            lines += ["", f"Parity, ichseg CUDA vs ichseg CPU on {args.parity_slices} slices (fused CAM maps relative L2; "
                      f"masks agreeing): strict FP32 {p['strict']['cam_rel_l2']:.2e}, "
                      f"{100 * p['strict']['mask_agreement']:.3f} %; default (TF32) {p['default']['cam_rel_l2']:.2e}, "
                      f"{100 * p['default']['mask_agreement']:.3f} % ({'pass' if p['ok'] else 'FAIL'}: <= 1e-3, >= 99.9 %)."]
        else:
            lines += ["", f"Parity: FAIL ({p.get('why')})"]
    lines += ["", f"- Date: {r['date']}; command: `python scripts/bench_pseudo.py --device {args.device}`",
              f"<!-- {tag}:end -->"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
