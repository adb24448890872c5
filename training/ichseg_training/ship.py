"""Reproduces the shipped models from scratch: phantoms, split, two slim classifiers, the
fully supervised U-Net, pseudo masks from the classifiers and the weakly supervised U-Net
trained on them, held-out scores, the sample volume and ``models/MODELS.md``.

    export DATA=~/ichseg-data   # the work folder, outside the repository
    PYTHONPATH=training nice -n 19 python -m ichseg_training.ship --work "$DATA" \\
        --models models [--ichseg target/release/ichseg] [--seed 2025] [--count 800] [--jobs 2]

Run it from the repository root (the paths printed into MODELS.md are relative to it); the
generated data, checkpoints and predictions stay under ``--work`` (keep it out of the
repository).  MODELS.md and the models' run records name no folder of the machine: the work
folder is written as ``$DATA``, the ichseg binary relative to the repository
(``target/release/ichseg`` when it lies outside), other paths in the repository relative to it
(``portable``).  Every step is a subprocess whose exact command line, wall time and output are
recorded in ``--work/ship.json``; the numbers in MODELS.md are read from the trainers' run
records and the evaluators' JSON.  ``--skip-existing`` reuses the phantoms and any model whose
run record exists (to redo only the later steps).  ``--smoke`` runs every step on six tiny
phantoms with one-epoch trainings: a check of the pipeline, not models to ship.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

from . import common as C
from . import datasets as D

TRAINING = pathlib.Path(__file__).resolve().parent.parent
REPO = TRAINING.parent

# The shipped configuration, chosen so that the three trainings (side by side, one thread each:
# faster than 2 threads on a loaded machine) fit in about half an hour on a shared 2-core CPU.
PHANTOM_SIZE = 256
INPUT_SIZE = 160
# 800 volumes (480 training): with 120 training volumes (200 phantoms) the classifiers memorised
# their 52 bleeding volumes; with 360 (600 phantoms) slim34's CAMs still lit the skull rim instead
# of the bleeds, with 520 they found them (docs/RESULTS.md, "How the shipped set got here").
COUNT = 800
CLASSIFIERS = (
    # (file name, arch, width, epochs)
    ("classifier_slim34.onnx", "slim34", 8, 30),
    ("classifier_slim50.onnx", "slim50", 8, 20),
)
CLASSIFIER_ARGS = ["--batch", 32, "--neg-fraction", 0.25, "--select", "auc", "--patience", 20,
                   "--max-minutes", 45, "--threads", 1]
UNET_FILE = "unet.onnx"
WEAK_FILE = "unet_weak.onnx"
# BLA thresholds TH tried on the validation split with `ichseg ablate`; the pseudo masks use the
# one whose final masks (after dCRF and the bone cut) score the best validation mIoU (METHOD.md
# section 4: defaults picked by validation mIoU). The other settings are the library's defaults.
THRESHOLDS = "0.15,0.2,0.25,0.3,0.35,0.4"  # as `ichseg ablate --threshold` takes them
# Then, at that TH, the dense CRF's label confidence and bilateral Potts weight are chosen the same
# way from this grid (METHOD.md's 0.7 / 10 first, so a tie keeps it); docs/RESULTS.md, "The dCRF's
# settings for these classifiers", found 0.9 / 3 best on val for the skull-stripped pair.
CRF_CONFIDENCES = "0.7,0.9"  # as `ichseg ablate --crf-confidence` takes them
CRF_BILATERAL = "10,5,3"  # as `ichseg ablate --crf-bilateral-compat` takes them
# The bone cut (`--max-hu`, not in the paper): voxels above this CT value leave the final pseudo
# masks. Without it 88 % of the 800-phantom set's final pseudo-mask voxels were skull, and the weak
# U-Net learned to mark bone; 100 HU was the best of 100 / 115 / 150 HU on val (docs/RESULTS.md).
MAX_HU = 100  # = ichseg::pipeline::pseudo::DEFAULT_MAX_HU, the C options' default
# The small-lesion filter (`--min-lesion-ml`, not in the paper): 3D components under this volume
# leave the final pseudo masks, after the bone cut. Nearly all false components were specks of a
# few voxels; 0.1 mL was the best of 0.02 / 0.05 / 0.1 mL on val (TH 0.2), and a weak U-Net trained
# on masks filtered so scored better on val (docs/RESULTS.md).
MIN_LESION_ML = 0.1
# The blood-density cut (`--min-hu`, not in the paper): voxels below this CT value leave the final
# pseudo masks, after the bone cut; acute blood is denser than the brain the maps and the dCRF
# spread over. 42 HU was the best of 25-50 HU on val for the shipped pair (docs/RESULTS.md, "The
# blood-density cut").
MIN_HU = 42  # = ichseg::pipeline::pseudo::SUGGESTED_MIN_HU, the C options' default
# The paper's Table 4 (BHSD, BCIHM pseudo-mask mIoU), in the order of `ichseg ablate`'s rows for
# two classifiers (METHOD.md section 7).
PAPER_TABLE4 = ((52.5, 50.1), (53.1, 50.3), (59.1, 58.3), (60.7, 60.3), (61.8, 61.9), (62.6, 63.7),
                (63.1, 63.9), (65.1, 64.4))
# A held-out phantom family (issue 20 item 4): the `shifted` variation profile (docs/PHANTOMS.md),
# mostly outside the ranges of the training data, with a seed no training set uses; every volume
# is a test volume. The classifiers, the tuned pseudo-labelling and both U-Nets are scored on it.
SHIFTED_SEED = 4242
SHIFTED_COUNT = 80
UNET_ARGS = ["--base-width", 8, "--depth", 4, "--epochs", 15, "--batch", 8,
             "--neg-fraction", 0.15, "--val-every", 2, "--patience", 12, "--threads", 1]
# The U-Nets' input (`--unet-size`): the classifiers' 160, or the phantoms' native 256 (docs/RESULTS.md,
# "The fully supervised U-Net at the native 256x256 input"), with its training patch and time cap.
UNET_INPUTS = {160: ["--crop", 96, "--max-minutes", 45], 256: ["--crop", 128, "--max-minutes", 100]}


def time_scaled(args, scale):
    """A trainer's flags with its time cap (``--max-minutes M``) multiplied by ``scale``: the caps
    are sized for the 2-core AMD EPYC (Zen 4) of the shipped runs, and a slower machine would
    stop the trainings before their planned epochs (``--time-scale``)."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == "--max-minutes":
            out[i + 1] = round(float(out[i + 1]) * scale, 1)
    return out


def shown(cmd) -> str:
    """A command as text, with this interpreter shown as ``python``."""
    return " ".join(shlex.quote("python" if c == sys.executable else str(c)) for c in cmd)


def portable(text, work=(), ichseg=None, repo=REPO) -> str:
    """``text`` (a command line, a path, a message) as MODELS.md and the run records show it, with
    no folder of this machine: the work folder(s) ``work`` (absolute; a string or several) become
    ``$DATA``, the ichseg binary ``ichseg`` its path relative to ``repo`` (``target/release/ichseg``
    when it lies outside), and any other path in ``repo`` relative to it. Only whole path
    components match (``/data/ship800`` leaves ``/data/ship8000`` alone); a shell-quoted path
    (``'/data/a b/x'``) becomes ``"$DATA"'/a b/x'``, which a shell still expands."""
    repo = pathlib.Path(repo).resolve()
    subs = {}
    for w in ([work] if isinstance(work, (str, os.PathLike)) else work or ()):
        if w and os.path.isabs(w) and str(w).rstrip("/"):
            subs[str(w).rstrip("/")] = "$DATA"
    if ichseg and os.path.isabs(ichseg):
        exe = pathlib.Path(ichseg)
        try:
            subs[str(exe)] = exe.relative_to(repo).as_posix()
        except ValueError:
            subs[str(exe)] = "target/release/ichseg"
    if str(repo) != "/":
        subs.setdefault(str(repo), ".")
    if not subs:
        return text
    prefixes = sorted(subs, key=len, reverse=True)  # the longest match wins (a work folder in the repo)
    pattern = re.compile(r"(?<![\w./-])(')?(" + "|".join(map(re.escape, prefixes)) + r")(?![\w.-])(/)?")

    def sub(m):
        quote, prefix, slash = m.group(1) or "", m.group(2), m.group(3) or ""
        new = subs[prefix]
        if new == ".":  # a path in the repository: relative to it
            return quote + ("" if slash else ".")
        if quote and new.startswith("$"):
            return f'"{new}"' + quote + slash
        return quote + new + slash

    return pattern.sub(sub, str(text))


def portable_doc(doc, work=(), ichseg=None, repo=REPO):
    """Every string of a JSON document (a run record) through ``portable``."""
    if isinstance(doc, str):
        return portable(doc, work, ichseg, repo)
    if isinstance(doc, list):
        return [portable_doc(v, work, ichseg, repo) for v in doc]
    if isinstance(doc, dict):
        return {k: portable_doc(v, work, ichseg, repo) for k, v in doc.items()}
    return doc


def portable_records(models, work=(), ichseg=None) -> None:
    """Rewrites the shipped models' run records (``*.train.json``, written by the trainers with the
    absolute paths they were given) through ``portable``; records already so are left alone."""
    for f in [f for f, *_ in CLASSIFIERS] + [UNET_FILE, WEAK_FILE]:
        path = C.record_path(pathlib.Path(models) / f)
        if path.exists():
            rec = json.loads(path.read_text())
            new = portable_doc(rec, work, ichseg)
            if new != rec:
                C.write_json(path, new)


def work_argv(argv, given) -> list:
    """``argv`` with the ``--work`` folder ``given`` written as an absolute path, so that
    ``portable`` shows it as ``$DATA`` however it was typed."""
    absolute = str(pathlib.Path(given).resolve())
    out, after_work = [], False
    for tok in argv:
        if after_work and tok == given:
            tok = absolute
        elif tok == f"--work={given}":
            tok = f"--work={absolute}"
        after_work = tok == "--work"
        out.append(tok)
    return out


def run_step(steps, name, cmd, logs, cwd=None, stdout=None):
    """Runs ``cmd`` (a list) with its output in ``logs/NAME.log`` (standard output in the file
    ``stdout`` instead, when given); records the command line, wall time and return code in
    ``steps``; returns the log's text, or the ``stdout`` file's."""
    text = shown(cmd) + (f" > {shlex.quote(str(stdout))}" if stdout else "")
    print(f"== {name}: {text}", flush=True)
    log = logs / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".log")
    t0 = time.time()
    with open(log, "w") as fh, (open(stdout, "w") if stdout else contextlib.nullcontext(fh)) as out:
        res = subprocess.run([str(c) for c in cmd], cwd=cwd, text=True, stdout=out,
                             stderr=fh if stdout else subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": str(TRAINING)})
    wall = time.time() - t0
    steps.append({"step": name, "command": text, "cwd": str(cwd or os.getcwd()), "wall_seconds": wall,
                  "returncode": res.returncode, "log": str(log)})
    print(f"== {name}: done in {wall:.0f} s (exit {res.returncode}, log {log})", flush=True)
    if res.returncode != 0:
        raise RuntimeError(f"step {name} failed with code {res.returncode}; see {log}")
    return pathlib.Path(stdout or log).read_text()


def step_files() -> dict:
    """The model file each training step makes, by the step's name ("train NAME")."""
    return {f"train {arch}": f for f, arch, *_ in CLASSIFIERS} | {"train unet": UNET_FILE, "train unet_weak": WEAK_FILE}


def _trained_in(record, run) -> bool:
    """Whether the run record's training started while ``run`` (a ship.json's times) ran."""
    from datetime import datetime

    times = ((record or {}).get("started"), run.get("started"), run.get("finished"))
    if not all(times):
        return False
    trained, start, end = map(datetime.fromisoformat, times)
    return start <= trained <= end


def carry_earlier_run(doc, earlier, records) -> None:
    """With ``--skip-existing``, the models kept from an earlier run in the same ``--work`` keep
    their provenance: that run's training steps which this run skipped go first in
    ``doc["steps"]``, and ``doc["earlier_run"]`` says when it ran and how long it trained. A step
    is carried only when the model's run record (``records``, by file) says it was trained
    during that run: a model trained outside it and copied in is listed as such instead."""
    have = {s["step"] for s in doc["steps"]}
    files = step_files()

    def made_by_it(s):
        run = earlier.get("earlier_run", earlier) if s.get("carried") else earlier
        return _trained_in(records.get(files.get(s["step"])), run)

    carried = [s for s in earlier.get("steps", [])
               if s["step"].startswith("train ") and s["step"] not in have and made_by_it(s)]
    if not carried:
        return
    doc["steps"] = [{**s, "carried": True} for s in carried] + doc["steps"]
    doc["earlier_run"] = earlier.get("earlier_run") or {
        k: earlier.get(k) for k in ("started", "finished", "wall_seconds", "training_wall_seconds", "git_commit")}


def _final_miou(run) -> float:
    """The mIoU of an ``ichseg ablate --json`` run's final row (after the dCRF), as a ranking key."""
    return C.miou_or_worst(run["rows"][-1]["scores"]["miou"])


def best_threshold(ablation) -> float:
    """The TH of the ``ichseg ablate --json`` runs whose final row (after dCRF) scores the best
    mIoU; ties and undefined scores go to the lowest TH."""
    best = max(ablation["runs"], key=lambda run: (_final_miou(run), -run["setting"]["threshold"]))
    return round(best["setting"]["threshold"], 4)


def best_crf(ablation) -> dict:
    """The dCRF's ``label_confidence`` and ``bilateral_compat`` of the ``ichseg ablate --json``
    runs whose final row scores the best mIoU; a tie goes to the run listed first."""
    best = max(ablation["runs"], key=_final_miou)  # max keeps the first of equals
    return {k: round(best["setting"]["crf"][k], 4) for k in ("label_confidence", "bilateral_compat")}


def crf_flags(crf) -> list:
    """`ichseg pseudo-label` / `ablate` flags for the dCRF settings of :func:`best_crf`."""
    return ["--crf-confidence", f"{crf['label_confidence']:g}", "--crf-bilateral-compat", f"{crf['bilateral_compat']:g}"]


def parse_seeds(text, default) -> list:
    """``--unet-seeds``: distinct integers in the order given; none given: ``[default]``."""
    if text is None:
        return [default]
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{text!r}: comma-separated integers") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{text!r}: a seed given twice")
    return seeds


def best_seed(val_miou: dict):
    """The seed whose U-Net has the best ground-truth val mIoU; a tie, or undefined scores, keep
    the seed given first."""
    return max(val_miou, key=lambda seed: C.miou_or_worst(val_miou[seed]))


def side_by_side(runs: int, slices: int, size: int, cores, available) -> int:
    """How many of a U-Net's ``runs`` trainings (one per seed) run at once: one per core, since
    each trains with one thread, and as many as ``available`` bytes of memory hold: each holds its
    ``slices`` training and validation slices at ``size`` x ``size``, 5 bytes a pixel (docs/TRAINING.md,
    "Memory"), plus a tenth and 1 GiB for PyTorch. Unknown cores or memory: one at a time."""
    if not cores or not available:
        return 1
    each = slices * size * size * 5 * 1.1 + 2 ** 30
    return max(1, min(runs, cores, int(available // each)))


def available_memory():
    """``MemAvailable`` of /proc/meminfo in bytes; None where there is none (not Linux)."""
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def deal(steps: list, lanes: int) -> list:
    """``steps`` dealt round-robin into ``lanes`` lists, each run in order."""
    return [steps[i::lanes] for i in range(lanes)]


def start_lanes(lanes):
    """Starts lists of (callable) steps: the lanes side by side, each lane's steps in order.
    Returns the function that waits for them, raises the first error and returns when the
    last lane ended (``time.time()``)."""
    import threading

    errors, ended = [], [time.time()]

    def go(lane):
        try:
            for step in lane:
                step()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        ended.append(time.time())

    threads = [threading.Thread(target=go, args=(lane,)) for lane in lanes if lane]
    for t in threads:
        t.start()

    def wait():
        for t in threads:
            t.join()
        if errors:
            raise SystemExit(f"failed: {errors[0]}")
        return max(ended)

    return wait


def run_lanes(lanes):
    """Runs lists of (callable) steps: the lanes side by side, each lane's steps in order."""
    return start_lanes(lanes)()


def strip_dataset(steps, exe, data, out, margin_mm, logs, resume, name="skull-strip"):
    """``ichseg skull-strip --dataset``: ``data`` with air outside the intracranial mask, into
    ``out``; returns ``out``. With ``resume`` the scans already there are kept, else ``out`` is
    made afresh (scans of earlier phantoms must not be reused)."""
    if not resume:
        shutil.rmtree(out, ignore_errors=True)
    run_step(steps, name, [exe, "skull-strip", "--dataset", data, "-o", out, "--margin-mm", margin_mm, "--quiet"],
             logs)
    return out


def keep_pseudo_masks(pseudo, settings_file, settings, resume) -> bool:
    """Whether the masks in ``pseudo`` stay: only with ``resume`` and the same ``settings`` (the
    pseudo-labelling command and the classifiers' hashes) as the run that made them, since
    `pseudo-label --dataset` skips the masks that exist. Otherwise they go; ``settings_file``
    then says what the masks about to be made are."""
    same = resume and settings_file.is_file() and json.loads(settings_file.read_text()) == settings
    if not same:
        shutil.rmtree(pseudo, ignore_errors=True)
    C.write_json(settings_file, settings)
    return same


def same_patients(split, other) -> None:
    """Raises unless the split files ``split`` and ``other`` put every patient in the same subset:
    a classifier trained on other phantoms of the test patients would have seen them."""
    first, second = (json.loads(pathlib.Path(f).read_text())["splits"] for f in (split, other))
    if {k: sorted(v) for k, v in first.items()} != {k: sorted(v) for k, v in second.items()}:
        raise RuntimeError(f"{other} splits the patients otherwise than {split}: the classifiers' phantoms "
                           "must keep the U-Nets' test patients out of training")


def py(module, *args):
    return [sys.executable, "-m", module, *args]


def main(argv=None):
    global PHANTOM_SIZE, INPUT_SIZE, CLASSIFIERS, CLASSIFIER_ARGS, UNET_ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="data, checkpoints and predictions (outside the repo)")
    ap.add_argument("--models", default="models", help="where the shipped files go")
    ap.add_argument("--ichseg", default=None, help="the ichseg binary (default: PATH, then target/release/ichseg)")
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--count", type=int, default=None, help=f"phantom volumes (default {COUNT})")
    ap.add_argument("--jobs", type=int, default=2, help="processes for the phantom generation")
    ap.add_argument("--profile", choices=("standard", "wide"), default="standard",
                    help="variation profile of the training phantoms (docs/PHANTOMS.md)")
    ap.add_argument("--classifier-profile", choices=("standard", "wide"), default=None,
                    help="variation profile of the classifiers' own training phantoms (default: --profile); "
                         "another profile than the U-Nets' gets phantoms of its own (same seed, count and "
                         "split) in --work/PROFILE")
    ap.add_argument("--shifted-count", type=int, default=None,
                    help=f"volumes of the held-out shifted family (default {SHIFTED_COUNT}; 0: none)")
    ap.add_argument("--skull-strip-mm", type=float, default=None, metavar="MM",
                    help="train the classifiers on skull-stripped phantoms (`ichseg skull-strip --margin-mm MM`); "
                         "they carry ichseg.skull_strip_mm, so the library strips their inputs itself")
    ap.add_argument("--unet-size", type=int, choices=sorted(UNET_INPUTS), default=INPUT_SIZE,
                    help=f"the U-Nets' input size (default {INPUT_SIZE}, the classifiers')")
    ap.add_argument("--unet-seeds", default=None, metavar="S,S,...",
                    help="train each U-Net once per seed and ship the one with the best ground-truth val mIoU, "
                         "as TH, the dCRF and the filters are chosen (default: --seed alone); both U-Nets get the "
                         "same seeds, so the weak / fully supervised comparison stays fair")
    ap.add_argument("--skip-existing", action="store_true",
                    help="keep the phantoms, stripped copies and finished models (those with a run record) there are")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run: --skip-existing, the trainings go on from their checkpoints "
                         "(their time caps count the epochs before), and pseudo masks of the same settings are kept")
    ap.add_argument("--time-scale", type=float, default=1.0, metavar="F",
                    help="multiply every training's time cap by F (default 1: caps sized for a 2-core AMD EPYC, "
                         "Zen 4; a machine that trains slower needs more, or its trainings stop early)")
    ap.add_argument("--smoke", action="store_true", help="tiny data, one epoch each: a pipeline check")
    ap.add_argument("--report-only", action="store_true",
                    help="only rewrite MODELS.md from --work/ship.json and the run records")
    a = ap.parse_args(argv)
    if not 0 < a.time_scale < float("inf"):
        ap.error(f"--time-scale {a.time_scale}: must be a positive number")
    a.skip_existing = a.skip_existing or a.resume
    try:
        seeds = parse_seeds(a.unet_seeds, a.seed)
    except ValueError as e:
        ap.error(f"--unet-seeds {e}")
    resume = ["--resume"] if a.resume else []
    if a.skull_strip_mm is not None:
        try:
            C.check_skull_strip_mm(a.skull_strip_mm)
        except ValueError as e:
            ap.error(f"--skull-strip-mm: {e}")
    # the command as recorded, with the work folder absolute (MODELS.md shows it as $DATA)
    argv_shown = work_argv(sys.argv[1:] if argv is None else list(argv), a.work)
    if a.report_only:
        doc = json.loads((pathlib.Path(a.work) / "ship.json").read_text())
        models = pathlib.Path(a.models)
        split_doc = json.loads((pathlib.Path(a.work) / "split.json").read_text())
        doc["error_analysis"] = error_analysis(a.work, models, split_doc["splits"]["test"])
        doc["report_rewritten"] = {"command": C.command_line("ichseg_training.ship", argv_shown), "at": C.now_iso()}
        C.write_json(pathlib.Path(a.work) / "ship.json", doc)
        # the work folder of the run, and where it is now (moved, or named by another path)
        works = (doc.get("work"), str(pathlib.Path(a.work).resolve()))
        portable_records(models, works, doc.get("ichseg"))
        write_models_md(models, doc, read_records(models), pathlib.Path(a.work) / "split.json", works)
        return 0
    if a.count is None:
        a.count = 6 if a.smoke else COUNT
    if a.shifted_count is None:
        a.shifted_count = 3 if a.smoke else SHIFTED_COUNT
    if a.smoke:
        PHANTOM_SIZE, INPUT_SIZE = 64, 64
        CLASSIFIERS = tuple((f, arch, 4, 1) for f, arch, _, _ in CLASSIFIERS)
        CLASSIFIER_ARGS = ["--batch", 8, "--threads", 1]
        UNET_ARGS = ["--base-width", 4, "--depth", 3, "--epochs", 1, "--batch", 4, "--threads", 1]
        a.unet_size, unet_input = 64, ["--crop", 32]
    else:
        unet_input = time_scaled(UNET_INPUTS[a.unet_size], a.time_scale)
        CLASSIFIER_ARGS = time_scaled(CLASSIFIER_ARGS, a.time_scale)
    unet_args = ["--size", a.unet_size, *UNET_ARGS, *unet_input]
    input_text = f", {a.unet_size}x{a.unet_size} input" if a.unet_size != INPUT_SIZE else ""

    from . import evaluate as EV

    work = pathlib.Path(a.work).resolve()
    models = pathlib.Path(a.models)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    exe = str(pathlib.Path(EV.find_ichseg(a.ichseg)).resolve())  # steps run in other folders
    data = work / "phantoms"
    split = work / "split.json"
    steps = []
    t_all = time.time()
    started = C.now_iso()

    def phantoms_and_split(name, out, profile, split_out):
        """``a.count`` phantoms of ``profile`` (seed ``a.seed``) into ``out``, unless they are
        there with --skip-existing, and their split into ``split_out``."""
        if not (a.skip_existing and (out / "hemorrhage_diagnosis_raw_ct.csv").exists()):
            extra = ["--slices-min", 8, "--slices-max", 10] if a.smoke else []
            run_step(steps, f"phantoms{name}", py("ichseg_training.phantom", "--out", out, "--count", a.count,
                                                  "--seed", a.seed, "--size", PHANTOM_SIZE, "--jobs", a.jobs,
                                                  "--profile", profile, *extra, *resume), logs)
        run_step(steps, f"split{name}", py("ichseg_training.datasets", "split", "--layout", "bcihm", "--root", out,
                                           "--seed", a.seed, "--out", split_out), logs)

    phantoms_and_split("", data, a.profile, split)

    def phantoms_of(profile):
        return (f"ichseg phantoms (seed {a.seed}, {PHANTOM_SIZE}x{PHANTOM_SIZE}"
                + (f", profile {profile}" if profile != "standard" else "") + "), training split")

    trained_on = phantoms_of(a.profile)
    # The classifiers' own phantoms, when their profile is not the U-Nets' (issue 20: classifiers
    # trained on wider variation, U-Nets on the data they are scored on): the same seed, count
    # and split, in a folder of their own; the classifiers are still scored on `data`.
    classifier_profile = a.classifier_profile or a.profile
    classifier_work = work if classifier_profile == a.profile else work / classifier_profile
    train_data, train_split = data, split
    if classifier_work != work:
        train_data, train_split = classifier_work / "phantoms", classifier_work / "split.json"
        phantoms_and_split(f" {classifier_profile}", train_data, classifier_profile, train_split)
        same_patients(split, train_split)
    # What the classifiers train and are scored on: the phantoms, or their skull-stripped copies
    # (ablate and pseudo-label read the phantoms: the library strips for such classifiers).
    classifier_data, strip_args, classifier_trained_on = data, [], phantoms_of(classifier_profile)
    if a.skull_strip_mm is not None:
        classifier_data = strip_dataset(steps, exe, data, work / "stripped", a.skull_strip_mm, logs,
                                        a.skip_existing)
        if classifier_work != work:
            train_data = strip_dataset(steps, exe, train_data, classifier_work / "stripped", a.skull_strip_mm, logs,
                                       a.skip_existing, f"skull-strip {classifier_profile}")
        else:
            train_data = classifier_data
        strip_args = ["--skull-strip-mm", a.skull_strip_mm]
        classifier_trained_on += f", air outside the intracranial mask (margin {a.skull_strip_mm:g} mm)"
    lanes = []
    for fname, arch, width, epochs in CLASSIFIERS:
        out = models / fname
        if a.skip_existing and C.record_path(out).exists():
            continue
        cmd = py("ichseg_training.train_classifier", "--data", train_data, "--split", train_split, "--arch", arch,
                 "--width", width, "--size", INPUT_SIZE, "--epochs", epochs, *CLASSIFIER_ARGS, "--seed", a.seed,
                 *strip_args, "--out", out, "--ckpt-dir", classifier_work / "ckpt" / arch,
                 "--trained-on", classifier_trained_on, *resume)
        lanes.append([lambda n=f"train {arch}", c=cmd: run_step(steps, n, c, logs)])

    def seed_runs(fname):
        """(seed, model file, checkpoint folder, step name) of each training of a U-Net: with one
        seed the shipped file itself, with several one file per seed in the work folder."""
        stem = fname.removesuffix(".onnx")
        if len(seeds) == 1:
            return [(seeds[0], models / fname, work / "ckpt" / stem, f"train {stem}")]
        return [(seed, work / "seeds" / f"{stem}_s{seed}.onnx", work / "ckpt" / f"{stem}_s{seed}",
                 f"train {stem} seed {seed}") for seed in seeds]

    def train_unets(fname, train_args, extra=(), busy=0):
        """The lanes of steps that train a U-Net with each seed: side by side as far as the cores
        (less ``busy``, the other trainings that run at the same time) and the memory allow
        (``side_by_side``), else one after another; none for a finished model or seed with
        ``--skip-existing``."""
        if a.skip_existing and C.record_path(models / fname).exists():
            return []
        todo = [lambda c=py("ichseg_training.train_unet", *train_args, "--seed", seed, "--out", out,
                            "--ckpt-dir", ckpt, *extra), n=name: run_step(steps, n, c, logs)
                for seed, out, ckpt, name in seed_runs(fname)
                if not (a.skip_existing and C.record_path(out).exists())]
        if len(todo) < 2:
            return [todo]
        ds = D.BCIHM(data)
        slices = sum(ds.n_slices(p) for subset in ("train", "val") for p in C.read_patients(split, ds, subset))
        n = side_by_side(len(todo), slices, a.unet_size, max(1, (os.cpu_count() or 1) - busy), available_memory())
        print(f"== {fname}: {len(todo)} trainings, {n} at a time ({slices} slices at {a.unet_size}x{a.unet_size} "
              f"each)", flush=True)
        return deal(todo, n)

    unet_out = models / UNET_FILE
    unet_lanes = train_unets(UNET_FILE, ["--data", data, "--masks", data / "masks", "--split", split, *unet_args,
                                         "--trained-on", trained_on + ", ground-truth masks (fully supervised)"
                                         + input_text], resume, busy=len(lanes))
    # With the classifiers trained before, the weak side's scoring and pseudo-labelling (they need
    # only the classifiers) run on the cores the fully supervised U-Net's trainings leave idle,
    # while those train; the trainings keep their cores, so their time caps mean what they did.
    busy = sum(1 for lane in unet_lanes if lane)
    spare = (os.cpu_count() or 1) - busy if busy and not lanes else 0
    t_train = time.time()
    unet_trained = start_lanes(unet_lanes) if spare > 0 else None
    if unet_trained is None:
        train_wall = run_lanes(lanes + unet_lanes) - t_train

    scores = {}
    for fname, arch, *_ in CLASSIFIERS:
        js = work / "eval" / f"{arch}_test.json"
        run_step(steps, f"eval {arch}", py("ichseg_training.evaluate", "classifier", "--model", models / fname,
                                           "--data", classifier_data, "--split", split, "--subset", "test", "--json", js), logs)
        scores[arch] = json.loads(js.read_text())
    def eval_unet(key, model, pred, subsets=("test", "val"), on=(data, split), tag=""):
        """Scores ``model`` on the ``subsets`` of dataset and split ``on`` with ``ichseg segment`` +
        ``ichseg eval`` into scores[KEY_SUBSET] (scores[KEY_TAG] with a ``tag``): the network's own
        masks, without a small-lesion filter (``choose_filter`` scores those)."""
        for subset in subsets:
            name = tag or subset
            js = work / "eval" / f"{key}_{name}.json"
            run_step(steps, f"eval {key} {name}", py(
                "ichseg_training.evaluate", "unet", "--model", model, "--data", on[0], "--split", on[1],
                "--subset", subset, "--ichseg", exe, "--pred-dir", work / pred / name, "--min-lesion-ml", 0,
                "--json", js), logs)
            scores[f"{key}_{name}"] = json.loads(js.read_text())

    def choose_filter(key, model):
        """The U-Net's small-lesion filter, chosen on val and written into it (``evaluate filter``
        on the unfiltered predictions ``eval_unet`` made)."""
        js = work / "eval" / f"{key}_filter.json"
        run_step(steps, f"filter {key}", py(
            "ichseg_training.evaluate", "filter", "--model", model, "--data", data, "--split", split,
            "--ichseg", exe, "--val-scores", work / "eval" / f"{key}_val.json",
            "--test-scores", work / "eval" / f"{key}_test.json", "--json", js, "--write"), logs)
        scores[f"{key}_filter"] = json.loads(js.read_text())

    def keep_best_seed(key, fname):
        """With several seeds: scores each seed's U-Net on val (ground truth, unfiltered) and
        copies the best, with its run record, to the models folder."""
        runs = seed_runs(fname)
        if len(runs) == 1 or not all(C.record_path(out).exists() for _, out, *_ in runs):
            return
        for seed, out, *_ in runs:
            eval_unet(f"{key}_s{seed}", out, f"pred_{key}_s{seed}", ("val",))
        val_miou = {seed: scores[f"{key}_s{seed}_val"]["overall"]["miou"] for seed, *_ in runs}
        chosen = best_seed(val_miou)
        out = next(out for seed, out, *_ in runs if seed == chosen)
        shutil.copyfile(out, models / fname)
        shutil.copyfile(C.record_path(out), C.record_path(models / fname))
        scores[f"{key}_seeds"] = {"val_miou": {str(seed): m for seed, m in val_miou.items()}, "chosen": chosen}

    # Weak supervision, the paper's job 1 -> job 2: pseudo masks of every volume from the
    # classifiers (slice decision from the ground-truth slice labels), their quality on the
    # training split, and the same U-Net trained on them (it never sees a ground-truth mask).
    # TH is tuned on val first (the dCRF at METHOD.md's settings), then the dCRF's label confidence and
    # bilateral weight at that TH; the paper's Table 4 ablation with both is then scored on test.
    classifiers = [a for f, *_ in CLASSIFIERS for a in ("--classifier", models / f)]
    (work / "eval").mkdir(exist_ok=True)
    # after dCRF: the bone cut, the blood-density cut, then the filter
    post = ["--max-hu", MAX_HU, "--min-hu", MIN_HU, "--min-lesion-ml", MIN_LESION_ML]
    threads = ["--threads", spare] if unet_trained else []  # the masks do not depend on it

    def ablation(name, on, args):
        """``ichseg ablate --json`` on dataset and split ``on`` (the classifiers, the bone cut
        and the filter, then ``args``) into eval/ablation_NAME.json; its scores. With
        ``--resume``, a finished earlier run of the same command, classifier graphs, data and
        split is kept (``ablation_NAME.key`` beside it says what it ran on): a stop between these
        steps then costs nothing."""
        out = work / "eval" / f"ablation_{name.replace(' ', '_')}.json"
        key_file = out.with_suffix(".key")
        cmd = [exe, "ablate", "--dataset", on[0], "--split", on[1], *classifiers, *post, "--json", "--quiet", *args]
        key = {"command": [str(c) for c in cmd], "classifiers": {f: C.graph_sha256(models / f) for f, *_ in CLASSIFIERS},
               "data": C.sha256(pathlib.Path(on[0]) / "hemorrhage_diagnosis_raw_ct.csv"), "split": C.sha256(on[1])}
        earlier = json.loads(key_file.read_text()) if a.resume and key_file.is_file() and out.is_file() else {}
        if earlier.get("key") == key:
            steps.append({**earlier["step"], "reused": True})
            print(f"== ablate {name}: kept from the stopped run ({out})", flush=True)
            return json.loads(out.read_text())
        key_file.unlink(missing_ok=True)
        text = run_step(steps, f"ablate {name}", cmd + threads, logs, stdout=out)
        C.write_json(key_file, {"key": key, "step": next(s for s in reversed(steps) if s["step"] == f"ablate {name}")})
        return json.loads(text)

    scores["ablation_val"] = ablation("val", (data, split), ["--subset", "val", "--threshold", THRESHOLDS])
    threshold = scores["pseudo_threshold"] = best_threshold(scores["ablation_val"])
    scores["ablation_val_crf"] = ablation("val crf", (data, split), [
        "--subset", "val", "--threshold", f"{threshold:g}", "--crf-confidence", CRF_CONFIDENCES,
        "--crf-bilateral-compat", CRF_BILATERAL])
    crf = scores["pseudo_crf"] = best_crf(scores["ablation_val_crf"])
    # The shipped classifiers carry these settings, so `pseudo-label` with no flags runs them.
    for f, *_ in CLASSIFIERS:
        C.write_tuned(models / f, threshold=threshold, max_hu=MAX_HU, min_hu=MIN_HU, min_lesion_ml=MIN_LESION_ML,
                      crf_confidence=crf["label_confidence"], crf_bilateral_compat=crf["bilateral_compat"])
    tuned = ["--threshold", f"{threshold:g}", *crf_flags(crf)]
    scores["ablation_test"] = ablation("test", (data, split), ["--subset", "test", *tuned])
    pseudo = work / "pseudo"
    pseudo_cmd = [exe, "pseudo-label", "--dataset", data, "-o", pseudo, *classifiers, *tuned, *post, "--quiet"]
    settings = {"command": [str(c) for c in pseudo_cmd], "classifiers": {f: C.sha256(models / f) for f, *_ in CLASSIFIERS}}
    same_masks = keep_pseudo_masks(pseudo, work / "pseudo_settings.json", settings, a.resume)
    run_step(steps, "pseudo-label", pseudo_cmd + threads, logs)
    scores["pseudo_train"] = EV.eval_masks(pseudo, data, split, "train", ichseg=exe)
    if unet_trained:
        train_wall = unet_trained() - t_train
        threads = []  # every core is free again
    keep_best_seed("unet", UNET_FILE)
    eval_unet("unet", unet_out, "pred")
    choose_filter("unet", unet_out)
    weak_out = models / WEAK_FILE
    names = "+".join(arch for _, arch, *_ in CLASSIFIERS)
    run_lanes(train_unets(WEAK_FILE, [
        "--data", data, "--masks", pseudo, "--split", split, *unet_args,
        "--trained-on", trained_on + f", pseudo masks of ichseg pseudo-label (SF-CAM {names}, "
        f"BLA OR TH {threshold:g}, {_crf_text(scores)}, bone cut above {MAX_HU} HU, voxels under {MIN_HU} HU "
        f"dropped, lesions under "
        f"{MIN_LESION_ML:g} mL dropped, library defaults otherwise; ground-truth slice labels)" + input_text],
        resume if same_masks else []))  # a checkpoint of other masks' training must not go on
    keep_best_seed("unet_weak", WEAK_FILE)
    eval_unet("unet_weak", weak_out, "pred_weak")
    choose_filter("unet_weak", weak_out)

    if a.shifted_count > 0:
        shifted, shifted_split = work / "shifted", work / "shifted_split.json"
        if not (a.skip_existing and (shifted / "hemorrhage_diagnosis_raw_ct.csv").exists()):
            extra = ["--slices-min", 8, "--slices-max", 10] if a.smoke else []
            run_step(steps, "shifted phantoms", py(
                "ichseg_training.phantom", "--out", shifted, "--count", a.shifted_count, "--seed", SHIFTED_SEED,
                "--size", PHANTOM_SIZE, "--jobs", a.jobs, "--profile", "shifted", *extra, *resume),
                logs)
        run_step(steps, "shifted split", py("ichseg_training.datasets", "split", "--layout", "bcihm", "--root",
                                            shifted, "--seed", SHIFTED_SEED, "--fractions", 0, 0, 1,
                                            "--out", shifted_split), logs)
        shifted_for_classifiers = shifted if a.skull_strip_mm is None else strip_dataset(
            steps, exe, shifted, work / "shifted_stripped", a.skull_strip_mm, logs, a.skip_existing,
            "skull-strip shifted")
        for fname, arch, *_ in CLASSIFIERS:
            js = work / "eval" / f"{arch}_shifted.json"
            run_step(steps, f"eval {arch} shifted", py(
                "ichseg_training.evaluate", "classifier", "--model", models / fname, "--data", shifted_for_classifiers,
                "--split", shifted_split, "--subset", "test", "--json", js), logs)
            scores[f"{arch}_shifted"] = json.loads(js.read_text())
        scores["ablation_shifted"] = ablation("shifted", (shifted, shifted_split), ["--subset", "test", *tuned])
        for key, model in (("unet", unet_out), ("unet_weak", weak_out)):
            eval_unet(key, model, f"pred_{key}_shifted", ("test",), (shifted, shifted_split), "shifted")

    sample = pick_sample(data, scores["unet_test"])
    (models / "samples").mkdir(exist_ok=True)
    shutil.copyfile(data / "ct_scans" / f"{sample}.nii.gz", models / "samples" / "sample.nii.gz")
    shutil.copyfile(data / "masks" / f"{sample}.nii.gz", models / "samples" / "sample_mask.nii.gz")
    write_slice_labels(models / "samples" / "sample_mask.nii.gz", models / "samples" / "sample_slices.csv")
    demo = run_step(steps, "demo", [exe, "demo", "--out", work / "demo-out"], logs, cwd=models.resolve().parent)

    portable_records(models, str(work), exe)
    records = read_records(models)
    doc = {"seed": a.seed, "count": a.count, "jobs": a.jobs, "phantom_size": PHANTOM_SIZE, "profile": a.profile,
           "skull_strip_mm": a.skull_strip_mm, "time_scale": a.time_scale,
           "shifted": {"seed": SHIFTED_SEED, "count": a.shifted_count} if a.shifted_count > 0 else None,
           "input_size": INPUT_SIZE, "unet_input_size": a.unet_size, "work": str(work), "ichseg": exe,
           "machine": C.machine_description(),
           "nice": os.nice(0),
           "git_commit": C.git_commit(), "started": started, "finished": C.now_iso(),
           "wall_seconds": time.time() - t_all, "training_wall_seconds": train_wall, "steps": steps,
           "sample": sample, "scores": scores, "demo_output": demo,
           "command": C.command_line("ichseg_training.ship", argv_shown)}
    if a.skip_existing and (work / "ship.json").exists():
        carry_earlier_run(doc, json.loads((work / "ship.json").read_text()), records)
    doc["error_analysis"] = error_analysis(work, models, json.loads(split.read_text())["splits"]["test"])
    C.write_json(work / "ship.json", doc)
    write_models_md(models, doc, records, split)
    print(f"\nwrote {models / 'MODELS.md'}; total {doc['wall_seconds'] / 60:.1f} min")
    return 0


def read_records(models) -> dict:
    """The run records of the shipped models, by file name."""
    files = [f for f, *_ in CLASSIFIERS] + [UNET_FILE, WEAK_FILE]
    return {f: json.loads(C.record_path(models / f).read_text()) for f in files}


# A sample's bleed must look like blood: the phantoms' masks mark blood at the sub-slice level, so
# where a thin collection runs along an obliquely cut skull the 5 mm slice averages it with bone,
# and a few volumes (4 of 160 test volumes of the 800-phantom set) have most mask voxels bone-dense.
SAMPLE_MAX_MEDIAN_HU = 100.0


def write_slice_labels(mask_path, out_csv) -> None:
    """The slice labels of a mask (1 where the slice holds mask voxels), as the `slice,label` CSV
    (0-based axial slice) that `ichseg pseudo-label --labels` reads: the shipped sample's, so that
    pseudo-labelling it needs no guessing."""
    import nibabel as nib
    import numpy as np

    mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0  # (x, y, z)
    bleeding = mask.reshape(-1, mask.shape[2]).any(axis=0)
    lines = ["slice,label"] + [f"{z},{int(b)}" for z, b in enumerate(bleeding)]
    pathlib.Path(out_csv).write_text("\n".join(lines) + "\n")


def pick_sample(data, unet_eval) -> str:
    """The held-out (test) bleeding volume with the median hemorrhage volume (ties: lower id), among
    those whose mask's median CT value is at most ``SAMPLE_MAX_MEDIAN_HU`` (blood, not bone)."""
    import nibabel as nib
    import numpy as np

    sizes = []
    for row in unet_eval["per_volume"]:
        stem = pathlib.Path(row["gt"]).name.split(".")[0]
        mask = np.asarray(nib.load(str(data / "masks" / f"{stem}.nii.gz")).dataobj) > 0
        if not mask.any():
            continue
        hu = np.asarray(nib.load(str(data / "ct_scans" / f"{stem}.nii.gz")).get_fdata(dtype=np.float32))
        if float(np.median(hu[mask])) <= SAMPLE_MAX_MEDIAN_HU:
            sizes.append((int(mask.sum()), stem))
    if not sizes:
        raise SystemExit("no test volume with a blood-dense bleed to ship as the sample")
    sizes.sort()
    return sizes[(len(sizes) - 1) // 2][1]


def _pct(v):
    return "n/a" if v is None or v != v else f"{100.0 * v:.1f}"


def _stop(reason):
    return "the planned epochs" if reason == "epochs" else reason


def _generated(doc):
    wall = _step(doc, "phantoms")["wall_seconds"]
    if wall != wall:  # NaN: not run
        return "(generated before this run and reused with `--skip-existing`)"
    return f"in {wall:.0f} s with {doc['jobs']} processes"


def _mb(n):
    return f"{n / 1e6:.2f} MB"


def error_analysis(work, models, test_patients) -> dict:
    """Where the shipped models fail on the test split: bleed area (native pixels) of detected and
    missed bleeding slices per classifier; sizes of the U-Net's false-positive 2D components and
    of the true 2D sites it finds or misses (8-connected, as ``ichseg eval`` counts them)."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from . import evaluate as EV

    work = pathlib.Path(work)
    ds = D.BCIHM(work / "phantoms")
    areas, out = [], {}
    for p in test_patients:
        _, mask, _ = ds[p]
        areas += [int(mask[:, :, k].sum()) for k in range(mask.shape[2])]
    areas = np.asarray(areas)
    for f, arch, *_ in CLASSIFIERS:
        prob, sl = EV.classifier_probs(models / f, ds, test_patients)
        pos, hit = sl.labels == 1, prob >= 0.5
        bins = {}
        for lo, hi in ((1, 100), (100, 500), (500, 2000), (2000, None)):
            sel = pos & (areas >= lo) & (areas < (hi or np.inf))
            bins[f"{lo}-{hi or ''}"] = (int(sel.sum()), float(hit[sel].mean()) if sel.any() else None)
        out[arch] = {"median_area_detected": float(np.median(areas[pos & hit])) if (pos & hit).any() else None,
                     "median_area_missed": float(np.median(areas[pos & ~hit])) if (pos & ~hit).any() else None,
                     "empty_at_input_size": int((pos & (sl.labels == 1) & (areas == 0)).sum()),
                     "sensitivity_by_area": bins}
    st = np.ones((3, 3), bool)
    fp, found, missed, missed_end = [], [], [], 0
    for p in test_patients:
        gt = np.asarray(nib.load(str(work / "phantoms" / "masks" / f"{p:03d}.nii.gz")).dataobj) > 0
        pr = np.asarray(nib.load(str(work / "pred" / "test" / f"{p:03d}.nii.gz")).dataobj) > 0
        zs = [k for k in range(gt.shape[2]) if gt[:, :, k].any()]
        for k in range(gt.shape[2]):
            lab, n = ndimage.label(pr[:, :, k], st)
            fp += [int((lab == i).sum()) for i in range(1, n + 1) if not ((lab == i) & gt[:, :, k]).any()]
            lab, n = ndimage.label(gt[:, :, k], st)
            for i in range(1, n + 1):
                c = lab == i
                if (c & pr[:, :, k]).any():
                    found.append(int(c.sum()))
                else:
                    missed.append(int(c.sum()))
                    missed_end += k in (min(zs), max(zs))
    med = lambda v: float(np.median(v)) if v else None  # noqa: E731
    out["unet"] = {"fp_components": len(fp), "fp_median_px": med(fp),
                   "fp_share_le_20px": float(np.mean(np.asarray(fp) <= 20)) if fp else None,
                   "found_sites": len(found), "found_median_px": med(found),
                   "missed_sites": len(missed), "missed_median_px": med(missed),
                   "missed_on_first_or_last_bleeding_slice": int(missed_end)}
    return out


def _step(doc, name):
    for s in doc["steps"]:
        if s["step"] == name:
            return s
    return {"wall_seconds": float("nan"), "command": "(not run: --skip-existing)"}


def write_weak_section(w, doc, records):
    sc, wr = doc["scores"], records[WEAK_FILE]
    w("## Weakly supervised U-Net")
    w("")
    w(f"`{WEAK_FILE}`: the U-Net above, trained with the **same `train_unet` flags** (seed {doc['seed']}) on")
    w("pseudo masks instead of the ground truth, the paper's job 1 -> job 2. It never sees a ground-truth")
    w("mask: it trains on the training-split pseudo masks and picks its epoch by the Dice against the")
    w("validation-split pseudo masks (`--val-masks` defaults to `--masks`).")
    w("")
    pt, th = sc["pseudo_train"]["overall"], sc["pseudo_threshold"]
    step = _step(doc, "pseudo-label")
    w(f"Pseudo masks, for all {doc['count']} phantoms ({step['wall_seconds']:.0f} s): SF-CAM of both classifiers on "
      "`layer1` + `layer2`, BME, slice decision from the ground-truth slice labels of "
      f"`hemorrhage_diagnosis_raw_ct.csv`, SCF c = 2, w = 0.5, BLA OR with **TH = {th:g}**, {_crf_text(sc)}, then "
      f"the bone cut (`--max-hu {MAX_HU}`: voxels above {MAX_HU} HU dropped), the blood-density cut (`--min-hu "
      f"{MIN_HU}`: voxels below {MIN_HU} HU dropped) and the small-lesion filter (`--min-lesion-ml "
      f"{MIN_LESION_ML:g}`: 3D components under {MIN_LESION_ML:g} mL dropped); none is in the paper "
      "(docs/RESULTS.md). "
      "On the training split they score mIoU "
      f"{_pct(pt['miou'])}, IoU hemorrhage {_pct(pt['iou_hemorrhage'])}, Dice {_pct(pt['dice'])}, CL {_pct(pt['cl'])}, "
      f"FPL {_pct(pt['fpl'])} against the ground truth.")
    w("")
    write_ablation(w, doc)
    w(f"{wr['epochs_run']} epochs run (best {wr['best_epoch'] + 1}), stopped by {_stop(wr['stop'])}; "
      f"{wr['wall_seconds'] / 60:.1f} min. Scores against the **ground truth** (percent, native grid, as for "
      f"`{UNET_FILE}`):")
    w("")
    w("| model | split | IoU background | IoU hemorrhage | **mIoU** | **Dice** | **CL** | **ML** | **FPL** |")
    w("|---|---|---|---|---|---|---|---|---|")
    for name, key in ((f"`{UNET_FILE}` (fully supervised)", "unet_test"), (f"`{WEAK_FILE}`", "unet_weak_test"),
                      (f"`{WEAK_FILE}`", "unet_weak_val")):
        o = sc[key]["overall"]
        w(f"| {name} | {key.rsplit('_', 1)[1]} | {_pct(o['iou_background'])} | {_pct(o['iou_hemorrhage'])} "
          f"| {_pct(o['miou'])} | {_pct(o['dice'])} | {_pct(o['cl'])} | {_pct(o['ml'])} | {_pct(o['fpl'])} |")
    w("")
    if sc["unet_weak_test"]["overall"]["n_pred_sites"] == 0:
        best = max((h["val_dice"] for h in wr["history"] if h.get("val_dice") is not None), default=0.0)
        w(f"It marks no voxel of any test volume. Its best Dice against the validation pseudo masks was "
          f"{best:.2f}, so early stopping kept an early epoch, which segments nothing and scores the empty "
          "mask's mIoU.")
        w("")
    w("The paper reaches 88 % of the fully supervised mIoU with this step on BCIHM; how far these phantom")
    w("classifiers are from that, and why, is in docs/RESULTS.md. `ichseg demo` uses the fully supervised")
    w(f"`{UNET_FILE}`.")
    w("")


def write_filter_section(w, records):
    """Each U-Net's small-lesion filter, chosen on val (``evaluate filter``; its run record keeps
    the table as ``segment_filter``), when it has one."""
    chosen = [(f, records[f]["segment_filter"]) for f in (UNET_FILE, WEAK_FILE) if records[f].get("segment_filter")]
    if not chosen:
        return
    w("## Small-lesion filter of the U-Nets")
    w("")
    w("Each U-Net carries a small-lesion filter chosen on the validation split, `ichseg.segment.min_lesion_ml`: "
      "`ichseg segment` (and the C, C++ and Python segmenters) drop lesions (3D components) under it unless "
      "the caller gives `--min-lesion-ml` (0 keeps every lesion); not in the paper. The tables above score the "
      "networks without it. Chosen by the best val mIoU (a tie keeps the smaller filter) over the unfiltered "
      "masks of each split, filtered by `ichseg eval --min-lesion-ml`:")
    w("")
    for f, c in chosen:
        w(f"`{f}`, chosen **{c['chosen']:g} mL** (`{c.get('command', 'python -m ichseg_training.evaluate filter')}`):")
        w("")
        w("| filter | val mIoU | val CL | val FPL | test mIoU | test CL | test FPL |")
        w("|---|---|---|---|---|---|---|")
        for r in c["rows"]:
            v, t = r["val"], r["test"]
            mark = "**" if r["min_lesion_ml"] == c["chosen"] else ""
            label = f"< {r['min_lesion_ml']:g} mL" if r["min_lesion_ml"] > 0 else "none"
            w(f"| {mark}{label}{mark} | {_pct(v['miou'])} | {_pct(v['cl'])} | {_pct(v['fpl'])} "
              f"| {_pct(t['miou'])} | {_pct(t['cl'])} | {_pct(t['fpl'])} |")
        w("")


def paper_columns(row_names):
    """The paper's (BHSD, BCIHM) Table 4 value beside each of `ichseg ablate`'s rows: the eight rows
    of two classifiers get the paper's; the bone-cut, blood-density and small-lesion rows (ours,
    not the paper's) and any other layout get none."""
    ours = ("+ bone cut", "+ blood-density cut", "+ small-lesion filter")
    extra = sum(1 for r in row_names if r.strip().startswith(ours))
    core = len(row_names) - extra
    paper = PAPER_TABLE4 if core == len(PAPER_TABLE4) else ((None, None),) * core
    return tuple(paper) + ((None, None),) * extra


def unet_input_size(doc) -> int:
    """The U-Nets' input size of a run (runs before ``--unet-size`` used the classifiers')."""
    return doc.get("unet_input_size", doc["input_size"])


def _crf_text(sc) -> str:
    """The dCRF settings the run chose on val (runs before that choice used METHOD.md's)."""
    crf = sc.get("pseudo_crf")
    if not crf:
        return "dCRF defaults"
    return f"dCRF label confidence {crf['label_confidence']:g} and bilateral weight {crf['bilateral_compat']:g}"


def write_crf_choice(w, doc):
    """The dCRF settings tried on val at the chosen TH, when the run chose them."""
    grid = doc["scores"].get("ablation_val_crf")
    if not grid:
        return
    w(f"Then, at that TH, the dCRF's label confidence and bilateral Potts weight "
      f"({_step(doc, 'ablate val crf')['wall_seconds']:.0f} s; METHOD.md's are 0.7 / 10):")
    w("")
    w("| label confidence / bilateral weight | val mIoU | val IoU hemorrhage |")
    w("|---|---|---|")
    for r in grid["runs"]:
        c, o = r["setting"]["crf"], r["rows"][-1]["scores"]
        w(f"| {c['label_confidence']:g} / {c['bilateral_compat']:g} | {_pct(o['miou'])} | {_pct(o['iou_hemorrhage'])} |")
    w("")
    w(f"Chosen: {_crf_text(doc['scores'])}; the classifiers carry it as `ichseg.pseudo.crf_confidence` and "
      "`ichseg.pseudo.crf_bilateral_compat`.")
    w("")


def write_ablation(w, doc):
    """The TH (and dCRF settings) chosen on val, and the paper's Table 4 on test with them (`ichseg ablate`)."""
    sc = doc["scores"]
    val, test = sc["ablation_val"], sc["ablation_test"]
    final = val["runs"][0]["rows"][-1]["row"]
    w(f"TH was chosen on the validation split ({_step(doc, 'ablate val')['wall_seconds']:.0f} s): the mIoU of the "
      f"final pseudo masks (row `{final}`) for each TH tried, against the ground truth:")
    w("")
    w("| TH | " + " | ".join(f"{r['setting']['threshold']:.2f}" for r in val["runs"]) + " |")
    w("|---|" + "---|" * len(val["runs"]))
    w("| val mIoU | " + " | ".join(_pct(r["rows"][-1]["scores"]["miou"]) for r in val["runs"]) + " |")
    w("| val IoU hemorrhage | " + " | ".join(_pct(r["rows"][-1]["scores"]["iou_hemorrhage"]) for r in val["runs"])
      + " |")
    w("")
    write_crf_choice(w, doc)
    rows = test["runs"][0]["rows"]
    paper = paper_columns([r["row"] for r in rows])
    w(f"The paper's Table 4 ablation on the **test split** at TH = {sc['pseudo_threshold']:g}, {_crf_text(sc)} "
      "(pseudo-mask scores "
      f"against the ground truth, percent; rows before BLA use the `{test['single_tap']}` tap; "
      f"{_step(doc, 'ablate test')['wall_seconds']:.0f} s). An empty mask scores mIoU about 50 here. The paper's "
      "columns are on real CT with full-size ResNets: not the same experiment (docs/RESULTS.md).")
    w("")
    w("| configuration | paper BHSD | paper BCIHM | **mIoU** | IoU hemorrhage | Dice | CL | FPL |")
    w("|---|---|---|---|---|---|---|---|")
    for r, (bhsd, bcihm) in zip(rows, paper):
        o = r["scores"]
        w(f"| {r['row']} | {bhsd or ''} | {bcihm or ''} | {_pct(o['miou'])} | {_pct(o['iou_hemorrhage'])} "
          f"| {_pct(o['dice'])} | {_pct(o['cl'])} | {_pct(o['fpl'])} |")
    w("")
    w("Commands: `ichseg ablate --dataset PHANTOMS --split SPLIT --classifier ... --subset val --threshold "
      f"{THRESHOLDS}`, then `--subset val --threshold TH --crf-confidence {CRF_CONFIDENCES} --crf-bilateral-compat "
      f"{CRF_BILATERAL}`, then `--subset test --threshold TH --crf-confidence C --crf-bilateral-compat W` "
      "(table above).")
    w("")


def write_shifted_section(w, doc):
    """The held-out shifted family's scores, when the run made it."""
    sh, sc = doc.get("shifted"), doc["scores"]
    if not sh or "ablation_shifted" not in sc:
        return
    ab = sc["ablation_shifted"]
    w("## A shifted phantom family")
    w("")
    w(f"{sh['count']} volumes of the `shifted` variation profile (docs/PHANTOMS.md: thinner slices, smaller and "
      "larger heads, a sharp kernel, more noise, an HU offset, cupping, motion, lower grey/white contrast, "
      f"older blood), seed {sh['seed']}, all held out: a change of data none of the models trained on "
      f"({ab['volumes']} volumes, {ab['slices']} slices, {ab['positive_slices']} bleeding).")
    w("")
    w("| model | AUC | sensitivity / specificity |")
    w("|---|---|---|")
    for f, arch, *_ in CLASSIFIERS:
        s = sc[f"{arch}_shifted"]
        w(f"| `{f}` | {s['auc']:.3f} | {_pct(s['sensitivity'])} / {_pct(s['specificity'])} |")
    w("")
    w(f"Pseudo masks at TH = {sc['pseudo_threshold']:g}, {_crf_text(sc)} (the `ichseg ablate` rows; the last is what "
      "`pseudo-label` makes with the shipped settings):")
    w("")
    w("| configuration | **mIoU** | IoU hemorrhage | Dice | CL | FPL |")
    w("|---|---|---|---|---|---|")
    for r in ab["runs"][0]["rows"]:
        o = r["scores"]
        w(f"| {r['row']} | {_pct(o['miou'])} | {_pct(o['iou_hemorrhage'])} | {_pct(o['dice'])} | {_pct(o['cl'])} "
          f"| {_pct(o['fpl'])} |")
    w("")
    w("The U-Nets on it, against the ground truth:")
    w("")
    w("| model | IoU hemorrhage | **mIoU** | **Dice** | **CL** | **ML** | **FPL** |")
    w("|---|---|---|---|---|---|---|")
    for name, key in ((f"`{UNET_FILE}` (fully supervised)", "unet_shifted"), (f"`{WEAK_FILE}`", "unet_weak_shifted")):
        o = sc[key]["overall"]
        w(f"| {name} | {_pct(o['iou_hemorrhage'])} | {_pct(o['miou'])} | {_pct(o['dice'])} | {_pct(o['cl'])} "
          f"| {_pct(o['ml'])} | {_pct(o['fpl'])} |")
    w("")
    ratio = sc["unet_weak_shifted"]["overall"]["miou"] / sc["unet_shifted"]["overall"]["miou"]
    w(f"The weak U-Net reaches {100 * ratio:.0f} % of the fully supervised one's mIoU here.")
    w("")


TUNED_NOTE = ("Tuned pseudo-labelling settings, written by `ship` after it picks TH on the validation split "
              "(`common.write_tuned`); `ichseg pseudo-label`, the C ABI, the C++ wrapper and the Python package "
              "apply them unless the caller sets them (`--preset paper`: METHOD.md's defaults), and the report "
              "names their source:")


def _models_arg(command) -> str:
    """The ``--models`` folder of a recorded ``ship`` command line."""
    args = shlex.split(command)
    return next((b for a, b in zip(args, args[1:]) if a == "--models"), "models")


def write_outside_training(w, doc, records):
    """The models this run and the earlier run it carries did not train (``--skip-existing`` kept
    them): the commands from their run records, and a skull-stripping key added afterwards."""
    files = step_files()
    trained = {files[s["step"]] for s in doc["steps"] if s["step"] in files}
    outside = [f for f in records if f not in trained]
    if not outside:
        return
    w("Trained before this run and kept (`--skip-existing`), by the commands in their run records:")
    w("")
    for f in outside:
        rec = records[f]
        w(f"- `{f}`: `{rec['command']}`")
        strip = rec.get("metadata", {}).get("ichseg.skull_strip_mm")
        if strip is not None and "--skull-strip-mm" not in rec["command"]:
            w(f"  (its inputs were skull-stripped copies; `ichseg.skull_strip_mm = {strip}` was added to its "
              f"metadata afterwards, as `--skull-strip-mm {strip}` would have written it)")
    w("")


def write_models_md(models, doc, records, split, works=()):
    """Writes ``models/MODELS.md`` from the ship record ``doc`` and the run records; the work
    folder (``doc["work"]`` and any other spelling in ``works``) is shown as ``$DATA`` and the
    ichseg binary relative to the repository (``portable``)."""
    sc = doc["scores"]
    split_doc = json.loads(pathlib.Path(split).read_text())
    sp = split_doc["splits"]
    pos = set(split_doc.get("positive", []))
    ur = records[UNET_FILE]
    lines = []
    w = lines.append
    w("# Shipped models")
    w("")
    w("Small models trained on the synthetic head-CT phantoms (`docs/PHANTOMS.md`), not on patient")
    w("data: they let `ichseg demo` and the pseudo-labelling pipeline run end to end. They")
    w("are **not for clinical use**, and their scores are on phantoms, not comparable with the paper's")
    w("numbers on BCIHM/BHSD (which cannot be downloaded where this project is built). Retrain on real")
    w("data with the same commands (`docs/TRAINING.md`).")
    w("")
    w("This file, the models, their run records and the sample are written by one command, run from")
    w("the repository root:")
    w("")
    w("```sh")
    nice = doc.get("nice", 19)  # runs recorded before the field ran at nice 19
    w("export DATA=~/ichseg-data  # the work folder: anywhere outside the repository")
    w(f"PYTHONPATH=training nice -n {nice} {doc['command']}")
    w("```")
    w("")
    w("`DATA` is the work folder of the `ship` run (`--work`, outside the repository: phantoms, split, "
      "checkpoints, logs, predictions and `ship.json`); the commands below name it `$DATA`, so set it "
      "(`export DATA=~/ichseg-data`) before rerunning them.")
    w("")
    w(f"It needs `training/requirements.txt` and an `ichseg` binary (here `{doc['ichseg']}`). Machine: "
      f"{doc['machine']}, shared with other jobs (Rust builds; this ran at nice {nice}). PyTorch "
      f"{ur['torch']}, CPU only. Started {doc['started']}, finished {doc['finished']}: "
      f"**{doc['wall_seconds'] / 60:.1f} min in all**, " + (
          f"of which {doc['training_wall_seconds'] / 60:.1f} min training (the classifiers and the fully "
          "supervised U-Net side by side, one thread each)." if doc["training_wall_seconds"] >= 1 else
          "with the classifiers and the fully supervised U-Net reused (below)."))
    w("")
    if doc.get("earlier_run"):
        er = doc["earlier_run"]
        kept = ", ".join(f"`{s['step'][len('train '):]}`" for s in doc["steps"]
                         if s["step"].startswith("train ") and s.get("carried"))
        w("This run reused (`--skip-existing`) the models trained by an earlier run of the same command in "
          f"the same work folder: {kept} (commit {er['git_commit']}, started {er['started']}, "
          f"{er['wall_seconds'] / 60:.1f} min in all, of which {er['training_wall_seconds'] / 60:.1f} min training). "
          "Their steps below carry that run's times; everything else was redone here.")
        w("")
    write_outside_training(w, doc, records)
    if doc.get("report_rewritten"):
        rr = doc["report_rewritten"]
        moved = _models_arg(doc["command"]) != _models_arg(rr["command"])
        w(f"This file was last rewritten at {rr['at']} from the recorded results (run records, evaluation "
          f"JSON and predictions of that run; nothing retrained) by `PYTHONPATH=training {rr['command']}`"
          + (f", after the run's models were copied from `{_models_arg(doc['command'])}` into "
             f"`{_models_arg(rr['command'])}`." if moved else "."))
        w("")
    w("| file | what | size |")
    w("|---|---|---|")
    for f, rec in records.items():
        what = (f"slice classifier `{rec['arch']}` (width {rec['width']}), {rec['parameters']:,} parameters"
                if "arch" in rec else
                f"U-Net (base width {rec['args']['base_width']}, depth {rec['args']['depth']}), "
                f"{rec['parameters']:,} parameters, **fully supervised**" if f == UNET_FILE else
                "the same U-Net, **weakly supervised**: trained on pseudo masks (section \"Weakly supervised U-Net\")")
        w(f"| `{f}` | {what} | {_mb(rec['onnx']['bytes'])} |")
    for f in ("samples/sample.nii.gz", "samples/sample_mask.nii.gz", "samples/sample_slices.csv"):
        what = ("held-out phantom CT (int16, HU + 1024)" if f.endswith("sample.nii.gz") else
                "its ground-truth mask" if "mask" in f else
                "its slice labels from the mask (`slice,label`, for `pseudo-label --labels`)")
        w(f"| `{f}` | {what}, test-split volume `{doc['sample']}` | {_mb((models / f).stat().st_size)} |")
    total = sum(p.stat().st_size for p in models.rglob("*") if p.is_file() and p.name != "MODELS.md")
    w("")
    w(f"{_mb(total)} in all (with the `*.train.json` run records: the exact command, seed, data, split, "
      "per-epoch history, validation scores, timings and ONNX SHA-256 of each model).")
    w("")
    w("## Data")
    w("")
    ps = doc["phantom_size"]
    profile = doc.get("profile", "standard")  # runs recorded before the field: standard
    slices = "5 mm slices" if profile == "standard" else f"variation profile `{profile}`: slices 1-5 mm, docs/PHANTOMS.md"
    w(f"{doc['count']} phantom volumes, seed {doc['seed']}, generated at {ps}x{ps} (the field of view of "
      f"the 512 grid, pixels {0.4 * 512 / ps:.2f}-{0.5 * 512 / ps:.2f} mm, {slices}) "
      f"{_generated(doc)}; the smaller grid keeps "
      "generation and the sample small, and the library resizes any grid to the model input. "
      f"Patient split 60/20/20, class-balanced (`datasets split --seed {doc['seed']}`):")
    w("")
    w("| split | volumes | with bleeding | slices | bleeding slices |")
    w("|---|---|---|---|---|")
    c = records["classifier_slim34.onnx"]["slices"]
    counts = {"train": (c["train"], c["train_bleeding"]), "val": (c["val"], c["val_bleeding"]),
              "test": (sc["slim34"]["n"], sc["slim34"]["positives"])}
    for k in ("train", "val", "test"):
        w(f"| {k} | {len(sp[k])} | {sum(p in pos for p in sp[k])} | {counts[k][0]} | {counts[k][1]} |")
    w("")
    cs, us = doc["input_size"], unet_input_size(doc)
    w((f"All three models take {cs}x{cs} inputs" if cs == us else
       f"The classifiers take {cs}x{cs} inputs, the U-Nets {us}x{us}")
      + " (`ichseg.input_size`; the paper uses 384x384) of the slice windowed at 50/130 HU.")
    w("")
    w("## Classifiers")
    w("")
    ca = records["classifier_slim34.onnx"]["args"]
    wd = records["classifier_slim34.onnx"]["width"]
    w("For pseudo-labelling (SF-CAM on the taps `layer1` and `layer2`, Grad-CAM baseline on `layer4`):")
    w("slim versions of the paper's ResNet34 + ResNet50 pair, with the ResNet34 layout (BasicBlock,")
    w(f"[3, 4, 6, 3]) and the ResNet50 layout (Bottleneck, [3, 4, 6, 3]) and stage widths "
      f"{wd}/{2 * wd}/{4 * wd}/{8 * wd} (x4 at the bottleneck outputs) instead of 64/128/256/512, trained "
      f"from scratch. AdamW {ca['lr']:g} with cosine decay, batch {ca['batch']}, cross-entropy, the paper's "
      f"kinds of augmentation (`ichseg_training/augment.py`), early stopping on the validation "
      f"{ {'auc': 'AUC', 'loss': 'loss', 'accuracy': 'accuracy'}[ca['select']] } (patience {ca['patience']}).")
    if ca["neg_fraction"] < 1:
        w(f"Each epoch uses every bleeding training slice and a fresh {round(100 * ca['neg_fraction'])} % of "
          f"the others; the exported bleed logit's bias carries log({ca['neg_fraction']:g}) so that the "
          "probabilities refer to the real class balance again.")
    w("")
    w("Scores on the **test split** (held out), from the exported ONNX in onnxruntime, bleeding when the")
    w("bleed probability >= 0.5 (`python -m ichseg_training.evaluate classifier ...`):")
    w("")
    w("| model | epochs run (best) | stopped by | train time | val accuracy / AUC | **test slice accuracy** "
      "| **test AUC** | test sensitivity / specificity |")
    w("|---|---|---|---|---|---|---|---|")
    for f, arch, *_ in CLASSIFIERS:
        r, s = records[f], sc[arch]
        w(f"| `{f}` | {r['epochs_run']} ({r['best_epoch'] + 1}) | {_stop(r['stop'])} | {r['wall_seconds'] / 60:.1f} min "
          f"| {_pct(r['val_scores']['accuracy'])} / {r['val_scores']['auc']:.3f} | {_pct(s['accuracy'])} "
          f"| {s['auc']:.3f} | {_pct(s['sensitivity'])} / {_pct(s['specificity'])} |")
    w("")
    w(f"(Percent. A classifier that always says \"no bleeding\" scores "
      f"{_pct(1 - sc['slim34']['positives'] / sc['slim34']['n'])} % accuracy on this test split.)")
    w("")
    cut = [f for f, *_ in CLASSIFIERS if records[f]["stop"].startswith("time budget")]
    ea = doc.get("error_analysis") or {}
    sens = " and ".join(f"{_pct(sc[arch]['sensitivity'])} %" for _, arch, *_ in CLASSIFIERS)
    w(f"At the 0.5 threshold the classifiers find {sens} of the bleeding test slices; the misses are the "
      f"slices with little blood. Test sensitivity by the slice's bleed area (pixels of the native {ps} grid, "
      f"{(0.4 * 512 / ps) ** 2:.2f}-{(0.5 * 512 / ps) ** 2:.2f} mm² each):")
    w("")
    if ea:
        bins = list(ea[CLASSIFIERS[0][1]]["sensitivity_by_area"])
        w("| model | " + " | ".join(f"{b.replace('-', '-').rstrip('-') + ('+' if b.endswith('-') else '')} px"
                                   for b in bins) + " |")
        w("|---|" + "---|" * len(bins))
        for f, arch, *_ in CLASSIFIERS:
            cells = [f"{_pct(v[1])} % of {v[0]}" for v in ea[arch]["sensitivity_by_area"].values()]
            w(f"| `{f}` | " + " | ".join(cells) + " |")
        w("")
    minutes = " and ".join(f"{records[f]['wall_seconds'] / 60:.0f}" for f, *_ in CLASSIFIERS)
    w(f"They are slim and trained from scratch on {len(sp['train'])} phantom volumes ({minutes} min). In "
      "pseudo-labelling the slice decision normally comes from the ground-truth slice labels (METHOD.md "
      "section 4); what matters there is the quality of their CAMs, which that pipeline measures.")
    if cut:
        w(f"{' and '.join(f'`{f}`' for f in cut)} stopped at the time budget before the planned epochs "
          "(their cosine schedule did not reach zero); every epoch is reproducible bit for bit with the "
          "seed and one thread, but where a time budget ends the run depends on the machine's load.")
    w("")
    w("Taps, as ONNX tensor names in `ichseg.taps` / `ichseg.deep_tap` (`ichseg inspect` lists them):")
    w("")
    for f, *_ in CLASSIFIERS:
        m = records[f]["metadata"]
        w(f"- `{f}`: {', '.join(f'`{t}`' for t in m['ichseg.taps'].split(','))}; deep tap `{m['ichseg.deep_tap']}`")
    w("")
    w(TUNED_NOTE)
    w("")
    for f, *_ in CLASSIFIERS:
        m = records[f]["metadata"]
        tuned = [f"`{k}` = {v}" for k, v in sorted(m.items()) if k.startswith("ichseg.pseudo.")]
        w(f"- `{f}`: {', '.join(tuned) if tuned else 'none'}")
    w("")
    w("## U-Net")
    w("")
    w("**Fully supervised: trained on the ground-truth masks** (the paper's upper-bound baseline). The")
    w("weakly supervised U-Net, trained on pseudo masks from `ichseg pseudo-label`, follows in the next")
    w("section.")
    w("")
    a = ur["args"]
    w(f"SGD 0.01, momentum 0.9, weight decay 1e-4, cosine decay, batch {a['batch']}, loss CE + soft Dice, "
      f"horizontal and vertical flips. Choice for the CPU: {a['crop']}x{a['crop']} patches of the "
      f"{unet_input_size(doc)}x{unet_input_size(doc)} slices, centred on a mask pixel half of the time; each epoch "
      f"uses every slice with mask pixels and a fresh {round(100 * a['neg_fraction'])} % of the empty ones. "
      f"Validated (Dice at the model resolution) every {a['val_every']} epochs, best weights kept. "
      f"{ur['epochs_run']} epochs run (best {ur['best_epoch'] + 1}), stopped by {_stop(ur['stop'])}; "
      f"{ur['wall_seconds'] / 60:.1f} min.")
    w("")
    w(f"Scores from the Rust library on the native {ps}x{ps} grid: `ichseg segment --model models/unet.onnx` on "
      "each held-out volume, then `ichseg eval` against the ground truth (percent; IoU over all slices of "
      "the split, METHOD.md section 6; `python -m ichseg_training.evaluate unet ...` runs both):")
    w("")
    w("| split | volumes | IoU background | IoU hemorrhage | **mIoU** | **Dice** | **CL** | **ML** | **FPL** |")
    w("|---|---|---|---|---|---|---|---|---|")
    for subset in ("test", "val"):
        o = sc[f"unet_{subset}"]["overall"]
        w(f"| {subset} | {len(sc[f'unet_{subset}']['patients'])} | {_pct(o['iou_background'])} "
          f"| {_pct(o['iou_hemorrhage'])} | {_pct(o['miou'])} | {_pct(o['dice'])} | {_pct(o['cl'])} "
          f"| {_pct(o['ml'])} | {_pct(o['fpl'])} |")
    w("")
    w("The test row is the held-out score; validation also chose the epoch, so its row is optimistic.")
    rows = sc["unet_test"]["per_volume"]
    neg = [r for r in rows if r["scores"]["n_gt_sites"] == 0]
    neg_fp = [r for r in neg if r["scores"]["n_pred_sites"] > 0]
    fp_sites = sum(r["scores"]["n_fp"] for r in rows)
    o = sc["unet_test"]["overall"]
    w(f"Of the {len(neg)} test volumes without bleeding, {len(neg_fp)} get some false-positive pixels. "
      f"{fp_sites} of the {o['n_pred_sites']} predicted 2D sites touch no bleeding (FPL) and "
      f"{o['n_correct']} of the {o['n_gt_sites']} true 2D sites are found (CL).")
    u = (doc.get("error_analysis") or {}).get("unet")
    if u and None not in (u["fp_median_px"], u["missed_median_px"], u["found_median_px"]):
        w(f"The false-positive sites are specks (median {u['fp_median_px']:.0f} pixels, "
          f"{_pct(u['fp_share_le_20px'])} % of them at most 20), and the missed true sites are small "
          f"(median {u['missed_median_px']:.0f} pixels against {u['found_median_px']:.0f} for the found "
          f"ones; {u['missed_on_first_or_last_bleeding_slice']} of the {u['missed_sites']} lie on the first "
          "or last bleeding slice of their volume): mIoU and Dice, which weigh pixels, are high, while the "
          "site counts CL and FPL are dominated by these small sites.")
    w("Per test volume (the `ichseg eval` table; volumes without bleeding have no CL/ML):")
    w("")
    w("```")
    w(sc["unet_test"]["table"].rstrip())
    w("```")
    w("")
    write_weak_section(w, doc, records)
    write_filter_section(w, records)
    write_shifted_section(w, doc)
    w("## The sample and the demo")
    w("")
    w(f"`samples/sample.nii.gz` is test volume `{doc['sample']}` (of the bleeding test volumes whose mask's "
      f"median CT value is blood, at most {SAMPLE_MAX_MEDIAN_HU:.0f} HU, the one with the median bleed volume) and `samples/sample_mask.nii.gz` its ground truth. `ichseg demo`, run from "
      "the repository root, picks up `models/unet.onnx` and the sample; at shipping time it printed:")
    w("")
    w("```")
    w((doc.get("demo_output") or "").rstrip())
    w("```")
    w("")
    w("## Steps")
    w("")
    w("| step | wall time | command |")
    w("|---|---|---|")
    for s in doc["steps"]:
        cmd = s["command"].replace("|", "\\|")
        w(f"| {s['step']} | {s['wall_seconds']:.0f} s | `{cmd}` |")
    w("")
    text = portable("\n".join(lines) + "\n", (doc.get("work"), *works), doc.get("ichseg"))
    (models / "MODELS.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
