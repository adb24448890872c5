"""Acquisition and anatomy variation beyond the standard phantoms (opt-in profiles).

``standard`` is the generator as it always was: no draw here, and byte-identical files.
``wide`` widens what a classifier trained on phantoms should not depend on: head size and
shape, pose, slice thickness 1-5 mm, reconstruction kernel, noise, HU calibration, beam
hardening (cupping, stronger skull-base streaks), motion, and more small bleeds.
``shifted`` is a held-out family for testing a change of data: its ranges lie mostly outside
``standard``'s (thin slices, smaller and larger heads, more noise, a sharp kernel, lower
grey/white contrast, older bleeds), and partly outside ``wide``'s too (the tissue and bleed
densities), so models trained on either meet something new.

The draws come from their own random stream, so the anatomy and bleeds that the standard
stream draws stay the same volume for volume; a profile only overrides parameters after they
are drawn.  Ranges are documented in docs/PHANTOMS.md ("Variation profiles").
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

PROFILES = ("standard", "wide", "shifted")
KERNELS = ("soft", "standard", "sharp")


def _pick(rng, ranges):
    """A uniform draw from one of several (lo, hi) ranges, chosen with probability ~ width."""
    widths = np.array([hi - lo for lo, hi in ranges], float)
    lo, hi = ranges[int(rng.choice(len(ranges), p=widths / widths.sum()))]
    return float(rng.uniform(lo, hi))


def draw(profile: str, seed: int, index: int, nz_standard: int):
    """The profile's parameters for volume ``index`` of series ``seed``; None for ``standard``.

    ``nz_standard`` is the slice count the standard stream drew for 5 mm slices; thinner slices
    cover the same height with proportionally more of them."""
    if profile == "standard":
        return None
    if profile not in PROFILES:
        raise ValueError(f"unknown phantom profile {profile!r} (one of {', '.join(PROFILES)})")
    rng = np.random.default_rng([int(seed), int(index), 0x5CA7])
    v = {"profile": profile}
    if profile == "wide":
        v["slice_mm"] = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0]))
        v["head_scale"] = float(rng.uniform(0.82, 1.16))
        v["aspect"] = float(rng.uniform(0.88, 1.12))  # LR semi-axis / its usual share of AP
        v["skull_t"] = float(rng.uniform(3.0, 9.0))
        v["scalp_t"] = float(rng.uniform(2.0, 9.0))
        v["yaw"] = float(rng.uniform(-20.0, 20.0))
        v["pitch"] = float(rng.uniform(-10.0, 22.0))
        v["roll"] = float(rng.uniform(-8.0, 8.0))
        v["shift"] = (float(rng.uniform(-20, 20)), float(rng.uniform(-20, 15)))
        v["kernel"] = str(rng.choice(KERNELS))
        v["noise"] = float(rng.uniform(2.0, 14.0))
        v["hu_offset"] = float(rng.uniform(-12.0, 12.0))
        v["hu_slope"] = float(rng.uniform(0.97, 1.03))
        v["cupping"] = float(rng.uniform(0.0, 10.0))
        v["streak"] = float(rng.uniform(10.0, 60.0))
        v["motion_p"] = 0.25
        v["small_bleeds"] = 0.3  # share of IPH and SAH sites shrunk to 40-80 %
    else:  # shifted
        v["slice_mm"] = float(rng.choice([1.5, 2.0, 2.5, 3.0]))
        v["head_scale"] = _pick(rng, [(0.84, 0.92), (1.06, 1.14)])
        v["aspect"] = _pick(rng, [(0.9, 0.95), (1.05, 1.1)])
        v["skull_t"] = _pick(rng, [(3.0, 4.0), (7.0, 8.5)])
        v["scalp_t"] = float(rng.uniform(2.0, 8.0))
        v["yaw"] = _pick(rng, [(-16.0, -8.0), (8.0, 16.0)])
        v["pitch"] = float(rng.uniform(8.0, 20.0))
        v["roll"] = float(rng.uniform(-6.0, 6.0))
        v["shift"] = (float(rng.uniform(-15, 15)), float(rng.uniform(-15, 10)))
        v["kernel"] = "sharp"
        v["noise"] = float(rng.uniform(8.0, 13.0))
        v["hu_offset"] = _pick(rng, [(-10.0, -4.0), (4.0, 10.0)])
        v["hu_slope"] = float(rng.uniform(0.98, 1.02))
        v["cupping"] = float(rng.uniform(3.0, 8.0))
        v["streak"] = float(rng.uniform(30.0, 50.0))
        v["motion_p"] = 0.2
        v["small_bleeds"] = 0.3
        v["gm"] = float(rng.uniform(31.0, 37.0))  # lower grey/white contrast than either profile
        v["wm"] = float(rng.uniform(21.0, 26.0))
        v["bleed_hu_shift"] = float(rng.uniform(-14.0, -6.0))  # older, less dense blood
    v["nz"] = max(1, int(round(nz_standard * 5.0 / v["slice_mm"])))
    if v["kernel"] == "soft":
        v["blur_mm"], v["sharpen"], v["noise_corr_mm"] = float(rng.uniform(0.7, 1.1)), 0.0, float(rng.uniform(0.8, 1.2))
    elif v["kernel"] == "standard":
        v["blur_mm"], v["sharpen"], v["noise_corr_mm"] = float(rng.uniform(0.35, 0.75)), 0.0, float(rng.uniform(0.45, 0.8))
    else:
        v["blur_mm"], v["sharpen"], v["noise_corr_mm"] = float(rng.uniform(0.3, 0.5)), float(rng.uniform(0.5, 1.2)), float(rng.uniform(0.25, 0.45))
    v["motion"] = None
    if rng.random() < v["motion_p"]:
        run = max(1, int(round(rng.uniform(3.0, 15.0) / v["slice_mm"])))  # 3-15 mm of the scan
        start = int(rng.integers(0, max(1, v["nz"] - run + 1)))
        v["motion"] = {"start": start, "stop": start + run, "angle": float(rng.uniform(1.0, 4.0)),
                       "shift_mm": float(rng.uniform(1.0, 4.0)), "alpha": float(rng.uniform(0.2, 0.5))}
    v["shrink"] = rng.uniform(0.4, 0.8, 3).tolist()
    v["shrink_on"] = (rng.random(3) < v["small_bleeds"]).tolist()
    return v


def apply_head(p, v):
    """Overrides the drawn head, pose and tissue parameters with the profile's (before the bleed
    sites are drawn, so they are placed in the head that is rendered)."""
    s = v["head_scale"]
    p["Au"] = 66.0 * s * v["aspect"]
    p["Av"] = 84.0 * s
    p["vertex"] = 70.0 * s
    for key in ("skull_t", "scalp_t", "noise", "blur_mm", "streak"):
        p[key] = v[key]
    p["yaw"], p["pitch"], p["roll"] = (math.radians(v[k]) for k in ("yaw", "pitch", "roll"))
    p["shift"] = v["shift"]
    for key in ("gm", "wm"):
        if key in v:
            p[key] = v[key]


def apply_sites(sites, v):
    """Shrinks some IPH and SAH sites (small bleeds) and shifts bleed densities."""
    for i, d in enumerate(sites):
        if d["kind"] in (2, 3) and v["shrink_on"][i]:  # IPH, SAH
            f = v["shrink"][i]
            if d["kind"] == 2:
                d["r"] = tuple(max(1.5, r * f) for r in d["r"])
            else:
                d["r"], d["rw"] = max(4.0, d["r"] * f), max(3.0, d["rw"] * f)
        d["hu"] = d["hu"] + v.get("bleed_hu_shift", 0.0)


def scan(img, v, k, px, head_uv):
    """The scanner's part of slice ``k`` (HU, noiseless, already blurred): motion ghost,
    edge-enhancing kernel, cupping and calibration.  ``head_uv`` is each pixel's position in
    the head's axial frame divided by the intracranial semi-axes."""
    m = v["motion"]
    if m is not None and m["start"] <= k < m["stop"]:
        moved = ndimage.rotate(img, m["angle"], reshape=False, order=1, mode="nearest")
        moved = ndimage.shift(moved, (m["shift_mm"] / px, 0.0), order=1, mode="nearest")
        img = (1.0 - m["alpha"]) * img + m["alpha"] * moved
    if v["sharpen"] > 0:
        img = img + v["sharpen"] * (img - ndimage.gaussian_filter(img, 1.0 / px))
    if v["cupping"] > 0:
        r2 = head_uv[0] ** 2 + head_uv[1] ** 2
        soft = (img > -200) & (img < 200)
        img = img - (v["cupping"] * np.clip(1.0 - r2, 0.0, 1.0) * soft).astype(np.float32)
    return (img * v["hu_slope"] + v["hu_offset"]).astype(np.float32)
