"""Batched data augmentation on torch tensors [B, C, H, W] of windowed slices in [0, 1].

Classifier (the paper, "Implementation details": horizontal flipping, translation, scaling,
rotation, colour transformations, blurring and distortion; the magnitudes are not given, these
are our choices, see ``ClassifierAugment``) and segmentation (horizontal and vertical flips,
applied to image and mask alike; optionally ``Appearance``, which varies the image only).
Randomness comes from an explicit ``torch.Generator`` so a seeded run is reproducible.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F


def _u(g, n, lo, hi, device):
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _bern(g, n, p, device):
    return torch.rand(n, generator=g, device=device) < p


@dataclasses.dataclass
class ClassifierAugment:
    p_flip: float = 0.5            # horizontal flip
    p_affine: float = 0.8          # rotation, translation, scaling together
    rotate_deg: float = 15.0       # uniform in +-rotate_deg
    translate: float = 0.08        # fraction of the image size, per axis
    scale: tuple = (0.9, 1.1)
    p_distort: float = 0.3         # smooth random displacement (elastic-like)
    distort: float = 0.03          # displacement amplitude, fraction of the half-size
    p_colour: float = 0.5          # brightness / contrast
    brightness: float = 0.06       # additive, +-
    contrast: tuple = (0.85, 1.15)  # multiplicative around the slice mean
    p_blur: float = 0.2
    blur_sigma: tuple = (0.3, 1.0)  # Gaussian sigma in pixels

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        dev = x.device
        flip = _bern(g, b, self.p_flip, dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        # affine + distortion in one resampling (bilinear, zeros outside = air after windowing)
        ang = _u(g, b, -self.rotate_deg, self.rotate_deg, dev) * math.pi / 180.0
        sc = _u(g, b, self.scale[0], self.scale[1], dev)
        tx = _u(g, b, -self.translate, self.translate, dev) * 2.0
        ty = _u(g, b, -self.translate, self.translate, dev) * 2.0
        use = _bern(g, b, self.p_affine, dev)
        ang, sc = torch.where(use, ang, 0.0), torch.where(use, sc, 1.0)
        tx, ty = torch.where(use, tx, 0.0), torch.where(use, ty, 0.0)
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, (b, 1, h, w), align_corners=False)
        dis = _bern(g, b, self.p_distort, dev)
        if bool(dis.any()):
            coarse = (torch.rand((b, 2, 5, 5), generator=g, device=dev) * 2 - 1) * self.distort
            field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
            grid = grid + (field * dis[:, None, None, None]).permute(0, 2, 3, 1)
        moved = use | dis
        if bool(moved.any()):
            warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            x = torch.where(moved[:, None, None, None], warped, x)
        col = _bern(g, b, self.p_colour, dev)
        x = _contrast_brightness(x, col, self.contrast, self.brightness, g).clamp(0.0, 1.0)
        blur = _bern(g, b, self.p_blur, dev)
        if bool(blur.any()):
            sig = _u(g, b, *self.blur_sigma, dev)
            x = torch.where(blur[:, None, None, None], gaussian_blur(x, sig), x)
        return x


def _contrast_brightness(x, use, contrast, brightness, g):
    """The samples ``use`` marks with a contrast factor around their mean, then a brightness offset."""
    b, dev = x.shape[0], x.device
    c = torch.where(use, _u(g, b, *contrast, dev), 1.0)[:, None, None, None]
    br = torch.where(use, _u(g, b, -brightness, brightness, dev), 0.0)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean + br


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur (sigma [B] in pixels, kernel radius 3 sigma max)."""
    b, c, h, w = x.shape
    r = max(1, int(math.ceil(3.0 * float(sigma.max()))))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None, :] ** 2) / (2.0 * sigma[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)  # [B, 2r+1]
    xr = x.reshape(1, b * c, h, w)
    kk = k.repeat_interleave(c, 0)
    xr = F.conv2d(F.pad(xr, (r, r, 0, 0), mode="replicate"), kk[:, None, None, :], groups=b * c)
    xr = F.conv2d(F.pad(xr, (0, 0, r, r), mode="replicate"), kk[:, None, :, None], groups=b * c)
    return xr.reshape(b, c, h, w)


def flips(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, p_h=0.5, p_v=0.5):
    """Horizontal then vertical flips, each with its probability, applied to image and mask."""
    b = x.shape[0]
    fh = _bern(g, b, p_h, x.device)[:, None, None, None]
    x = torch.where(fh, x.flip(-1), x)
    y = torch.where(fh[:, 0], y.flip(-1), y)
    fv = _bern(g, b, p_v, x.device)[:, None, None, None]
    x = torch.where(fv, x.flip(-2), x)
    y = torch.where(fv[:, 0], y.flip(-2), y)
    return x, y


@dataclasses.dataclass
class Appearance:
    """What a change of scanner does to a slice, not to its anatomy: HU calibration (brightness
    and contrast), noise and the reconstruction kernel (blur or sharpening).  The image only; the
    mask stays.  The ranges, in HU of the usual 130 HU window, cover the ``wide`` phantom profile's
    acquisition draws (docs/PHANTOMS.md).  Measured on the ``shifted`` family and not adopted
    (docs/RESULTS.md, "Appearance augmentation")."""
    p: float = 0.8                  # share of the slices changed at all
    brightness: float = 12 / 130    # additive, +-: a calibration offset of up to 12 HU
    contrast: tuple = (0.9, 1.1)    # multiplicative around the slice mean: slope and grey/white contrast
    noise: tuple = (0.0, 12 / 130)  # Gaussian, sd uniform in this range: up to 12 HU
    p_blur: float = 0.25            # a soft kernel
    blur_sigma: tuple = (0.3, 1.0)
    p_sharpen: float = 0.25         # a sharp kernel: unsharp masking (not with the blur)
    sharpen: tuple = (0.3, 1.0)     # amount; the mask's Gaussian has sigma 1 pixel

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        dev = x.device
        use = _bern(g, b, self.p, dev)
        kernel = torch.rand(b, generator=g, device=dev)
        blur = use & (kernel < self.p_blur)
        sharp = use & (kernel >= self.p_blur) & (kernel < self.p_blur + self.p_sharpen)
        y = x
        if bool(blur.any()):
            y = torch.where(blur[:, None, None, None], gaussian_blur(y, _u(g, b, *self.blur_sigma, dev)), y)
        if bool(sharp.any()):
            amount = _u(g, b, *self.sharpen, dev)[:, None, None, None]
            crisp = y + amount * (y - gaussian_blur(y, torch.ones(b, device=dev)))
            y = torch.where(sharp[:, None, None, None], crisp, y)
        y = _contrast_brightness(y, use, self.contrast, self.brightness, g)
        sd = torch.where(use, _u(g, b, *self.noise, dev), 0.0)[:, None, None, None]
        y = y + sd * torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype)
        return y.clamp(0.0, 1.0)
