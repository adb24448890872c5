"""ichseg: intracerebral-hemorrhage segmentation of head CT (libichseg from Python).

The same library the ``ichseg`` command-line tool runs, with numpy arrays in and out:

- :class:`Engine` chooses the device (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``) and threads;
- :class:`Segmenter` runs a U-Net: mask, probabilities, lesions with their clinical findings;
- :class:`PseudoLabeler` makes pseudo masks from slice classifiers (SF-CAM, SCA, dense CRF);
- :func:`read_volume`, :func:`write_mask`, :func:`write_probability`: NIfTI files and DICOM
  series in, NIfTI or DICOM-SEG out;
- :func:`eval`: IoU, mIoU, Dice, CL/ML/FPL as the paper defines them.

Arrays are indexed ``[z, y, x]`` (shape ``(nz, ny, nx)``, the axial slice index first), the
layout the library uses; spacing is ``(x, y, z)`` in mm and the affine maps voxel
``(x, y, z, 1)`` to world RAS+ millimetres, as in a NIfTI file. A nibabel array
(``img.get_fdata()``, shape ``(nx, ny, nz)``) becomes one with ``.T``. Any real numeric dtype
and any memory order is accepted; the values are copied once, into the library's volume.

Work runs with the GIL released. Long calls take ``progress=callable(done, total)``; returning
``False`` from it cancels (:class:`~ichseg.errors.CancelledError`), raising in it cancels with
that exception, and Ctrl-C (``KeyboardInterrupt``) cancels between batches of slices.
Errors are :class:`ichseg.Error` subclasses carrying the library's status and message.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from . import _native
from .errors import (
    CancelledError,
    Error,
    InferenceError,
    InvalidArgumentError,
    InvalidImageError,
    InvalidModelError,
    IoError,
    NonFiniteError,
    OutOfMemoryError,
    PanicError,
    UnsupportedError,
)

__version__: str = _native.__version__

Image = _native.Image
Image.__doc__ = """A CT volume read by :func:`read_volume`, with its geometry.

``array`` (a new float32 array in HU, shape ``(nz, ny, nx)``), ``spacing`` (x, y, z mm),
``affine`` (4x4, voxel to RAS+ mm), ``oriented``, ``shape``, ``kind`` (``"nifti"`` or
``"dicom"``), ``series_uid`` and ``path``. Pass it to :meth:`Segmenter.segment` or
:meth:`PseudoLabeler.label` directly (no copy; orientation kept) and as ``like=`` to
:func:`write_mask` to write results on its grid (a DICOM-SEG needs an Image from a series).
"""

PathArg = Union[str, "PathLike[str]"]
Progress = Optional[Callable[[int, int], Optional[bool]]]

# dtypes the native module reads directly; others of a real numeric kind are converted first.
_NATIVE_DTYPES = {np.dtype(t) for t in (np.bool_, np.float32, np.float64, np.int8, np.int16, np.int32,
                                         np.int64, np.uint8, np.uint16, np.uint32, np.uint64)}


def _array(a: Any, what: str) -> np.ndarray:
    """``a`` as a numpy array the native module reads without another copy."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"{what} has dtype {arr.dtype}; a real numeric dtype is needed")
    if arr.dtype not in _NATIVE_DTYPES:  # float16, long double, non-native byte order
        arr = arr.astype(np.float32 if arr.dtype.kind == "f" else np.float64)
    return arr


def _triple(v: Any, what: str) -> Optional[tuple]:
    if v is None:
        return None
    t = tuple(float(x) for x in np.asarray(v, dtype=np.float64).reshape(-1))
    if len(t) != 3:
        raise InvalidArgumentError(f"{what} must have 3 values (x, y, z in mm), got {len(t)}")
    return t


def _affine(v: Any) -> Optional[list]:
    if v is None:
        return None
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (4, 4):
        raise InvalidArgumentError(f"affine must be 4x4, got shape {a.shape}")
    return a.tolist()


def _pair(v: Any, what: str) -> Optional[tuple]:
    if v is None:
        return None
    t = tuple(v)
    if len(t) != 2:
        raise InvalidArgumentError(f"{what} must be a pair, got {v!r}")
    return t


def _volume_args(volume: Any, spacing: Any, affine: Any) -> tuple:
    if isinstance(volume, Image):
        return volume, spacing, affine
    return _array(volume, "the volume"), _triple(spacing, "spacing"), _affine(affine)


def _build(cls: type, d: dict) -> Any:
    """A dataclass from a report dict: every field must be there (a schema drift fails loudly)."""
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.init})


@dataclass(frozen=True)
class Abc2:
    """ABC/2 diameters (mm) and volume (mL) of one lesion (docs/FINDINGS.md)."""

    a_mm: float
    b_mm: float
    c_mm: float
    ml: float


@dataclass(frozen=True)
class Density:
    """HU statistics over a lesion's voxels."""

    mean_hu: float
    median_hu: float
    max_hu: float


@dataclass(frozen=True)
class Flags:
    """``ge_30_ml``: volume >= 30 mL; ``touches_inner_table``: within 1.5 mm of the skull."""

    ge_30_ml: bool
    touches_inner_table: bool


@dataclass(frozen=True)
class Lesion:
    """One 3D connected component (26-connectivity) with its clinical findings.

    Indices are (x, y, z) voxel indices; ``side`` is ``"left"``, ``"right"``, ``"crossing"``
    or ``"unknown"`` (no midline found, or a volume without orientation).
    """

    id: int
    voxels: int
    volume_ml: float
    bbox_min: tuple
    bbox_max: tuple
    centroid_voxel: tuple
    centroid_world_mm: tuple
    first_slice: int
    last_slice: int
    abc2_ml: float
    abc2: Abc2
    density: Density
    side: str
    flags: Flags

    @classmethod
    def _from(cls, d: dict) -> "Lesion":
        d = dict(d)
        for k in ("bbox_min", "bbox_max", "centroid_voxel", "centroid_world_mm"):
            d[k] = tuple(d[k])
        d["abc2"] = _build(Abc2, d["abc2"])
        d["density"] = _build(Density, d["density"])
        d["flags"] = _build(Flags, d["flags"])
        return _build(cls, d)


@dataclass(frozen=True)
class Midline:
    """The midsagittal plane the sides refer to: points p with ``normal . p = offset_mm``."""

    found: bool
    normal: tuple
    offset_mm: float
    point: tuple
    score: float
    reason: Optional[str] = None

    @classmethod
    def _from(cls, d: dict) -> "Midline":
        return cls(found=d["found"], normal=tuple(d["normal"]), offset_mm=d["offset_mm"],
                   point=tuple(d["point"]), score=d["score"], reason=d.get("reason"))


@dataclass(frozen=True)
class Segmentation:
    """What :meth:`Segmenter.segment` returns.

    ``mask`` (uint8, 1 = hemorrhage) and ``probability`` (float32) have the volume's shape
    ``(nz, ny, nx)``; ``lesions`` are largest first; ``report`` is the JSON report of
    ``ichseg segment --report`` as a dict (``input`` is ``"<array>"`` for an array).
    """

    mask: np.ndarray
    probability: np.ndarray
    lesions: list
    total_volume_ml: float
    total_abc2_ml: float
    largest_lesion_ml: float
    summary: str
    midline: Midline
    report: dict = field(repr=False)


@dataclass(frozen=True)
class PseudoLabel:
    """What :meth:`PseudoLabeler.label` returns.

    ``mask`` (uint8, ``(nz, ny, nx)``); ``fused``: the fused map of each tap layer, what the
    threshold sees (float32, one per tap); ``cams``: each classifier's CAM per tap;
    ``positive_slices``: slices decided positive (labels or predictions);
    ``slice_probabilities``: bleed probability per classifier and slice; ``report``: the JSON
    report of ``ichseg pseudo-label --report`` as a dict.
    """

    mask: np.ndarray
    fused: list
    cams: list
    positive_slices: list
    slice_probabilities: list
    report: dict = field(repr=False)


@dataclass(frozen=True)
class SizeBin:
    """CL and FPL of the sites whose 3D lesion (26-connected) has a volume in
    ``[min_ml, max_ml)`` mL (``max_ml`` ``None``: no upper bound)."""

    min_ml: float
    max_ml: Optional[float]
    cl: Optional[float]
    fpl: Optional[float]
    n_gt_sites: int
    n_correct: int
    n_pred_sites: int
    n_fp: int


@dataclass(frozen=True)
class Scores:
    """METHOD.md section 6; ratios are fractions in [0, 1], ``None`` where undefined.

    ``by_size``: CL and FPL per lesion-size bin (< 0.1, 0.1-1, 1-10, >= 10 mL), when
    :func:`eval` was given the voxel spacing; else ``None``.
    """

    iou_background: float
    iou_hemorrhage: float
    miou: float
    dice: float
    cl: Optional[float]
    ml: Optional[float]
    fpl: Optional[float]
    n_gt_sites: int
    n_correct: int
    n_pred_sites: int
    n_fp: int
    slices: int
    by_size: Optional[tuple] = None

    @classmethod
    def from_dict(cls, d: dict) -> "Scores":
        """Scores from ``ichseg eval --json``'s ``overall`` or a ``per_volume`` entry's ``scores``."""
        d = dict(d)
        bins = d.get("by_size")
        d["by_size"] = None if bins is None else tuple(_build(SizeBin, b) for b in bins)
        return _build(cls, d)


@dataclass(frozen=True)
class Evaluation:
    """Scores pooled over every pair (``overall``) and of each pair alone (``per_volume``)."""

    overall: Scores
    per_volume: list


class Engine:
    """Where networks run: ``device`` ``"auto"`` (CUDA when usable, else the CPU), ``"cpu"``,
    ``"cuda"`` or ``"cuda:N"``; ``threads`` 0 = one per core; ``memory_limit_mb`` refuses work
    whose buffers sized by the volume would exceed it (0 = no limit); ``low_memory`` trades speed
    for memory (on the CPU, 3x3 convolutions keep their weights as they are instead of
    Winograd's copies, 4x their size).

    ``device`` and ``device_note`` say what was chosen and why. Engines are thread-safe and may
    be shared by segmenters and pseudo-labellers.
    """

    def __init__(self, device: str = "auto", threads: int = 0, memory_limit_mb: int = 0,
                 low_memory: bool = False) -> None:
        self._native = _native.NativeEngine(device, threads, memory_limit_mb, low_memory)

    @property
    def device(self) -> str:
        return self._native.device

    @property
    def device_note(self) -> str:
        return self._native.device_note

    @property
    def threads(self) -> int:
        return self._native.threads

    @property
    def low_memory(self) -> bool:
        return self._native.low_memory

    def __repr__(self) -> str:
        return f"Engine(device={self.device!r}, threads={self.threads})"


class Segmenter:
    """A U-Net (ONNX) on an engine.

    Options (each overrides the model's ``ichseg.*`` metadata, as the CLI's flags do):
    ``threshold`` (0.5), ``batch`` (1), ``window=(level, width)`` HU, ``input_size=(rows, cols)``,
    ``channels`` (1 or 3), ``normalize=(mean, std)``, ``bleed_index``, ``min_lesion_ml`` (``None``:
    the model's tuned ``ichseg.segment.min_lesion_ml``, else 0; ``.config`` says which),
    ``intracranial_margin_mm`` (``None``: off; a margin in mm zeroes everything outside the
    intracranial mask, docs/INTRACRANIAL.md).
    """

    def __init__(self, engine: Engine, model: PathArg, *, threshold: float = 0.5, batch: int = 1,
                 window: Optional[Sequence[float]] = None, input_size: Optional[Sequence[int]] = None,
                 channels: Optional[int] = None, normalize: Optional[Sequence[float]] = None,
                 bleed_index: Optional[int] = None, min_lesion_ml: Optional[float] = None,
                 intracranial_margin_mm: Optional[float] = None) -> None:
        self._native = _native.NativeSegmenter(
            engine._native, str(model), threshold, batch, _pair(window, "window"),
            _pair(input_size, "input_size"), channels, _pair(normalize, "normalize"), bleed_index,
            min_lesion_ml, intracranial_margin_mm)

    @property
    def config(self) -> dict:
        """The settings in use after the model's metadata and the defaults."""
        return json.loads(self._native.config_json)

    def segment(self, volume: Any, spacing: Optional[Sequence[float]] = None,
                affine: Any = None, *, progress: Progress = None) -> Segmentation:
        """Segments ``volume``: an :class:`Image`, or an array in HU of shape ``(nz, ny, nx)``
        with ``spacing`` (x, y, z mm) and optionally ``affine`` (4x4; without it the sides of
        lesions are ``"unknown"``)."""
        v, s, a = _volume_args(volume, spacing, affine)
        mask, prob, report = self._native.segment(v, s, a, progress)
        r = json.loads(report)
        return Segmentation(
            mask=mask, probability=prob, lesions=[Lesion._from(x) for x in r["lesions"]],
            total_volume_ml=r["total_volume_ml"], total_abc2_ml=r["total_abc2_ml"],
            largest_lesion_ml=r["largest_lesion_ml"], summary=r["summary"],
            midline=Midline._from(r["midline"]), report=r)


class PseudoLabeler:
    """Slice classifiers (ONNX, one or more) for pseudo-labelling (METHOD.md job 1).

    Options, as ``ichseg pseudo-label``'s flags: ``taps`` (one list of tap tensor names per
    classifier; default each model's ``ichseg.taps``), ``cam`` (``"sf"``, ``"layer"``,
    ``"grad"``), ``scf=(c, w)`` (``(2, 0.5)``; ``None`` = no SCF), ``crf`` (True),
    ``aggregate`` (``"or"``/``"and"``), ``batch``, ``window``, ``input_size``, ``channels``,
    ``normalize``, ``bleed_index``.

    Tuned settings: ``threshold``, ``max_hu`` (the bone cut), ``min_hu`` (the blood-density
    cut: voxels below it leave the mask after the bone cut), ``min_lesion_ml`` (the
    small-lesion filter; 0 keeps every lesion), ``intracranial_margin_mm`` (the intracranial
    mask: the fused maps are zeroed outside it before the threshold and the CRF), and the dense
    CRF's ``crf_confidence`` (the unary's label confidence, in (0, 1)) and
    ``crf_bilateral_compat`` (the appearance kernel's Potts weight, > 0). ``None`` (the default)
    leaves each to ``preset``: ``"model"`` takes the classifiers' tuned ``ichseg.pseudo.*``
    metadata where they have it, else METHOD.md's defaults (0.2, off, off, 0, off, 0.7, 10);
    ``"paper"`` is METHOD.md exactly. ``max_hu="off"``, ``min_hu="off"`` and
    ``intracranial_margin_mm="off"`` turn a step off whatever the metadata says.
    :attr:`settings` says what is in use and where each came from.
    """

    def __init__(self, engine: Engine, classifiers: Iterable[PathArg], *,
                 taps: Optional[Sequence[Sequence[str]]] = None, cam: str = "sf",
                 threshold: Optional[float] = None, scf: Optional[Sequence[float]] = (2, 0.5), crf: bool = True,
                 aggregate: str = "or", max_hu: Union[None, float, str] = None,
                 min_lesion_ml: Optional[float] = None, batch: int = 1,
                 window: Optional[Sequence[float]] = None, input_size: Optional[Sequence[int]] = None,
                 channels: Optional[int] = None, normalize: Optional[Sequence[float]] = None,
                 bleed_index: Optional[int] = None, intracranial_margin_mm: Union[None, float, str] = None,
                 preset: str = "model", crf_confidence: Optional[float] = None,
                 crf_bilateral_compat: Optional[float] = None,
                 min_hu: Union[None, float, str] = None) -> None:
        if isinstance(classifiers, (str, bytes, PathLike)):
            raise InvalidArgumentError("classifiers must be a list of model paths")
        scf_pair = _pair(scf, "scf")
        if scf_pair is not None:
            c, w = scf_pair
            if int(c) != c:
                raise InvalidArgumentError(f"scf reach c must be a whole number, got {c!r}")
            scf_pair = (int(c), float(w))
        off = []
        for name, v in (("max_hu", max_hu), ("min_hu", min_hu), ("intracranial_margin_mm", intracranial_margin_mm)):
            if isinstance(v, str):
                if v != "off":
                    raise InvalidArgumentError(f"{name} must be a number, None or \"off\", got {v!r}")
                off.append(name)
        self._native = _native.NativePseudoLabeler(
            engine._native, [str(c) for c in classifiers], [list(t) for t in (taps or [])], cam,
            threshold, scf_pair, crf, aggregate, None if "max_hu" in off else max_hu, min_lesion_ml, batch,
            _pair(window, "window"), _pair(input_size, "input_size"), channels, _pair(normalize, "normalize"),
            bleed_index, None if "intracranial_margin_mm" in off else intracranial_margin_mm, off, preset,
            crf_confidence, crf_bilateral_compat, None if "min_hu" in off else min_hu)

    @property
    def settings(self) -> dict:
        """The tuned settings in use: ``preset``, and for ``threshold``, ``intracranial_margin_mm``,
        ``max_hu``, ``min_hu``, ``min_lesion_ml``, ``crf_confidence`` and ``crf_bilateral_compat`` a dict of ``value`` (``None``: off) and ``source``
        (``"option"``, ``"model: NAME, ..."`` or ``"default"``)."""
        return json.loads(self._native.settings_json)

    @property
    def layer_count(self) -> int:
        """Tap layers per classifier: the number of fused maps."""
        return self._native.layer_count

    def label(self, volume: Any, slice_labels: Optional[Sequence[Any]] = None,
              spacing: Optional[Sequence[float]] = None, affine: Any = None, *,
              progress: Progress = None) -> PseudoLabel:
        """Pseudo-labels ``volume`` (an :class:`Image`, or an array with ``spacing``).

        ``slice_labels``: one per axial slice (truthy = bleeding), replacing the classifiers'
        slice decision; ``None`` uses their predictions (mean bleed probability >= 0.5).
        """
        v, s, a = _volume_args(volume, spacing, affine)
        labels = None
        if slice_labels is not None:
            arr = np.asarray(slice_labels)
            if arr.ndim != 1 or arr.dtype.kind not in "biuf":
                raise InvalidArgumentError("slice_labels must be a 1-D sequence of 0/1 or booleans")
            if not np.isin(arr, (0, 1)).all():
                raise InvalidArgumentError("slice_labels must hold only 0/1 or booleans")
            labels = [bool(x) for x in arr]
        mask, fused, cams, report = self._native.label(v, s, a, labels, progress)
        r = json.loads(report)
        return PseudoLabel(mask=mask, fused=list(fused), cams=[list(c) for c in cams],
                           positive_slices=r["positive_slices"],
                           slice_probabilities=r["slice_probabilities"], report=r)


class SliceLabelTable:
    """Slice labels from a CSV file, read as ``ichseg pseudo-label --labels`` and ``--dataset``
    read them: the simple layout (``slice,label``, 0-based slices, one volume) or BCIHM's
    ``hemorrhage_diagnosis_raw_ct.csv`` (``PatientNumber``, 1-based ``SliceNumber``,
    ``No_Hemorrhage``; any number of patients). Pass :meth:`labels` to
    :meth:`PseudoLabeler.label` as ``slice_labels``."""

    def __init__(self, path: PathArg) -> None:
        self._native = _native.NativeSliceLabels.read(str(path))

    @property
    def patients(self) -> list:
        """The BCIHM patient numbers, ascending (empty for the simple layout)."""
        return self._native.patients()

    def labels(self, slices: int, patient: Optional[int] = None) -> list:
        """One bool per slice of a volume with ``slices`` slices (``patient``: its BCIHM patient
        number; ``None`` for the simple layout). Every slice must be labelled exactly once."""
        return self._native.labels(patient, int(slices))


def read_volume(path: PathArg, *, series: Optional[str] = None, allow_non_ct: bool = False,
                memory_limit_mb: int = 0) -> "Image":
    """Reads a NIfTI-1 file (``.nii``, ``.nii.gz``) or a DICOM CT series (its folder, searched
    recursively, or one of its files) into an :class:`Image` in HU. For DICOM, ``series``
    picks a SeriesInstanceUID (default: the CT series with the most slices)."""
    return _native.read_volume(str(path), series, allow_non_ct, memory_limit_mb)


def write_mask(path: PathArg, mask: Any, like: Optional["Image"] = None, *,
               spacing: Optional[Sequence[float]] = None, affine: Any = None,
               algorithm: str = "ichseg") -> None:
    """Writes a mask (shape ``(nz, ny, nx)``, nonzero = hemorrhage) atomically: a DICOM-SEG
    (BINARY) when ``path`` ends in ``.dcm`` (``like`` must come from a DICOM series;
    ``algorithm`` names the model in it), else a uint8 NIfTI with ``like``'s geometry, or with
    ``spacing`` (and ``affine``) when there is no ``like``."""
    _native.write_mask(str(path), _array(mask, "the mask"), like, _triple(spacing, "spacing"),
                       _affine(affine), algorithm)


def write_probability(path: PathArg, probability: Any, like: Optional["Image"] = None, *,
                      spacing: Optional[Sequence[float]] = None, affine: Any = None,
                      algorithm: str = "ichseg") -> None:
    """Writes probabilities in [0, 1] like :func:`write_mask`: a FRACTIONAL DICOM-SEG for
    ``.dcm``, else a float32 NIfTI."""
    _native.write_probability(str(path), _array(probability, "the probability map"), like,
                              _triple(spacing, "spacing"), _affine(affine), algorithm)


def eval(pred: Any, gt: Any, spacing: Any = None) -> Evaluation:  # noqa: A001 - the issue's name for it
    """Scores predictions against ground truth as the paper does (METHOD.md section 6).

    ``pred`` and ``gt``: one mask each, or equal-length lists of masks (pairs may differ in
    shape from one another; each prediction must have its ground truth's shape). Nonzero is
    hemorrhage. ``overall`` pools every pair (sums of intersections and unions over all
    slices), as ``ichseg eval`` does.

    ``spacing`` (x, y, z mm; one for every pair, or one per pair) adds the scores by lesion
    size (``Scores.by_size``), which need each lesion's volume; ``ichseg eval`` takes it from
    the ground truth's header.
    """
    if isinstance(pred, (list, tuple)) != isinstance(gt, (list, tuple)):
        raise InvalidArgumentError("give pred and gt both as masks or both as lists of masks")
    preds = list(pred) if isinstance(pred, (list, tuple)) else [pred]
    gts = list(gt) if isinstance(gt, (list, tuple)) else [gt]
    if len(preds) != len(gts):
        raise InvalidArgumentError(f"{len(preds)} predictions but {len(gts)} ground truths: give them in pairs")
    pairs = [(_array(p, f"pred[{i}]"), _array(g, f"gt[{i}]")) for i, (p, g) in enumerate(zip(preds, gts))]
    voxel_ml = None
    if spacing is not None:
        per_pair = np.asarray(spacing, dtype=np.float64)
        if per_pair.shape == (3,):
            per_pair = np.tile(per_pair, (len(pairs), 1))
        if per_pair.shape != (len(pairs), 3):
            raise InvalidArgumentError(
                f"spacing must be (x, y, z) mm or one such triple per pair ({len(pairs)}), got shape {per_pair.shape}")
        voxel_ml = [float(np.prod(t)) / 1000.0 for t in per_pair]
    r = json.loads(_native.evaluate(pairs, voxel_ml))
    return Evaluation(overall=Scores.from_dict(r["overall"]),
                      per_volume=[Scores.from_dict(s) for s in r["per_volume"]])


__all__ = [
    "Engine", "Segmenter", "PseudoLabeler", "Image", "Segmentation", "PseudoLabel", "Lesion",
    "Abc2", "Density", "Flags", "Midline", "Scores", "SizeBin", "Evaluation", "SliceLabelTable", "read_volume", "write_mask",
    "write_probability", "eval", "Error", "InvalidArgumentError", "IoError", "InvalidImageError",
    "NonFiniteError", "InvalidModelError", "InferenceError", "OutOfMemoryError", "UnsupportedError",
    "CancelledError", "PanicError", "__version__",
]
