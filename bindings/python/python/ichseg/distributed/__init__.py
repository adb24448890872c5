"""Pseudo-labelling and segmentation of a whole dataset on a Ray cluster (docs/SCALE-OUT.md).

    python -m ichseg.distributed pseudo-label --dataset DIR -o OUT --classifier A.onnx ... --address auto
    python -m ichseg.distributed segment --dataset DIR -o OUT --model unet.onnx --address auto

or from Python :func:`pseudo_label_dataset` and :func:`segment_dataset`. One Ray task per volume:

- each task declares its resources (``cpus_per_task`` CPUs, one GPU with ``device="cuda"``,
  ``memory_mb`` of memory, which is also the engine's memory limit);
- at most ``max_in_flight`` tasks are submitted at once, so a 20,000-volume archive never
  floods the scheduler;
- the model files are put in the object store once by the driver; a worker process fetches
  each model the first time it needs it and keeps the loaded network for its next tasks;
- every output is written to a temporary name and renamed, so a killed worker never leaves a
  partial file under an output's name (the retried task removes its predecessor's temporary);
- a volume whose output exists is skipped, so rerunning the same command resumes;
- a task whose worker or node dies is retried (at most ``retries`` times); a volume that
  fails (a corrupt file, a library error, retries exhausted) is recorded in the summary JSON
  with its error, and the others go on;
- the driver prints one line per finished volume (unless ``quiet``).

Inputs and outputs are paths every node can reach (a shared file system, as with the CLI's
``--shard``); the package ``ichseg`` (and Ray) must be installed on every node.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import ichseg

SUMMARY_NAME = "run-summary.json"
BCIHM_CSV = "hemorrhage_diagnosis_raw_ct.csv"


def _ray():
    try:
        import ray
    except ImportError as e:  # the optional extra
        raise ichseg.UnsupportedError(
            "ichseg.distributed needs Ray: pip install 'ray>=2.40' (or the package's extra, ichseg[ray])") from e
    return ray


# ---------------------------------------------------------------------------------------------
# What the driver plans


@dataclass(frozen=True)
class Job:
    """Everything a task needs besides its volume: small and picklable.

    ``kind``: ``"pseudo-label"`` or ``"segment"``; ``models``: the model files' names (for the
    summary) and SHA-256 (the workers' cache key); ``options``: keyword arguments of
    :class:`ichseg.PseudoLabeler` or :class:`ichseg.Segmenter`; ``labels_csv``: the BCIHM
    slice-label file (pseudo-label without ``use_predictions``); ``prob``/``report``: segment
    also writes ``NAME_prob.nii.gz`` / ``NAME.json``.
    """

    kind: str
    models: tuple
    digests: tuple
    options: dict = field(default_factory=dict)
    device: str = "cpu"
    threads: int = 1
    memory_mb: int = 0
    labels_csv: Optional[str] = None
    prob: bool = False
    report: bool = False


def volume_stem(path: Path) -> Optional[str]:
    """``049.nii.gz`` -> ``049``; None for other files."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def dataset_volumes(dataset: Path) -> list:
    """The volumes of a dataset: ``DIR/ct_scans/*.nii[.gz]`` (the BCIHM layout the CLI's
    ``--dataset`` reads), or ``DIR/*.nii[.gz]`` when there is no ``ct_scans/``; sorted."""
    folder = dataset / "ct_scans" if (dataset / "ct_scans").is_dir() else dataset
    if not folder.is_dir():
        raise ichseg.IoError(f"{dataset}: not a folder")
    scans = sorted(p for p in folder.iterdir() if p.is_file() and volume_stem(p))
    if not scans:
        raise ichseg.InvalidArgumentError(f"{folder} holds no .nii or .nii.gz volumes")
    return scans


def outputs_of(job: Job, out_dir: Path, stem: str) -> list:
    """The files a volume's task writes; the mask, written last, marks the volume as done."""
    extra = []
    if job.kind == "segment" and job.prob:
        extra.append(out_dir / f"{stem}_prob.nii.gz")
    if job.kind == "segment" and job.report:
        extra.append(out_dir / f"{stem}.json")
    return extra + [out_dir / f"{stem}.nii.gz"]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# What a worker does


_RUNNERS: dict = {}  # per worker process: the loaded networks of the jobs it has run


def _model_paths(job: Job, refs: Sequence[Any]) -> list:
    """Local files of the job's models: fetched from the object store once per worker machine
    and written atomically, so concurrent workers on one machine never read half a model."""
    ray = _ray()
    folder = Path(tempfile.gettempdir()) / f"ichseg-models-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, digest, ref in zip(job.models, job.digests, refs):
        # under its own name (reports name the model), in a folder named by its content
        path = folder / digest / name
        if not path.exists():
            data = ray.get(ref)
            if hashlib.sha256(data).hexdigest() != digest:
                raise ichseg.InvalidModelError(f"model {name} arrived corrupted")
            path.parent.mkdir(exist_ok=True)
            tmp = path.parent / f".{name}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        paths.append(path)
    return paths


def _runner(job: Job, refs: Sequence[Any]):
    key = (job.kind, job.digests, json.dumps(job.options, sort_keys=True), job.device, job.threads, job.memory_mb)
    runner = _RUNNERS.get(key)
    if runner is None:
        engine = ichseg.Engine(device=job.device, threads=job.threads, memory_limit_mb=job.memory_mb)
        paths = _model_paths(job, refs)
        if job.kind == "segment":
            runner = ichseg.Segmenter(engine, paths[0], **job.options)
        else:
            runner = ichseg.PseudoLabeler(engine, paths, **job.options)
        _RUNNERS.clear()  # one job at a time per worker: free the previous networks
        _RUNNERS[key] = runner
    return runner


_TABLES: dict = {}  # per worker process: the slice-label file, parsed once


def _table(path: str) -> "ichseg.SliceLabelTable":
    key = (path, os.stat(path).st_mtime_ns)
    if key not in _TABLES:
        _TABLES.clear()
        _TABLES[key] = ichseg.SliceLabelTable(path)
    return _TABLES[key]


def _remove_stale_temporaries(target: Path) -> None:
    """The temporaries a killed attempt left for ``target`` (the library names them
    ``.NAME.tmp-PID``; this module ``.NAME.PID.tmp``)."""
    for stale in target.parent.glob(f".{target.name}.*tmp*"):
        try:
            stale.unlink()
        except OSError:
            pass


def _write_json(path: Path, value: Any) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def process_volume(job: Job, scan: str, out_dir: str, model_refs: list) -> dict:
    """Runs one volume and writes its outputs; returns its record for the summary. Errors of the
    volume are caught and returned (a corrupt file is not retried); a dying worker is retried by
    Ray."""
    started = time.perf_counter()
    scan_path, out = Path(scan), Path(out_dir)
    stem = volume_stem(scan_path) or scan_path.name
    record = {"volume": stem, "input": scan}
    try:
        ctx = _ray().get_runtime_context()
        record.update(node=ctx.get_node_id()[:12], pid=os.getpid())
        runner = _runner(job, model_refs)
        image = ichseg.read_volume(scan_path, memory_limit_mb=job.memory_mb)
        targets = outputs_of(job, out, stem)
        for t in targets:
            _remove_stale_temporaries(t)
        if job.kind == "segment":
            result = runner.segment(image)
            if job.prob:
                ichseg.write_probability(targets[0], result.probability, like=image)
            if job.report:
                _write_json(targets[-2], result.report)
            ichseg.write_mask(targets[-1], result.mask, like=image)
            record["lesions"] = len(result.lesions)
            record["total_volume_ml"] = result.total_volume_ml
        else:
            labels = None
            if job.labels_csv is not None:
                if not stem.isdigit():
                    raise ichseg.InvalidArgumentError(
                        f"{scan}: the file name is not a patient number (NNN.nii[.gz])")
                labels = _table(job.labels_csv).labels(image.shape[0], patient=int(stem))
            result = runner.label(image, slice_labels=labels)
            ichseg.write_mask(targets[-1], result.mask, like=image)
            record["mask_voxels"] = int(result.mask.sum())
        record["status"] = "written"
    except Exception as e:  # noqa: BLE001 - every failure of a volume is recorded, not raised
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        if not isinstance(e, ichseg.Error):
            record["traceback"] = traceback.format_exc(limit=8)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


# ---------------------------------------------------------------------------------------------
# The driver


Progress = Optional[Callable[[int, int, dict], None]]


def run(job: Job, dataset: Any, output: Any, model_files: Sequence[Any], *, address: Optional[str] = "auto",
        cpus_per_task: float = 1, max_in_flight: int = 0, retries: int = 2, summary: Any = None,
        progress: Progress = None) -> dict:
    """Runs ``job`` on every volume of ``dataset`` whose outputs are missing from ``output``,
    on the Ray cluster at ``address`` (``"auto"``: the running one; ``"local"``: a new one on
    this machine; else ``HOST:PORT`` or ``ray://...``). Returns the summary it also writes to
    ``summary`` (default ``OUTPUT/run-summary.json``); ``progress(done, total, record)`` is
    called on the driver after each volume."""
    ray = _ray()
    started = time.perf_counter()
    dataset, output = Path(dataset), Path(output)
    scans = dataset_volumes(dataset)
    if retries < 0:
        raise ichseg.InvalidArgumentError(f"retries must be >= 0, got {retries}")
    if cpus_per_task <= 0:
        raise ichseg.InvalidArgumentError(f"cpus_per_task must be > 0, got {cpus_per_task}")
    summary_path = Path(summary) if summary is not None else output / SUMMARY_NAME

    records = {}
    todo = deque()
    for scan in scans:
        stem = volume_stem(scan)
        if outputs_of(job, output, stem)[-1].exists():
            records[stem] = {"volume": stem, "input": str(scan), "status": "skipped"}
        else:
            todo.append(scan)

    if not ray.is_initialized():
        _connect(ray, address)
    output.mkdir(parents=True, exist_ok=True)
    resources = ray.cluster_resources()
    gpu = job.device.startswith("cuda")
    declared = {"num_cpus": cpus_per_task, "num_gpus": 1 if gpu else 0}
    if job.memory_mb:
        declared["memory"] = job.memory_mb * 2**20
    task = ray.remote(process_volume).options(max_retries=retries, retry_exceptions=False, **declared)
    slots = resources.get("GPU", 0) if gpu else resources.get("CPU", 0) / cpus_per_task
    in_flight_cap = max_in_flight if max_in_flight > 0 else max(1, 2 * int(slots))

    refs = [ray.put(Path(f).read_bytes()) for f in model_files] if todo else []
    pending: dict = {}
    done = len(records)
    total = len(scans)
    interrupted = False
    try:
        while todo or pending:
            while todo and len(pending) < in_flight_cap:
                scan = todo.popleft()
                # refs inside a list stay references: a worker fetches a model only when it
                # has not loaded it yet
                ref = task.remote(job, str(scan), str(output), list(refs))
                pending[ref] = scan
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                scan = pending.pop(ref)
                stem = volume_stem(scan)
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker or node died, retries spent
                    record = {"volume": stem, "input": str(scan), "status": "failed",
                              "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                records[stem] = record
                done += 1
                if progress is not None:
                    progress(done, total, record)
    except KeyboardInterrupt:
        interrupted = True
        for ref in pending:
            ray.cancel(ref, force=True)

    ordered = [records[volume_stem(s)] for s in scans if volume_stem(s) in records]
    count = {k: sum(r["status"] == k for r in ordered) for k in ("written", "skipped", "failed")}
    wall = time.perf_counter() - started
    result = {
        "command": job.kind,
        "dataset": str(dataset),
        "output": str(output),
        "models": list(job.models),
        "options": job.options,
        "ichseg_version": ichseg.__version__,
        "ray_version": ray.__version__,
        "cluster": {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "cpus": resources.get("CPU", 0),
                    "gpus": resources.get("GPU", 0)},
        "task": {"cpus": cpus_per_task, "gpus": 1 if gpu else 0, "memory_mb": job.memory_mb,
                 "threads": job.threads, "device": job.device, "max_in_flight": in_flight_cap,
                 "retries": retries},
        "volumes": total,
        **count,
        "interrupted": interrupted,
        "wall_s": round(wall, 3),
        "summary": str(summary_path),
        "results": ordered,
    }
    _write_json(summary_path, result)
    if interrupted:
        raise KeyboardInterrupt
    return result


def _connect(ray: Any, address: Optional[str]) -> None:
    """Joins the cluster at ``address``, or says clearly that there is none."""
    if address == "local":
        ray.init(include_dashboard=False, log_to_driver=False)
        return
    host, _, port = (address or "").rpartition(":")
    if host and port.isdigit() and "://" not in address:
        # Ray would wait a long while for a GCS that is not there: ask the port first
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise ichseg.InvalidArgumentError(f"no Ray cluster at {address}: {e}") from None
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise ichseg.InvalidArgumentError(
            f"no Ray cluster at {address}: {e} (start one with `ray start --head`, or pass --address local)") from None


def _job(kind: str, models: Sequence[Any], options: dict, device: str, threads: int, memory_mb: int,
         **extra: Any) -> Job:
    paths = [Path(m) for m in models]
    for p in paths:
        if not p.is_file():
            raise ichseg.IoError(f"{p}: model file not found")
    return Job(kind=kind, models=tuple(p.name for p in paths), digests=tuple(_digest(p) for p in paths),
               options=dict(options), device=device, threads=threads, memory_mb=memory_mb, **extra)


def pseudo_label_dataset(dataset: Any, output: Any, classifiers: Sequence[Any], *, use_predictions: bool = False,
                         device: str = "cpu", threads: int = 0, memory_mb: int = 0, cpus_per_task: float = 1,
                         **kwargs: Any) -> dict:
    """``ichseg pseudo-label --dataset`` on Ray: writes ``OUTPUT/NNN.nii.gz`` for every volume of
    ``dataset`` (BCIHM layout; slice labels from its ``hemorrhage_diagnosis_raw_ct.csv`` unless
    ``use_predictions``). ``kwargs``: :class:`ichseg.PseudoLabeler`'s options, then :func:`run`'s
    (``address``, ``max_in_flight``, ``retries``, ``summary``, ``progress``)."""
    run_args = {k: kwargs.pop(k) for k in ("address", "max_in_flight", "retries", "summary", "progress") if k in kwargs}
    if isinstance(classifiers, (str, bytes, os.PathLike)):
        raise ichseg.InvalidArgumentError("classifiers must be a list of model paths")
    labels_csv = None
    if not use_predictions:
        csv = Path(dataset) / BCIHM_CSV
        if not csv.is_file():
            raise ichseg.InvalidArgumentError(
                f"{csv} not found: the dataset needs per-slice labels, or pass use_predictions=True")
        ichseg.SliceLabelTable(csv)  # a broken table fails here, before any task
        labels_csv = str(csv.resolve())
    job = _job("pseudo-label", classifiers, kwargs, device, threads or max(1, int(cpus_per_task)), memory_mb,
               labels_csv=labels_csv)
    return run(job, dataset, output, classifiers, cpus_per_task=cpus_per_task, **run_args)


def segment_dataset(dataset: Any, output: Any, model: Any, *, prob: bool = False, report: bool = False,
                    device: str = "cpu", threads: int = 0, memory_mb: int = 0, cpus_per_task: float = 1,
                    **kwargs: Any) -> dict:
    """``ichseg segment`` on every volume of ``dataset``: ``OUTPUT/NAME.nii.gz`` (and with
    ``prob``/``report`` ``NAME_prob.nii.gz``/``NAME.json``). ``kwargs``:
    :class:`ichseg.Segmenter`'s options, then :func:`run`'s."""
    run_args = {k: kwargs.pop(k) for k in ("address", "max_in_flight", "retries", "summary", "progress") if k in kwargs}
    job = _job("segment", [model], kwargs, device, threads or max(1, int(cpus_per_task)), memory_mb,
               prob=prob, report=report)
    return run(job, dataset, output, [model], cpus_per_task=cpus_per_task, **run_args)


__all__ = ["Job", "run", "pseudo_label_dataset", "segment_dataset", "process_volume", "dataset_volumes",
           "outputs_of", "volume_stem", "SUMMARY_NAME"]
