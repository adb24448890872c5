"""Synthetic axial head-CT phantoms with hemorrhage masks, written in the BCIHM layout.

Each volume is an analytic 3D head (intracranial space, skull with diploe, scalp, skull base
with orbits, sinuses and mastoid air, grey/white matter with gyri and sulci, ventricles,
cisterns, deep grey nuclei, cerebellum and brainstem, falx, calcifications) defined in a head
frame (u: patient left, v: anterior, w: superior, mm).  It is sampled on a rotated and
shifted scanner grid, averaged over sub-levels of each 5 mm slice (partial volume), blurred
in plane, given correlated noise and skull-base streaks.  About half of the volumes get 1-3
hemorrhage sites (intraparenchymal, subdural, epidural, intraventricular, subarachnoid).

Usage (from training/, or with PYTHONPATH=training)::

    python -m ichseg_training.phantom --out DIR --count N --seed S [--size 512]
        [--slices-min 24 --slices-max 36] [--jobs N] [--profile standard|wide|shifted] [--resume]

writes ``DIR/ct_scans/NNN.nii.gz``, ``DIR/masks/NNN.nii.gz`` and
``DIR/hemorrhage_diagnosis_raw_ct.csv`` (BCIHM columns, SliceNumber 1-based).
Only numpy, scipy and nibabel are needed.  See docs/PHANTOMS.md.  A run that is stopped
goes on with ``--resume`` (same settings): the volumes it finished are kept.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import pathlib
import shutil

import numpy as np
from scipy import ndimage

try:
    from . import variation
except ImportError:  # run as a file (python phantom.py): its folder is on the path
    import variation

SUBTYPES = ("Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural")
IVH, IPH, SAH, EDH, SDH = 1, 2, 3, 4, 5  # codes in the subtype map (index into SUBTYPES + 1)
CSV_COLUMNS = ("PatientNumber", "SliceNumber", *SUBTYPES, "No_Hemorrhage", "Fracture_Yes_No")
SLICE_MM = 5.0
HU_OFFSET = -1024  # stored = HU + 1024, scl_inter = -1024

# tissue codes of the internal label map (used by tests and hemorrhage placement)
AIR, SOFT, FAT, BONE, GM, WM, CSF, CALC, DEEP, BLOOD, EYE = range(11)

_GRID_MM = 2.0  # spacing of the coarse 3D random fields
_GRID_LO = np.array([-120.0, -130.0, -110.0], np.float32)
_GRID_N = (121, 131, 111)


@dataclasses.dataclass
class Phantom:
    """One generated volume.  Arrays are in NIfTI [x, y, z] order (x: columns, y: rows)."""

    hu: np.ndarray  # int16 HU
    mask: np.ndarray  # uint8 0/1 hemorrhage mask
    subtype_map: np.ndarray  # uint8 0 or IVH..SDH per voxel
    tissue: np.ndarray  # uint8 tissue code of the central sub-level (before blood overwrite: BLOOD)
    labels: np.ndarray  # int [nz, 5] per-slice subtype presence, SUBTYPES order
    fracture: np.ndarray  # int [nz] per-slice fracture flag
    spacing: tuple  # (px, px, slice thickness) mm: 5 mm except in the variation profiles
    affine: np.ndarray  # 4x4
    params: dict  # the drawn parameters (for documentation/debugging)

    def csv_rows(self, patient: int):
        rows = []
        for k in range(self.labels.shape[0]):
            lab = [int(x) for x in self.labels[k]]
            rows.append([patient, k + 1, *lab, int(not any(lab)), int(self.fracture[k])])
        return rows


# ----------------------------------------------------------------------------------------------
# random fields


def _fields(rng):
    """Smooth 3D random fields (zero mean, unit-ish std) on a 2 mm grid in the head frame."""

    def field(sigma_mm):
        f = rng.standard_normal(_GRID_N).astype(np.float32)
        f = ndimage.gaussian_filter(f, sigma_mm / _GRID_MM, mode="wrap", truncate=3.0)
        return f / (f.std() + 1e-6)

    def low_field(sigma_mm, step=4):
        # very smooth field: filter on a coarser grid, then interpolate up (much cheaper)
        shp = tuple(-(-s // step) + 1 for s in _GRID_N)
        f = rng.standard_normal(shp).astype(np.float32)
        f = ndimage.gaussian_filter(f, sigma_mm / (_GRID_MM * step), mode="wrap", truncate=3.0)
        f = ndimage.zoom(f, step, order=1)[: _GRID_N[0], : _GRID_N[1], : _GRID_N[2]]
        return f / (f.std() + 1e-6)

    return {"sulc": field(4.0), "shape": low_field(14.0), "tex": field(2.5)}


def _sample(f, u, v, w):
    c = [(u - _GRID_LO[0]) / _GRID_MM, (v - _GRID_LO[1]) / _GRID_MM, (w - _GRID_LO[2]) / _GRID_MM]
    return ndimage.map_coordinates(f, c, order=1, mode="nearest").astype(np.float32)


_INTERP = {}


def _interp_index(f, n, m):
    key = (f, n, m)
    if key not in _INTERP:
        x = np.clip((np.arange(n) - (f - 1) / 2.0) / f, 0, m - 1)
        i0 = np.floor(x).astype(np.intp)
        i1 = np.minimum(i0 + 1, m - 1)
        _INTERP[key] = (i0, i1, (x - i0).astype(np.float32))
    return _INTERP[key]


def _upsample(a, f, n):
    """Bilinear upsampling of a block-centred coarse image by an integer factor, cropped to n."""
    if f == 1:
        return a.astype(np.float32, copy=False)
    i0, i1, t = _interp_index(f, n, a.shape[0])
    a = a.astype(np.float32, copy=False)
    r = a[i0] * (1 - t)[:, None] + a[i1] * t[:, None]
    return r[:, i0] * (1 - t)[None, :] + r[:, i1] * t[None, :]


def _edt(mask, px, f):
    """Euclidean distance (mm) to the nearest False pixel, computed on an f-times coarser grid."""
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    if mask.all():
        return np.full(mask.shape, 1e3, np.float32)
    if f == 1:
        return ndimage.distance_transform_edt(mask, sampling=px).astype(np.float32)
    n = mask.shape[0]
    m = -(-n // f) * f
    pad = np.pad(mask, ((0, m - n), (0, m - n)), mode="edge").astype(np.float32)
    coarse = pad.reshape(m // f, f, m // f, f).mean(axis=(1, 3)) >= 0.5
    d = ndimage.distance_transform_edt(coarse, sampling=px * f)
    # shift by half a coarse pixel so that the zero level sits on the boundary
    d = np.where(coarse, d - 0.5 * px * f, 0.0)
    return np.maximum(_upsample(d, f, n), 0.0)


# ----------------------------------------------------------------------------------------------
# parameters


def _draw_params(rng, size, nz, var=None):
    """The volume's parameters from the standard stream ``rng``; a variation profile's draws
    ``var`` (``variation.draw``) override some after they are drawn, before the bleed sites."""
    p = {}
    p["size"] = size
    p["nz"] = nz
    p["slice_mm"] = var["slice_mm"] if var else SLICE_MM
    p["px"] = float(rng.uniform(0.40, 0.50) * 512.0 / size)
    s = rng.uniform(0.92, 1.06)
    p["Au"] = 66.0 * s * rng.uniform(0.95, 1.05)  # intracranial semi-axes at the widest level
    p["Av"] = 84.0 * s * rng.uniform(0.95, 1.05)
    p["vertex"] = 70.0 * s * rng.uniform(0.95, 1.05)  # inner table at the vertex (w, mm)
    p["skull_t"] = rng.uniform(4.0, 7.0)
    p["scalp_t"] = rng.uniform(3.0, 6.0)
    p["atrophy"] = rng.uniform(0.0, 1.0)  # widens sulci, ventricles
    p["vent_scale"] = 0.8 + 0.6 * p["atrophy"] * rng.uniform(0.6, 1.0)
    p["gm"] = rng.uniform(35.0, 45.0)
    p["wm"] = rng.uniform(22.0, 30.0)
    p["csf"] = rng.uniform(2.0, 12.0)
    p["table_hu"] = rng.uniform(1450.0, 1800.0)
    p["diploe_hu"] = rng.uniform(700.0, 1000.0)
    p["noise"] = rng.uniform(3.0, 8.0)
    p["blur_mm"] = rng.uniform(0.35, 0.75)
    p["yaw"] = math.radians(rng.uniform(-10.0, 10.0))
    p["pitch"] = math.radians(rng.uniform(-4.0, 14.0))
    p["roll"] = math.radians(rng.uniform(-4.0, 4.0))
    p["shift"] = (float(rng.uniform(-10, 10)), float(rng.uniform(-12, 8)))
    above_vertex = rng.uniform(-2.0, 6.0)
    p["choroid_calc"] = [bool(rng.random() < 0.75), bool(rng.random() < 0.7)]
    p["pineal_calc"] = bool(rng.random() < 0.6)
    p["falx_calc"] = bool(rng.random() < 0.2)
    p["calc_hu"] = rng.uniform(250.0, 700.0)  # before partial volume / blur: 100-400 HU after
    p["streak"] = rng.uniform(15.0, 35.0)
    if var:
        variation.apply_head(p, var)
    top = p["vertex"] + p["skull_t"] + above_vertex
    p["z0"] = float(max(top - p["slice_mm"] * nz, -92.0))  # lower edge of the first slice (w, mm)
    p["sites"] = _draw_sites(rng, p)
    if var:
        variation.apply_sites(p["sites"], var)
        p["variation"] = var
    return p


def _draw_sites(rng, p):
    if rng.random() >= 0.5:
        return []
    n = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    kinds = rng.choice([IPH, SDH, SAH, IVH, EDH], size=n, p=[0.33, 0.25, 0.2, 0.12, 0.1])
    w_lo = max(p["z0"] + 8.0, -35.0)
    w_hi = min(p["z0"] + p["slice_mm"] * p["nz"] - 8.0, p["vertex"] - 12.0)
    sites = []
    for kind in kinds:
        kind = int(kind)
        d = {"kind": kind}
        side = float(rng.choice([-1.0, 1.0]))
        d["side"] = side
        if kind == IPH:
            loc = rng.choice(["ganglia", "thalamus", "lobar", "cerebellum"], p=[0.35, 0.15, 0.4, 0.1])
            r = float(np.exp(rng.uniform(np.log(3.0), np.log(28.0))))
            if loc == "ganglia":
                c = (side * rng.uniform(15, 25), rng.uniform(-2, 12), rng.uniform(-5, 12))
            elif loc == "thalamus":
                c = (side * rng.uniform(8, 14), rng.uniform(-16, -8), rng.uniform(-2, 10))
                r = min(r, 14.0)
            elif loc == "cerebellum":
                c = (side * rng.uniform(10, 30), -p["Av"] * 0.6, rng.uniform(-50, -35))
                r = min(r, 16.0)
            else:
                th = rng.uniform(0, 2 * np.pi)
                rad = rng.uniform(0.35, 0.65)
                cw = rng.uniform(max(w_lo, -10.0), max(w_hi, -5.0))
                c = (rad * p["Au"] * np.cos(th), rad * p["Av"] * np.sin(th), cw)
            rw = float(np.clip(r * rng.uniform(0.6, 1.0), 2.5, 16.0))
            d.update(loc=str(loc), c=c, r=(r * rng.uniform(0.8, 1.1), r * rng.uniform(0.9, 1.25), rw),
                     hu=rng.uniform(58.0, 88.0), rim=rng.uniform(0.15, 0.6),
                     lob=rng.uniform(0.05, 0.22, 3), ph=rng.uniform(0, 2 * np.pi, 3),
                     ivh=bool(loc in ("ganglia", "thalamus") and r > 12 and rng.random() < 0.5))
        elif kind in (SDH, EDH):
            d["theta"] = float(rng.uniform(0, 2 * np.pi))
            d["cw"] = float(rng.uniform(w_lo, w_hi))
            if kind == SDH:
                d["half_arc"] = float(rng.uniform(30.0, 110.0))  # mm along the inner table
                d["hw"] = float(rng.uniform(6.0, 18.0))
                d["t"] = float(np.exp(rng.uniform(np.log(2.0), np.log(18.0))))
                chronic = rng.random() < 0.12
                d["hu"] = float(rng.uniform(30.0, 45.0) if chronic else rng.uniform(55.0, 80.0))
            else:
                d["half_arc"] = float(rng.uniform(12.0, 35.0))
                d["hw"] = float(rng.uniform(5.0, 18.0))
                d["t"] = float(rng.uniform(0.35, 0.8) * min(d["half_arc"], 30.0))
                d["hu"] = float(rng.uniform(58.0, 90.0))
                d["fracture"] = bool(rng.random() < 0.6)
        elif kind == IVH:
            d["mode"] = str(rng.choice(["layer", "cast"], p=[0.6, 0.4]))
            d["both"] = bool(rng.random() < 0.5)
            d["level"] = float(rng.uniform(-45.0, -15.0))  # scanner-y fluid level (posterior < level)
            d["hu"] = float(rng.uniform(50.0, 80.0))
            d["wr"] = (float(rng.uniform(-5, 10)), float(rng.uniform(15, 35)))
        else:  # SAH
            if rng.random() < 0.4:
                c = (rng.uniform(-8, 8), rng.uniform(-5, 10), rng.uniform(-24, -12))
            else:
                th = rng.uniform(0, 2 * np.pi)
                cw = rng.uniform(max(w_lo, -5.0), max(w_hi, 0.0))
                c = (0.8 * p["Au"] * np.cos(th), 0.8 * p["Av"] * np.sin(th), cw)
            d.update(c=c, r=float(rng.uniform(10.0, 35.0)), rw=float(rng.uniform(5.0, 18.0)),
                     hu=float(rng.uniform(50.0, 75.0)))
        sites.append(d)
    return sites


# ----------------------------------------------------------------------------------------------
# geometry helpers


def _smoothstep(x, edge0, edge1):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _ellipsoid(u, v, w, c, r, wr=None):
    if wr is not None and (wr[0] > c[2] + r[2] or wr[1] < c[2] - r[2]):
        return np.float32(9.0)  # the level misses this ellipsoid entirely
    return ((u - c[0]) / r[0]) ** 2 + ((v - c[1]) / r[1]) ** 2 + ((w - c[2]) / r[2]) ** 2


def _ventricles(p, u, v, w, fs, wr=None):
    """Implicit ventricle field: < 1 inside.  Returns (lateral+third, fourth) masks."""
    k = p["vent_scale"]
    best = np.full(u.shape, 9.0, np.float32)
    au = np.abs(u)
    parts = [  # (centre (|u|, v, w), semi-axes)
        ((7.5, 16.0, 12.0), (4.5 * k, 13.0, 9.0)),  # frontal horn
        ((10.0, -4.0, 20.0), (4.0 * k, 22.0, 6.5 * k)),  # body
        ((17.0, -28.0, 10.0), (6.0 * k, 12.0, 9.0 * k)),  # atrium
        ((19.0, -44.0, 8.0), (3.5 * k, 10.0, 5.0)),  # occipital horn
        ((26.0, -4.0, -16.0), (2.8 * k, 13.0, 3.5 * k)),  # temporal horn
    ]
    for c, r in parts:
        best = np.minimum(best, _ellipsoid(au, v, w, c, r, wr))
    # frontal horn: medial edge straight (septum) -> clip the ellipse medially
    third = _ellipsoid(u, v, w, (0.0, -2.0, 2.0), (1.8 * k, 12.0, 9.0), wr)
    lateral = (best * (1.0 + 0.12 * fs)) < 1.0
    lateral &= au > 1.2  # septum pellucidum
    lateral |= third < 1.0
    fourth = _ellipsoid(u, v, w, (0.0, -34.0, -42.0), (6.0, 4.5, 7.0), wr) < 1.0
    return lateral, fourth


def _intracranial(p, u, v, w, fshape):
    """Implicit intracranial space (< 1 inside)."""
    wc = 4.0
    up = np.clip((w - wc) / (p["vertex"] - wc), 0.0, None)
    dn = np.clip((wc - w) / (wc + 72.0), 0.0, None)
    c2 = np.clip(1.0 - up**2.2 - dn**2, 1e-4, None)
    c = np.sqrt(c2)
    au = p["Au"] * (1.0 - 0.07 * v / p["Av"])  # broader posteriorly (egg shape)
    vv = v - 6.0 * dn  # low levels shift posteriorly (posterior fossa)
    e = (np.abs(u) / (au * c)) ** 2.1 + (np.abs(vv) / (p["Av"] * c)) ** 2.1
    e = e * (1.0 + 0.035 * fshape)
    # floors of the anterior, middle and posterior fossae
    # sphenoid ridge: from the anterior clinoid (medial, posterior) to the pterion (lateral, anterior)
    v_ridge = 0.14 * p["Av"] + 0.005 * u**2
    ant = _smoothstep(v - v_ridge, 0.0, 10.0)  # 1 in the anterior fossa
    # petrous ridges: from the dorsum sellae (medial) to lateral-posterior
    v_petr = -0.05 * p["Av"] - 0.45 * np.abs(u)
    post = 1.0 - _smoothstep(v - v_petr, -6.0, 4.0)  # 1 in the posterior fossa
    mid_floor = -48.0 + 22.0 * (1.0 - _smoothstep(np.abs(u), 7.0, 17.0))  # sella/sphenoid centrally
    floor = ant * (-26.0 - 0.05 * np.abs(u)) + post * -80.0 + (1.0 - ant - post) * mid_floor
    ic = (e < 1.0) & (w > floor)
    return ic, floor, c


def _face(p, u, v, w):
    """Head outline below the brain case (face, skull base): boolean."""
    lo = np.clip((-12.0 - w) / 30.0, 0.0, 1.0)  # 0 above w=-12, 1 below -42
    a = p["Au"] + p["skull_t"] + p["scalp_t"] + 3.0 - 6.0 * lo
    b = p["Av"] + p["skull_t"] + p["scalp_t"] + 14.0 * lo
    vc = 8.0 * lo
    return (lo > 0) & ((u / a) ** 2 + ((v - vc) / b) ** 2 < 1.0)


def _mass_shift(p, u, v, w):
    """Lateral displacement (mm, +u = to the patient's left) of midline/deep structures caused by
    large space-occupying bleeds: amplitude ~ bleed size, Gaussian fall-off (sigma 45 mm)."""
    du = np.zeros(u.shape, np.float32)
    for d in p["sites"]:
        if d["kind"] == IPH:
            r = float(np.mean(d["r"][:2]))
            amp = 0.45 * max(r - 8.0, 0.0) * (1 + d["rim"])
            c = d["c"]
        elif d["kind"] in (SDH, EDH):
            amp = 0.6 * max(d["t"] - 4.0, 0.0) * min(1.0, d["half_arc"] / 40.0) * min(1.0, d["hw"] / 10.0)
            c = (0.9 * p["Au"] * math.cos(d["theta"]), 0.9 * p["Av"] * math.sin(d["theta"]), d["cw"])
        else:
            continue
        if amp <= 0 or abs(c[0]) < 3.0:
            continue
        g = np.exp(-((u - c[0]) ** 2 + (v - c[1]) ** 2 + 2.0 * (w - c[2]) ** 2) / (2 * 45.0**2))
        du -= np.float32(math.copysign(min(amp, 12.0), c[0])) * g.astype(np.float32)
    return du


# ----------------------------------------------------------------------------------------------
# rendering one sub-level


def _render_level(p, F, u, v, w, y_scan, px, coarse):
    shape = u.shape
    n = shape[0]
    hu = np.full(shape, -1000.0, np.float32)
    tis = np.zeros(shape, np.uint8)
    sub = np.zeros(shape, np.uint8)
    cf, uc, vc, wc = coarse  # random fields are smooth: sample on a coarse grid, upsample
    fs = _upsample(_sample(F["shape"], uc, vc, wc), cf, n)
    fsu = _upsample(_sample(F["sulc"], uc, vc, wc), cf, n)
    ft = _upsample(_sample(F["tex"], uc, vc, wc), cf, n)
    ef = 2 if px < 0.7 else 1  # distance transforms on a 2x coarser grid at full resolution
    wr = (float(w.min()), float(w.max()))

    def ell(c, r):
        return _ellipsoid(u, v, w, c, r, wr)

    ic, floor, cprof = _intracranial(p, u, v, w, fs)
    have_ic = bool(ic.any())
    if have_ic:
        d_in = _edt(ic, px, ef)
        d_out = _edt(~ic, px, ef)
    else:
        d_in = np.zeros(shape, np.float32)
        d_out = np.full(shape, 1e3, np.float32)
    theta = np.arctan2(v, u)
    # skull thickness: thicker frontally/occipitally and at the base, thin temporal squama
    t_sk = p["skull_t"] * (1.0 + 0.25 * np.abs(np.sin(theta)) - 0.25 * np.cos(theta) ** 2
                           * (w < 30) + 0.12 * fs)
    # frontal sinus region: tables diverge
    fsin = np.clip(1.0 - (u / 24.0) ** 2 - ((w + 4.0) / 11.0) ** 2, 0, 1) * (v > 0)
    t_sk = t_sk + 7.0 * np.sqrt(fsin)
    t_sk = np.maximum(t_sk, 2.0)
    temporalis = 5.0 * np.cos(theta) ** 2 * np.clip((45.0 - w) / 30.0, 0, 1) * (w > -40)
    t_sc = p["scalp_t"] + temporalis
    ring_bone = (d_out > 0) & (d_out <= t_sk) & ~ic
    ring_scalp = (d_out > t_sk) & (d_out <= t_sk + t_sc)
    face = _face(p, u, v, w)
    head = ring_bone | ring_scalp | ic | face
    if not head.any():
        return hu, tis, sub, np.zeros(shape, bool)

    # soft tissue everywhere in the head first (scalp / face / neck)
    d_skin = _edt(head, px, ef)
    hu[head] = 40.0
    tis[head] = SOFT
    fat = head & (d_skin > 1.2) & (d_skin < 0.55 * t_sc + 1.0) & ~face
    fat |= face & (d_skin > 1.0) & (d_skin < 4.0)
    hu[fat] = -85.0
    tis[fat] = FAT

    Av = p["Av"]

    def cav(c, r, wr):
        return (((u - c[0]) / r[0]) ** 2 + ((v - c[1]) / r[1]) ** 2 < 1.0) & (w > wr[0]) & (w < wr[1])

    frontal = ring_bone & (fsin > 0.35 + 0.1 * fs) & (d_out > 1.8) & (d_out < t_sk - 1.8)
    Z = np.zeros(shape, bool)
    base = petrous = air = walls = orbit = globe = cells = mastoid = spine = canal = Z
    if face.any():  # skull base / face levels only
        # skull base: thick bone around the cranial floor inside the face outline (w -70..-12)
        lo = np.clip((-12.0 - w) / 30.0, 0.0, 1.0)
        base = face & ~ic & (w > -72.0) & (w < -12.0) & (d_out < t_sk + 1.0 + 3.0 * lo) & (d_skin > t_sc * 0.7)
        # petrous ridges: oblique dense bars between the middle and posterior fossae
        petrous = np.zeros(shape, bool)
        for sgn in (-1, 1):
            a0 = np.array([sgn * 52.0, -0.32 * Av]); a1 = np.array([sgn * 14.0, -0.02 * Av])
            dvec = a1 - a0; L = np.hypot(*dvec); dvec = dvec / L
            t = np.clip((u - a0[0]) * dvec[0] + (v - a0[1]) * dvec[1], 0, L)
            dist = np.hypot(u - a0[0] - t * dvec[0], v - a0[1] - t * dvec[1])
            petrous |= (dist < 5.5 + 2.0 * fs) & (w > -56.0) & (w < -27.0 - 0.08 * t)
        base |= petrous & (face | ic)
        # air cavities: ethmoid/nasal, sphenoid, maxillary, frontal (inside a thickened frontal bone)
        air = cav((0, 0.62 * Av, 0), (11.0, 0.2 * Av), (-62, -24))
        air |= cav((0, 0.3 * Av, 0), (13.0, 10.0), (-52, -30))
        for sgn in (-1, 1):
            air |= cav((sgn * 24.0, 0.55 * Av, 0), (13.0, 16.0), (-100, -56))
        air |= cav((0, 0.62 * Av, 0), (6.0, 0.18 * Av), (-100, -56))  # nasal cavity
        air |= cav((0, 0.28 * Av, 0), (9.0, 5.0), (-100, -62))  # nasopharynx
        air &= face
        walls = np.zeros(shape, bool)
        orbit = np.zeros(shape, bool)
        globe = np.zeros(shape, bool)
        for sgn in (-1, 1):
            ow = np.clip(1 - ((w + 36.0) / 14.0) ** 2, 0, 1)
            orb = ((u - sgn * 30.0) / (15.0 * ow + 1e-3)) ** 2 + ((v - 0.8 * Av) / (22.0 * ow + 1e-3)) ** 2 < 1.0
            orbit |= orb & (ow > 0) & face
            globe |= face & (ell((sgn * 31.0, 0.97 * Av, -36.0), (12.0, 12.0, 12.0)) < 1.0)
        cavity = air | orbit
        if cavity.any():
            d_cav = _edt(~cavity, px, ef)
            walls = face & ~ic & ~cavity & ~globe & (d_cav < 1.8) & (v < 0.9 * Av)
        cells = air & (fsu > 1.0)  # ethmoid septa
        mastoid = np.zeros(shape, bool)
        for sgn in (-1, 1):
            mastoid |= cav((sgn * 46.0, -0.25 * Av, 0), (9.0, 11.0), (-58, -32))
        mastoid &= base & (np.abs(fsu) > 0.35)
        spine = face & (ell((0, 0.02 * Av, -100), (12.0, 11.0, 32.0)) < 1.0)  # clivus / C1
        for sgn in (-1, 1):  # mandibular rami
            spine |= face & (np.abs(u - sgn * 0.68 * p["Au"]) < 3.0) & (np.abs(v - 0.22 * Av) < 14.0) & (w < -66)
        canal = spine & (u**2 + (v - 0.02 * Av) ** 2 < 4.0**2)
    bone = ring_bone | base | walls | cells | spine
    bone &= ~(ic & ~petrous)
    # tables and diploe
    frac_depth = np.clip(d_out / t_sk, 0, 1)
    table = (frac_depth < 0.28) | (frac_depth > 0.72)
    bone_hu = np.where(table, p["table_hu"], p["diploe_hu"] + 180.0 * ft).astype(np.float32)
    bone_hu = np.where(base & ~ring_bone, 1000.0 + 300.0 * ft, bone_hu)
    bone_hu = np.where(walls | cells, 700.0 + 200.0 * ft, bone_hu)
    bone_hu = np.where(petrous, 1750.0, bone_hu)
    bone_hu = np.where(spine, 650.0 + 200 * ft, bone_hu)
    hu[bone] = bone_hu[bone]
    tis[bone] = BONE
    ic = ic & ~petrous
    air_all = (air & ~cells) | mastoid | frontal
    hu[air_all] = -950.0
    tis[air_all] = AIR
    nasal_septum = air & (np.abs(u) < 1.0) & (v > 0.45 * Av)
    hu[nasal_septum] = 400.0
    tis[nasal_septum] = BONE
    hu[orbit] = -80.0
    tis[orbit] = FAT
    hu[globe] = 12.0
    tis[globe] = EYE
    hu[canal] = 30.0
    tis[canal] = SOFT
    if have_ic:
        d_in = np.where(ic, d_in, 0.0).astype(np.float32)
        have_ic = bool(ic.any())

    # ---------------- brain
    if have_ic:
        brain = ic
        # baseline white matter with mild texture
        hu[brain] = p["wm"] + 1.2 * ft[brain]
        tis[brain] = WM
        # cortex: grey band under the inner table, gyri/sulci from a random field
        g = np.gradient(fsu, px)
        gmag = np.sqrt(g[0] ** 2 + g[1] ** 2) + 0.02
        dist_c = np.abs(fsu) / gmag  # approx. distance (mm) to the sulcal contour
        gm_t = 2.6 + 1.2 * ft
        sulc_depth = 11.0 + 8.0 * p["atrophy"] + 4.0 * fs
        sulc_w = 0.5 + 1.2 * p["atrophy"]
        cortex = brain & ((d_in < gm_t) | ((dist_c < sulc_w + 2.8) & (d_in < sulc_depth + 2.0)))
        hu[cortex] = p["gm"] + 1.5 * ft[cortex]
        tis[cortex] = GM
        sulcus = brain & (dist_c < sulc_w) & (d_in < sulc_depth)
        sulcus |= brain & (d_in < 0.6 + 1.4 * p["atrophy"])  # subarachnoid space over the convexity
        # interhemispheric fissure with falx (supratentorial, above the corpus callosum or
        # anterior/posterior to it)
        # mass effect: deep structures, falx and ventricles are pushed away from large bleeds
        ub = u - _mass_shift(p, u, v, w)

        def ellb(c, r):
            return _ellipsoid(ub, v, w, c, r, wr)

        above_cc = (w > 28.0 + 0.15 * np.abs(v)) | (v > 0.45 * Av) | (v < -0.55 * Av)
        fissure = brain & (np.abs(ub) < 1.2 + 1.2 * p["atrophy"]) & above_cc & (w > -20)
        sulcus |= fissure
        # sylvian fissures
        au_ = np.abs(u)
        syl = brain & (au_ > 0.42 * p["Au"]) & (au_ < p["Au"]) & (w > -26) & (w < 6) & \
            (np.abs(v - 0.12 * Av + 0.35 * (au_ - 0.3 * p["Au"]) - 4.0 * fs - 2.0 * ft) < 1.0 + 1.5 * p["atrophy"])
        sulcus |= syl
        # cerebellum / brainstem below the tentorium
        # tentorium: a tent rising to the incisura; below it cerebellum/brainstem
        w_tent = -6.0 - 0.008 * u**2 - 0.25 * np.maximum(0.0, -(v + 0.35 * Av))
        infra = brain & (v < -0.08 * Av - 0.006 * u**2) & (w < w_tent)
        hu[infra] = p["wm"] + 0.4 * (p["gm"] - p["wm"]) + 1.0 * ft[infra]
        tis[infra] = DEEP  # (cerebellum: grey/white mix)
        folia = infra & (np.abs(np.sin(2.5 * fsu)) < 0.08) & (d_in < 25)
        # deep grey nuclei
        deep = np.zeros(shape, bool)
        for sgn in (-1, 1):
            deep |= ellb((sgn * 19.0, 8.0, 2.0), (7.0, 14.0, 10.0)) < 1.0  # lentiform
            deep |= ellb((sgn * 10.0, -12.0, 4.0), (8.0, 11.0, 9.0)) < 1.0  # thalamus
            deep |= ellb((sgn * 11.0, 17.0, 12.0), (4.5, 9.0, 8.0)) < 1.0  # caudate head
        deep &= brain & ~infra
        hu[deep] = p["gm"] - 4.0 + 1.0 * ft[deep]
        tis[deep] = DEEP
        stem = brain & (ellb((0, -0.2 * Av, -40.0), (13.0, 12.0, 24.0)) < 1.0)
        mid = brain & (ellb((0, -0.12 * Av, -16.0), (11.0, 10.0, 8.0)) < 1.0)
        cist = brain & ~mid & (v < -0.12 * Av + 3.0) & (ellb((0, -0.12 * Av - 1.5, -16.0), (13.0 + 2 * p["atrophy"], 13.0, 9.0)) < 1.0)
        cist |= brain & (ellb((0, 0.05 * Av, -22.0), (13.0, 9.0, 5.0)) < 1.0)  # suprasellar
        hu[stem | mid] = p["wm"] + 5.0 + ft[stem | mid]
        tis[stem | mid] = WM
        lat, fourth = _ventricles(p, ub, v, w, fs, wr)
        vent = brain & (lat | fourth)
        csf = (sulcus & ~stem & ~mid) | cist | vent | (folia & ~stem)
        hu[csf] = p["csf"] + 1.0 * ft[csf]
        tis[csf] = CSF
        # falx (dense dural fold) in the fissure
        falx = fissure & (np.abs(ub) < 0.6 + 0.35 * px)
        hu[falx] = 55.0
        tis[falx] = SOFT
        # calcifications
        calc = np.zeros(shape, bool)
        for i, sgn in enumerate((-1, 1)):
            if p["choroid_calc"][i]:
                calc |= ellb((sgn * 17.0 * (1 + 0.1 * p["vent_scale"]), -28.0, 10.0), (3.0, 3.5, 3.0)) < 1.0
        if p["pineal_calc"]:
            calc |= ellb((0.0, -22.0, 4.0), (2.2, 2.8, 2.5)) < 1.0
        if p["falx_calc"]:
            calc |= falx & (np.abs(v - 0.3 * Av) < 6.0) & (w > 35) & (w < 45)
        calc &= brain
        hu[calc] = p["calc_hu"]
        tis[calc] = CALC

        # ---------------- hemorrhage
        fracture = np.zeros(shape, bool)
        # extra-axial collections stay on the convexity (not along the skull-base fossae)
        convex = np.sqrt((u / p["Au"]) ** 2 + (v / Av) ** 2) > 0.62 * cprof
        for d in p["sites"]:
            kind = d["kind"]
            if kind == IPH:
                c, r = d["c"], d["r"]
                du, dv, dw = (u - c[0]) / r[0], (v - c[1]) / r[1], (w - c[2]) / r[2]
                q = np.sqrt(du**2 + dv**2 + dw**2)
                ang = np.arctan2(dv, du)
                lob = (d["lob"][0] * np.cos(2 * ang + d["ph"][0]) + d["lob"][1] * np.cos(3 * ang + d["ph"][1] + 2 * dw)
                       + d["lob"][2] * np.cos(5 * ang + d["ph"][2]) + 0.08 * fsu)
                rad = 1.0 + lob
                parench = brain & ((tis == WM) | (tis == GM) | (tis == DEEP)) & (d_in > 1.5)
                oed = parench & (q < rad * (1.0 + d["rim"]))
                hu[oed] = np.minimum(hu[oed], p["wm"] - 6.0 - 4.0 * (1 - q[oed] / (rad[oed] * (1 + d["rim"]))))
                bl = brain & (d_in > 1.5) & (q < rad) & (tis != BONE)
                hu[bl] = d["hu"] + 4.0 * ft[bl] + 6.0 * (1 - q[bl])
                sub[bl] = IPH
                if d["ivh"]:
                    # rupture into the ipsilateral lateral ventricle, layering posteriorly (dependent)
                    blv = vent & lat & (u * math.copysign(1.0, c[0]) > 0) & (y_scan < c[1] - 5.0)
                    hu[blv] = d["hu"] - 8.0
                    sub[blv] = IVH
            elif kind in (SDH, EDH):
                dth = np.angle(np.exp(1j * (theta - d["theta"])))
                arc = dth * np.sqrt(u**2 + v**2)
                x = np.abs(arc) / d["half_arc"]
                z = np.abs(w - d["cw"]) / d["hw"]
                if kind == SDH:
                    prof = np.clip(1.0 - x**4, 0, 1) ** 0.5 * np.clip(1.0 - z**3, 0, 1) ** 0.5
                    t = d["t"] * prof * (1.0 + 0.1 * fs)
                    infra_ok = ~infra
                    bl = brain & (d_in < t) & (t > 0.3) & infra_ok & ~(np.abs(u) < 1.5) & convex
                else:
                    prof = np.sqrt(np.clip(1.0 - x**2 - z**2, 0, 1))
                    t = d["t"] * prof
                    bl = brain & (d_in < t) & (t > 0.3) & convex
                    if d.get("fracture"):
                        fr = ring_bone & (np.abs(arc) < 0.6 + 0.4 * px) & (np.abs(w - d["cw"]) < d["hw"] * 0.7)
                        fracture |= fr
                hu[bl] = d["hu"] + 3.0 * ft[bl]
                sub[bl] = kind
            elif kind == IVH:
                sides = lat & brain & vent
                if not d["both"]:
                    sides &= (u * d["side"] > 0)
                if d["mode"] == "layer":
                    bl = sides & (y_scan < d["level"])  # dependent = posterior in the scanner
                else:
                    bl = sides & (w > d["wr"][0]) & (w < d["wr"][1]) & (v > -20)
                hu[bl] = d["hu"] + 2.0 * ft[bl]
                sub[bl] = IVH
            else:  # SAH
                c = d["c"]
                q = np.sqrt(((u - c[0]) / d["r"]) ** 2 + ((v - c[1]) / d["r"]) ** 2 + ((w - c[2]) / d["rw"]) ** 2)
                bl = brain & (tis == CSF) & ~vent & (q < 1.0 + 0.2 * fs)
                hu[bl] = d["hu"] - 10.0 * q[bl] + 2.0 * ft[bl]
                sub[bl] = SAH
        hu[fracture] = 40.0
        tis[fracture] = SOFT
    else:
        fracture = np.zeros(shape, bool)
    tis[sub > 0] = BLOOD
    return hu, tis, sub, fracture


# ----------------------------------------------------------------------------------------------


def generate(index: int, seed: int, size: int = 512, slices_min: int = 24, slices_max: int = 36,
             n_sub: int = 2, profile: str = "standard") -> Phantom:
    """Generates volume ``index`` of the series ``seed``; deterministic in (index, seed, size,
    profile).  ``slices_min``/``slices_max`` count 5 mm slices; ``n_sub`` sub-levels average a
    5 mm slice (thinner slices of a variation profile get proportionally fewer, at least 1)."""
    rng = np.random.default_rng([int(seed), int(index), 0x1C45E6])
    nz = int(rng.integers(slices_min, slices_max + 1))
    var = variation.draw(profile, seed, index, nz)
    if var:
        nz = var["nz"]
        n_sub = max(1, int(round(n_sub * var["slice_mm"] / SLICE_MM)))
    p = _draw_params(rng, size, nz, var)
    sl = p["slice_mm"]
    F = _fields(rng)
    noise_rng = np.random.default_rng([int(seed), int(index), 0xBEEF])
    px = p["px"]
    n = size
    coords = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * px
    Y, X = np.meshgrid(coords, coords, indexing="ij")  # Y: rows (anterior at row 0 -> -Y), X: cols
    # scanner frame: x to patient left, y anterior
    xs = X - p["shift"][0]
    ys = -Y - p["shift"][1]
    cy, sy = math.cos(p["yaw"]), math.sin(p["yaw"])
    u0 = cy * xs + sy * ys
    v0 = -sy * xs + cy * ys
    cp, sp = math.cos(p["pitch"]), math.sin(p["pitch"])
    cr, sr = math.cos(p["roll"]), math.sin(p["roll"])

    def head_frame(u0, v0, zs):
        # pitch about the lateral axis, roll about the AP axis (small head tilts)
        w1 = zs * cp - v0 * sp
        v1 = v0 * cp + zs * sp
        w = (w1 * cr - u0 * sr).astype(np.float32)
        u = (u0 * cr + w1 * sr).astype(np.float32)
        return u, v1.astype(np.float32), w

    cf = max(1, int(round(1.8 / px)))  # coarse grid (block centres) for the random fields
    mc = -(-n // cf)
    cc = (np.arange(mc, dtype=np.float32) * cf + (cf - 1) / 2.0 - (n - 1) / 2.0) * px
    Yc, Xc = np.meshgrid(cc, cc, indexing="ij")
    xsc, ysc = Xc - p["shift"][0], -Yc - p["shift"][1]
    u0c, v0c = cy * xsc + sy * ysc, -sy * xsc + cy * ysc

    hu_vol = np.zeros((n, n, nz), np.int16)
    sub_vol = np.zeros((n, n, nz), np.uint8)
    tis_vol = np.zeros((n, n, nz), np.uint8)
    frac = np.zeros(nz, np.int64)
    for k in range(nz):
        top_k = p["z0"] + (k + 1) * sl
        ns = n_sub if top_k < p["vertex"] - 6.0 else 2 * n_sub  # finer partial volume at the vertex
        offs = (np.arange(ns) + 0.5) / ns * sl
        acc = np.zeros((n, n), np.float32)
        blood = np.zeros((n, n), np.float32)
        votes = np.zeros((n, n, 6), np.uint8)
        fr_any = False
        for j, off in enumerate(offs):
            zs = p["z0"] + k * sl + off
            u, v, w = head_frame(u0, v0, zs)
            coarse = (cf, *head_frame(u0c, v0c, zs))
            hu, tis, sub, fr = _render_level(p, F, u, v, w, ys, px, coarse)
            acc += hu
            blood += sub > 0
            for code in range(1, 6):
                votes[..., code] += sub == code
            if j == ns // 2:
                tis_vol[:, :, k] = tis.T
            fr_any |= bool(fr.any())
        img = acc / ns
        m = blood >= (ns / 2.0)
        subk = np.where(m, np.argmax(votes, axis=-1), 0).astype(np.uint8)
        # in-plane blur, skull-base streaks, correlated noise
        img = ndimage.gaussian_filter(img, p["blur_mm"] / px)
        zc = p["z0"] + (k + 0.5) * sl
        if -62.0 < zc < -18.0:
            a = 0.18 * p["Av"]
            dl = np.abs(v0 + a)  # line between the petrous ridges (Hounsfield bar)
            amp = p["streak"] * math.exp(-(((zc + 40.0) / 14.0) ** 2))
            head_soft = (img > -200) & (img < 200)
            img -= (amp * np.exp(-(dl / 4.0) ** 2) * head_soft).astype(np.float32)
            ang = np.arctan2(v0 + a, u0)
            streaks = np.cos(ang * 14.0 + 1.3 * k) * np.exp(-np.abs(np.sin(ang * 7.0)) * 8)
            img += (0.4 * amp * streaks * head_soft).astype(np.float32)
        if var:
            img = variation.scan(img, var, k, px, (u0 / p["Au"], v0 / p["Av"]))
        nz_ = noise_rng.standard_normal((n, n)).astype(np.float32)
        nz_ = ndimage.gaussian_filter(nz_, var["noise_corr_mm"] / px if var else 0.7 * 0.45 / px * 1.5)
        nz_ *= p["noise"] / (nz_.std() + 1e-6)
        img += nz_
        img = np.clip(np.rint(img), -1024, 3071)
        hu_vol[:, :, k] = img.astype(np.int16).T
        sub_vol[:, :, k] = subk.T
        frac[k] = int(fr_any)

    labels = np.zeros((nz, 5), np.int64)
    for code in range(1, 6):
        labels[:, code - 1] = (sub_vol == code).any(axis=(0, 1))
    mask = (sub_vol > 0).astype(np.uint8)
    affine = np.diag([-px, -px, sl, 1.0])
    affine[:3, 3] = [(n - 1) / 2.0 * px, (n - 1) / 2.0 * px, p["z0"] + 0.5 * sl]
    return Phantom(hu=hu_vol, mask=mask, subtype_map=sub_vol, tissue=tis_vol, labels=labels,
                   fracture=frac, spacing=(px, px, sl), affine=affine, params=p)


def _write_nifti(path, data, affine, slope, inter):
    """Writes a single-file NIfTI-1 with exactly the given scl_slope/scl_inter (nibabel would
    otherwise recompute the scaling of integer data) and qform = sform = affine (code 1)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(data.dtype)
    hdr.set_data_shape(data.shape)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    hdr["scl_slope"] = slope
    hdr["scl_inter"] = inter
    hdr["vox_offset"] = 352
    hdr["descrip"] = b"ichseg synthetic head CT phantom"
    buf = hdr.binaryblock + b"\x00\x00\x00\x00" + np.asarray(data).tobytes(order="F")
    with ImageOpener(str(path), "wb") as fh:  # deterministic gzip (mtime 0) for .gz
        fh.write(buf)


def save_nifti(ph: Phantom, ct_path, mask_path):
    """CT as int16 with stored = HU + 1024 (scl_slope 1, scl_inter -1024); mask as uint8 0/1."""
    stored = (ph.hu.astype(np.int32) - HU_OFFSET).astype(np.int16)
    _write_nifti(ct_path, stored, ph.affine, 1.0, float(HU_OFFSET))
    _write_nifti(mask_path, ph.mask.astype(np.uint8), ph.affine, 1.0, 0.0)


ACQUISITION_COLUMNS = ("PatientNumber", "profile", "slice_mm", "slices", "pixel_mm", "kernel",
                       "noise_hu", "hu_offset", "hu_slope", "cupping_hu", "motion_slices", "head_scale")


def _acquisition_row(pid, ph):
    v = ph.params["variation"]
    m = v["motion"]
    return [pid, v["profile"], v["slice_mm"], ph.hu.shape[2], f"{ph.spacing[0]:.4f}", v["kernel"],
            f"{v['noise']:.2f}", f"{v['hu_offset']:.2f}", f"{v['hu_slope']:.4f}", f"{v['cupping']:.2f}",
            f"{m['start'] + 1}-{m['stop']}" if m else "", f"{v['head_scale']:.3f}"]


PARTS = ".parts"  # while a run is under way: its settings and one record per finished volume


def _write_json(path, doc):
    """Whole or not at all: a run killed while writing leaves no record, so the volume is redone.
    Returns ``doc`` as read back, so that fresh and resumed volumes give the same CSV text."""
    text = json.dumps(doc, default=lambda v: v.item())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return json.loads(text)


def _write_one(args):
    i, out, seed, size, slices_min, slices_max, profile = args
    ph = generate(i, seed, size=size, slices_min=slices_min, slices_max=slices_max, profile=profile)
    pid = i + 1
    save_nifti(ph, out / "ct_scans" / f"{pid:03d}.nii.gz", out / "masks" / f"{pid:03d}.nii.gz")
    kinds = [SUBTYPES[d["kind"] - 1] for d in ph.params["sites"]]
    info = (f"{pid:03d}: {ph.hu.shape} px={ph.spacing[0]:.3f} sites={kinds} "
            f"bleeding slices={int(ph.labels.any(axis=1).sum())}")
    acquisition = _acquisition_row(pid, ph) if profile != "standard" else None
    part = {"rows": ph.csv_rows(pid), "info": info, "acquisition": acquisition}
    return _write_json(out / PARTS / f"{pid:03d}.json", part)  # after both scans: the volume is whole


def _start_parts(parts, settings, resume):
    """The records of finished volumes a resumed run keeps, by patient number. Without
    ``resume`` every earlier record goes; with it, records of other settings are refused, since
    their volumes would not be the ones these settings draw."""
    run = parts / "run.json"
    if resume and run.is_file():
        earlier = json.loads(run.read_text())
        if earlier != settings:
            raise ValueError(f"{parts.parent} holds an interrupted run with other settings ({earlier}, "
                             f"now {settings}): remove it or run without resume")
        return {int(f.stem): json.loads(f.read_text()) for f in parts.glob("[0-9]*.json")}
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    _write_json(run, settings)
    return {}


def write_dataset(out, count, seed, size=512, slices_min=24, slices_max=36, first=0, verbose=False, jobs=1,
                  profile="standard", resume=False):
    """Writes ``count`` volumes (patients first+1 .. first+count, files NNN = patient number).
    ``jobs`` > 1 generates volumes in that many processes (same files, same order).  A
    variation ``profile`` other than ``standard`` also writes ``acquisition.csv``: each
    volume's slice thickness, kernel, noise, calibration, cupping and motion.  Each finished
    volume is recorded in ``out/.parts`` until the CSV files are written; with ``resume`` the
    volumes an interrupted run of the same settings finished are kept, and the files are the
    same as an uninterrupted run's."""
    variation.draw(profile, seed, first, slices_min)  # refuses an unknown profile before any file
    out = pathlib.Path(out)
    (out / "ct_scans").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    settings = {"seed": seed, "size": size, "slices_min": slices_min, "slices_max": slices_max, "profile": profile}
    done = _start_parts(out / PARTS, settings, resume)
    tasks = [(i, out, seed, size, slices_min, slices_max, profile) for i in range(first, first + count)
             if i + 1 not in done]
    if verbose and done:
        print(f"resuming: {len(done)} volume(s) already made, {len(tasks)} to go", flush=True)
    if jobs > 1 and len(tasks) > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks)))
        results = pool.imap(_write_one, tasks)
    else:
        pool, results = None, map(_write_one, tasks)
    try:
        for part in results:
            done[part["rows"][0][0]] = part
            if verbose:
                print(part["info"], flush=True)
    finally:
        if pool:
            pool.close()
            pool.join()
    parts = [done[i + 1] for i in range(first, first + count)]
    rows = [r for part in parts for r in part["rows"]]
    acquisition = [part["acquisition"] for part in parts if part["acquisition"]]
    with open(out / "hemorrhage_diagnosis_raw_ct.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(CSV_COLUMNS)
        wr.writerows(rows)
    if acquisition:
        with open(out / "acquisition.csv", "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(ACQUISITION_COLUMNS)
            wr.writerows(acquisition)
    shutil.rmtree(out / PARTS)
    return rows


def montage(png, seed=0, indices=None, size=512, n_vol=5):
    """Saves a PNG montage: for each volume, 4 slices (skull base, through a bleed or the
    ventricles, mid, high) in the brain window (50/130), each next to a copy with the mask
    outlined by subtype colour.  Needs matplotlib (documentation only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colours = {IVH: "#00e5ff", IPH: "#ff3030", SAH: "#ffd400", EDH: "#ff7fff", SDH: "#40ff40"}
    if indices is None:  # greedy: bleeding volumes covering as many subtypes as possible + 1 normal
        cands, normal = [], None
        for i in range(60):
            rng = np.random.default_rng([int(seed), int(i), 0x1C45E6])
            nz = int(rng.integers(24, 37))
            kinds = {d["kind"] for d in _draw_params(rng, size, nz)["sites"]}
            if kinds:
                cands.append((i, kinds))
            elif normal is None:
                normal = i
        indices, seen = [], set()
        while len(indices) < n_vol - 1 and cands:
            i, kinds = max(cands, key=lambda t: (len(t[1] - seen), len(t[1])))
            cands.remove((i, kinds))
            indices.append(i)
            seen |= kinds
        indices.append(normal)
    fig, axes = plt.subplots(len(indices), 8, figsize=(16, 2.1 * len(indices)), dpi=100)
    axes = np.atleast_2d(axes)
    for r, idx in enumerate(indices):
        ph = generate(idx, seed, size=size)
        nz = ph.hu.shape[2]
        area = ph.mask.sum(axis=(0, 1))
        ks = [int(0.12 * nz), int(0.35 * nz), int(0.55 * nz), int(0.82 * nz)]
        if area.any():
            ka = int(np.argmax(area))
            # second bleeding slice: the one adding most subtypes not seen in ka, else far from ka
            rarity = np.array([1.0, 1.0, 1.5, 2.0, 1.0])  # prefer showing SAH / EDH slices
            gain = [(float(((ph.labels[k] > 0) & (ph.labels[ka] == 0)) @ rarity), abs(k - ka))
                    if area[k] else (-1.0, 0) for k in range(nz)]
            kb = int(max(range(nz), key=lambda k: gain[k]))
            if gain[kb][0] <= 0:
                kb = int(0.35 * nz) if ka > 0.45 * nz else int(0.55 * nz)
            ks[1:3] = sorted([ka, kb])
        kinds = sorted({("IVH", "IPH", "SAH", "EDH", "SDH")[d["kind"] - 1] for d in ph.params["sites"]})
        for c, k in enumerate(ks):
            img = ph.hu[:, :, k].T.astype(np.float32)
            for a, outline in ((axes[r, 2 * c], False), (axes[r, 2 * c + 1], True)):
                a.imshow(np.clip((img + 15.0) / 130.0, 0, 1), cmap="gray", vmin=0, vmax=1,
                         interpolation="bilinear")
                a.set_xticks([]); a.set_yticks([])
                if outline:
                    sm = ph.subtype_map[:, :, k].T
                    for code, col in colours.items():
                        if (sm == code).any():
                            a.contour((sm == code).astype(float), levels=[0.5], colors=col,
                                      linewidths=0.9)
                    if c == 0:
                        a.set_title("", fontsize=7)
            labs = [("IVH", "IPH", "SAH", "EDH", "SDH")[i] for i in range(5) if ph.labels[k, i]]
            axes[r, 2 * c].set_title(f"vol {idx + 1:03d}  slice {k + 1}/{nz}", fontsize=8)
            axes[r, 2 * c + 1].set_title(", ".join(labs) if labs else "no hemorrhage", fontsize=8)
        axes[r, 0].set_ylabel(" + ".join(kinds) if kinds else "normal", fontsize=9)
    handles = [Line2D([], [], color=col, label=SUBTYPES[code - 1]) for code, col in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.suptitle(f"ichseg phantoms (seed {seed}, {size}x{size}, brain window 50/130; "
                 "right of each pair: ground-truth mask outlined by subtype)", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return indices


def main(argv=None):
    ap = argparse.ArgumentParser(description="Synthetic head-CT phantoms in the BCIHM layout")
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--slices-min", type=int, default=24)
    ap.add_argument("--slices-max", type=int, default=36)
    ap.add_argument("--montage", metavar="PNG", help="also save a montage PNG (needs matplotlib)")
    ap.add_argument("--jobs", type=int, default=1, help="generate volumes in this many processes")
    ap.add_argument("--profile", choices=variation.PROFILES, default="standard",
                    help="variation profile: standard (default), wide (training for a change of "
                         "data) or shifted (a held-out family); docs/PHANTOMS.md")
    ap.add_argument("--resume", action="store_true",
                    help="keep the volumes an interrupted run of the same settings finished")
    a = ap.parse_args(argv)
    if a.count > 0:
        try:
            write_dataset(a.out, a.count, a.seed, a.size, a.slices_min, a.slices_max, verbose=True, jobs=a.jobs,
                          profile=a.profile, resume=a.resume)
        except ValueError as e:
            ap.error(str(e))
    if a.montage:
        montage(a.montage, seed=a.seed, size=a.size)


if __name__ == "__main__":
    main()
