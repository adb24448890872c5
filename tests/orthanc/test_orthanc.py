"""The Orthanc plugin (bindings/orthanc, docs/ORTHANC.md) inside real Orthanc servers that the
tests start themselves: loopback only, random free HTTP and DICOM ports, a temporary storage
folder, always stopped at the end (a failing test included).

    tests/orthanc/run.sh [PYTEST ARGS...]   # installs libichseg and builds the CLI, then runs this

The session fixture `plugin` builds bindings/orthanc with CMake against an installed libichseg:
the prefix in ICHSEG_PREFIX, else one that scripts/install.sh makes in a temporary folder
(ICHSEG_PROFILE, default debug; that builds the library with cargo). Other environment:
ICHSEG_BIN (the `ichseg` CLI, the reference the plugin's SEG must equal; default
target/<profile>/ichseg), ORTHANC_BIN (default: Orthanc on PATH). Without Orthanc, its SDK
header, cmake or the CLI the tests skip, unless ICHSEG_REQUIRE_ORTHANC=1 (run.sh sets it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "dicom"
MODEL = ROOT / "models" / "unet.onnx"
PROFILE = os.environ.get("ICHSEG_PROFILE", "debug")
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = Path(os.environ.get("ICHSEG_BIN") or TARGET / PROFILE / "ichseg")
ORTHANC = os.environ.get("ORTHANC_BIN") or shutil.which("Orthanc") or ""
SDK_HEADER = Path("/usr/include/orthanc/OrthancCPlugin.h")
REQUIRED = os.environ.get("ICHSEG_REQUIRE_ORTHANC") == "1"
missing = [what for what, ok in [("Orthanc", ORTHANC and Path(ORTHANC).is_file()),
                                 ("cmake", shutil.which("cmake")),
                                 # CMake also looks elsewhere (ORTHANC_SDK_DIR); this is the Debian place.
                                 ("OrthancCPlugin.h (orthanc-dev)",
                                  SDK_HEADER.is_file() or os.environ.get("ORTHANC_SDK_DIR")),
                                 (f"the ichseg CLI ({BIN})", BIN.is_file())] if not ok]
if missing and not REQUIRED:
    pytest.skip(f"{', '.join(missing)} missing (scripts/test-deps.sh, tests/orthanc/run.sh)", allow_module_level=True)

SEGMENT_TIMEOUT_S = 600  # a debug libichseg on 2 busy cores; the fixtures are 8 slices of 128x112
# Orthanc's resident memory with the plugin and the shipped U-Net: bounds a few times above what
# docs/ORTHANC.md reports as measured, tight enough that a per-series leak or a runaway buffer fails.
MAX_RSS_GROWTH_MIB = 32
MAX_PEAK_RSS_MIB = 384
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
USER_METADATA = {"IchsegReport": 4600, "IchsegState": 4601}
# Five CT series of the fixtures, each its own study, uploaded at once by the queue tests.
BATCH = ["implicit_le", "jpeg_lossless", "rle", "unsigned", "oblique"]
ORTHANC_ENTRY_POINTS = ["OrthancPluginFinalize", "OrthancPluginGetName", "OrthancPluginGetVersion",
                        "OrthancPluginInitialize"]


def test_everything_needed_is_present():
    assert not missing, f"missing: {', '.join(missing)}"


@pytest.fixture(scope="session")
def plugin(tmp_path_factory) -> Path:
    """libichseg_orthanc.so, built with CMake against an install of libichseg."""
    work = tmp_path_factory.mktemp("plugin")
    prefix = os.environ.get("ICHSEG_PREFIX")
    if not prefix:
        prefix = str(work / "prefix")
        subprocess.run([str(ROOT / "scripts" / "install.sh"), "--prefix", prefix, "--profile", PROFILE], check=True)
    build = work / "build"
    cmake = ["cmake", "-S", str(ROOT / "bindings" / "orthanc"), "-B", str(build),
             f"-DCMAKE_PREFIX_PATH={Path(prefix).resolve()}", "-DCMAKE_BUILD_TYPE=Release"]
    if os.environ.get("ORTHANC_SDK_DIR"):
        cmake.append(f"-DORTHANC_SDK_DIR={os.environ['ORTHANC_SDK_DIR']}")
    subprocess.run(cmake, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "-j", "2"], check=True, stdout=subprocess.DEVNULL)
    so = build / "libichseg_orthanc.so"
    assert so.is_file()
    # Only Orthanc's entry points leave the plugin (the C++ wrapper and JsonCpp stay inside).
    nm = subprocess.run(["nm", "-D", "--defined-only", str(so)], check=True, capture_output=True, text=True).stdout
    exported = sorted(line.split()[2] for line in nm.splitlines() if len(line.split()) == 3 and line.split()[1] == "T")
    assert exported == ORTHANC_ENTRY_POINTS, exported
    # It links libichseg from the prefix it was built against.
    ldd = subprocess.run(["ldd", str(so)], check=True, capture_output=True, text=True).stdout
    assert str(Path(prefix).resolve()) in ldd, ldd
    return so


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process on loopback with our plugin; stop() always kills it."""

    def __init__(self, plugin: Path, workdir: Path, ichseg: dict | None, user_metadata: bool = True, **extra):
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"orthanc-{time.monotonic_ns()}.log"
        self.http_port, self.dicom_port = free_port(), free_port()
        config = {
            "Name": "ichseg-test",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            # Orthanc 1.10 listens on every interface and has no bind option: refuse everyone
            # but the local host on HTTP, and every DICOM peer (none is declared).
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomModalities": {},
            "OrthancPeers": {},
            "HttpDescribeErrors": True,
            "StableAge": 1,
            "SaveJobs": False,
            "Plugins": [str(plugin)],
        }
        if user_metadata:
            config["UserMetadata"] = USER_METADATA
        if ichseg is not None:
            config["Ichseg"] = ichseg
        config.update(extra)
        self.config_path = workdir / f"orthanc-{self.http_port}.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.proc = None

    def start(self) -> "Orthanc":
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([ORTHANC, "--verbose", str(self.config_path)], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if self.request("GET", "/system")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"Orthanc did not answer within 120 s:\n{self.log_text()}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.returncode = self.proc.returncode
            self.log.close()
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 30):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, method: str, path: str, body: bytes | None = None, expect: int = 200, timeout: float = 30):
        status, data = self.request(method, path, body, timeout)
        assert status == expect, f"{method} {path}: HTTP {status} (expected {expect}): {data[:2000]!r}"
        return json.loads(data) if data else None

    def upload(self, folder: Path) -> dict[str, str]:
        """Uploads every DICOM file under folder; {SeriesInstanceUID: Orthanc series id}."""
        series = {}
        for p in sorted(folder.rglob("*")):
            raw = p.read_bytes() if p.is_file() else b""
            if raw[128:132] != b"DICM":
                continue  # README.txt and such
            answer = self.json("POST", "/instances", raw)
            uid = str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
            series[uid] = answer["ParentSeries"]
        return series

    def upload_at_once(self, names: list[str]) -> dict[str, str]:
        """Uploads several fixture series in parallel threads; {fixture name: Orthanc series id}."""
        with ThreadPoolExecutor(len(names)) as pool:
            answers = list(pool.map(lambda n: self.upload(FIXTURES / "series" / n), names))
        return {n: next(iter(a.values())) for n, a in zip(names, answers)}

    def state(self, series: str) -> str | None:
        status, data = self.request("GET", f"/series/{series}/metadata/IchsegState")
        return data.decode() if status == 200 else None

    def rss_mib(self) -> tuple[float, float]:
        """Orthanc's resident memory now and at its peak (VmRSS, VmHWM), in MiB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))

    def seg_instances(self) -> list[str]:
        return self.json("POST", "/tools/find", json.dumps({"Level": "Instance", "Query": {"Modality": "SEG"}}).encode())

    def wait_report(self, series: str, timeout: float = SEGMENT_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, data = self.request("GET", f"/ichseg/series/{series}")
            if status == 200:
                return json.loads(data)
            assert status == 404, f"GET /ichseg/series/{series}: HTTP {status}: {data!r}"
            assert self.proc.poll() is None, f"Orthanc died:\n{self.log_text()}"
            time.sleep(0.5)
        raise AssertionError(f"no report for series {series} within {timeout} s:\n{self.log_text()[-5000:]}")

    def wait_log(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.log_text()):
                return
            time.sleep(0.3)
        raise AssertionError(f"/{pattern}/ not in Orthanc's log within {timeout} s:\n{self.log_text()[-5000:]}")


def default_ichseg(tmp: Path, **kw) -> dict:
    (tmp / "scratch").mkdir(exist_ok=True)
    return {"Model": str(MODEL), "Device": "cpu", "Threads": 2, "TemporaryDirectory": str(tmp / "scratch"), **kw}


@pytest.fixture
def servers(tmp_path, plugin):
    """Starts Orthancs on demand; every one is stopped at the end, whatever happened."""
    started = []

    def start(ichseg=None, workdir=None, **kw):
        if ichseg is None:
            ichseg = default_ichseg(tmp_path)
        o = Orthanc(plugin, workdir or tmp_path, ichseg, **kw)
        started.append(o)
        return o.start()

    try:
        yield start
    finally:
        for o in started:
            try:
                o.stop()
            finally:
                if o.proc is not None:  # stop() raised before the kill: make sure it is dead
                    o.proc.kill()


def dcm(raw: bytes) -> pydicom.Dataset:
    from io import BytesIO
    return pydicom.dcmread(BytesIO(raw))


def frames_by_source(seg: pydicom.Dataset) -> dict[str, np.ndarray]:
    """{referenced source SOPInstanceUID: that frame's mask} of a one-segment BINARY SEG."""
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    out = {}
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[str(src)] = np.asarray(frame, np.uint8)
    return out


def cli_segment(series: Path, out: Path) -> tuple[pydicom.Dataset, dict]:
    seg, report = out / "cli_seg.dcm", out / "cli_report.json"
    subprocess.run([str(BIN), "segment", str(series), "-m", str(MODEL), "-o", str(seg), "--report", str(report),
                    "--device", "cpu", "--threads", "2", "-q"], check=True)
    return pydicom.dcmread(seg), json.loads(report.read_text())


def test_stable_ct_series_gets_one_seg_and_a_report_also_after_a_restart(servers, tmp_path):
    series_dir = FIXTURES / "series" / "explicit_le"
    # OverwriteInstances: after the restart, uploading the series again makes it stable again.
    orthanc = servers(OverwriteInstances=True)
    status = orthanc.json("GET", "/ichseg/status")
    assert status["device"] == "cpu" and status["model"]["name"] == "unet", status
    # no MinLesionMl configured: the model's own filter, reported as null
    assert status["model"]["threshold"] == 0.5 and status["model"]["min_lesion_ml"] is None, status
    assert status["queue_length"] == 0 and status["auto_segment"] is True, status

    uids = orthanc.upload(series_dir)
    ct_uid = str(pydicom.dcmread(next(series_dir.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
    series = uids[ct_uid]
    report = orthanc.wait_report(series)
    assert report["status"] == "done", report
    source = orthanc.json("GET", f"/series/{series}")
    assert report["series"] == series and report["study"] == source["ParentStudy"]
    assert report["series_instance_uid"] == ct_uid
    assert report["dims"] == [112, 128, 8] and report["model"]["name"] == "unet", report
    assert report["lesion_count"] == len(report["lesions"]) >= 1, report
    assert report["total_volume_ml"] > 0
    for k in ["fetch_s", "read_s", "segment_s", "encode_s", "store_s", "total_s"]:
        assert report["timings"][k] >= 0, report["timings"]
    assert orthanc.request("GET", f"/series/{series}/metadata/IchsegState")[1] == b"done"
    assert list((tmp_path / "scratch").iterdir()) == [], "the series' temporary folder is removed"
    assert report["model"]["path"] == str(MODEL) and report["model"]["min_lesion_ml"] is None, report
    # The SR beside the CT series is not a CT: the filter skips it, nothing recorded.
    sr = [s for u, s in uids.items() if u != ct_uid]
    for s in sr:
        assert orthanc.request("GET", f"/ichseg/series/{s}")[0] == 404

    # The SEG: in Orthanc, same study, referencing the source series, equal to the CLI's.
    seg_id = report["seg_instance"]
    assert orthanc.seg_instances() == [seg_id]
    seg_info = orthanc.json("GET", f"/instances/{seg_id}")
    assert orthanc.json("GET", f"/series/{seg_info['ParentSeries']}")["ParentStudy"] == source["ParentStudy"]
    assert report["seg_series"] == seg_info["ParentSeries"]
    # The SEG series becomes stable in turn: skipped as a SEG, nothing recorded on it.
    orthanc.wait_log(rf"series {seg_info['ParentSeries']} is a SEG, not segmented")
    assert orthanc.request("GET", f"/ichseg/series/{seg_info['ParentSeries']}")[0] == 404
    raw_seg = orthanc.request("GET", f"/instances/{seg_id}/file")[1]
    seg = dcm(raw_seg)
    src = pydicom.dcmread(next(series_dir.glob("*.dcm")), stop_before_pixels=True)
    assert seg.SOPClassUID == SEG_SOP_CLASS and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_uid
    cli_seg, cli_report = cli_segment(series_dir, tmp_path)
    assert seg.SegmentSequence[0].SegmentAlgorithmName == cli_seg.SegmentSequence[0].SegmentAlgorithmName
    assert seg.SegmentSequence[0].SegmentAlgorithmName.endswith("unet")
    ours, theirs = frames_by_source(seg), frames_by_source(cli_seg)
    assert ours.keys() == theirs.keys()
    assert sum(int(f.sum()) for f in ours.values()) > 0, "the fixture holds a bleed the model finds"
    for uid in ours:
        np.testing.assert_array_equal(ours[uid], theirs[uid], err_msg=f"frame of {uid}")
    assert report["lesion_count"] == cli_report["lesion_count"]
    assert report["total_volume_ml"] == pytest.approx(cli_report["total_volume_ml"], rel=1e-9)
    # The independent readers (dciodvfy, highdicom, dcmqi: tests/dicom/validate_seg.py) accept the
    # plugin's SEG and rebuild from it the mask the CLI writes as NIfTI.
    (tmp_path / "plugin_seg.dcm").write_bytes(raw_seg)
    subprocess.run([str(BIN), "segment", str(series_dir), "-m", str(MODEL), "-o", str(tmp_path / "cli_mask.nii.gz"),
                    "--device", "cpu", "--threads", "2", "-q"], check=True)
    check = subprocess.run([sys.executable, str(ROOT / "tests" / "dicom" / "validate_seg.py"),
                            "--seg", str(tmp_path / "plugin_seg.dcm"), "--source", str(series_dir),
                            "--expected", str(tmp_path / "cli_mask.nii.gz")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # Restart on the same storage and upload the series again: it is stable again, the plugin
    # sees from the metadata that it is done, and no second SEG appears.
    orthanc.stop()
    # SIGTERM: Orthanc finalizes the plugin (the worker is joined) and exits cleanly.
    assert orthanc.returncode == 0, orthanc.log_text()[-3000:]
    orthanc = servers(workdir=tmp_path, OverwriteInstances=True)
    assert orthanc.json("GET", f"/ichseg/series/{series}") == report
    orthanc.upload(series_dir)
    orthanc.wait_log(rf"series {series} already processed \(done\), skipped")
    time.sleep(2)
    assert orthanc.seg_instances() == [seg_id]
    assert orthanc.json("GET", f"/ichseg/series/{series}")["seg_instance"] == seg_id

    # On demand: a new run replaces the SEG (still one) and the report.
    again = orthanc.json("POST", f"/ichseg/series/{series}/segment", b"", timeout=SEGMENT_TIMEOUT_S)
    assert again["status"] == "done" and again["seg_instance"] != seg_id, again
    assert orthanc.seg_instances() == [again["seg_instance"]]
    assert orthanc.json("GET", f"/ichseg/series/{series}") == again
    assert again["lesions"] == report["lesions"]
    status = orthanc.json("GET", "/ichseg/status")
    assert status["done"] == 1 and status["failed"] == 0 and status["queue_length"] == 0, status

    # Unknown series and wrong methods.
    orthanc.json("POST", "/ichseg/series/nonexistent/segment", b"", expect=404)
    orthanc.json("GET", "/ichseg/series/nonexistent", expect=404)
    assert orthanc.request("GET", f"/ichseg/series/{series}/segment")[0] == 405


def test_bad_series_fail_recorded_without_a_seg(servers):
    orthanc = servers()
    # A CT series with a missing slice: segmented automatically, refused by the reader.
    gap = orthanc.upload(FIXTURES / "bad" / "gap")
    (gap_series,) = gap.values()
    report = orthanc.wait_report(gap_series)
    assert report["status"] == "failed" and report["error"] == "invalid-image", report
    assert "ICHSEG_STATUS_INVALID_IMAGE" in report["reason"], report
    state = orthanc.request("GET", f"/series/{gap_series}/metadata/IchsegState")[1].decode()
    assert state.startswith("failed: invalid-image"), state
    orthanc.wait_log(rf"series {gap_series} failed \(invalid-image\)")

    # An MR series: the filter keeps it from the automatic path (nothing recorded); on demand it
    # fails as not CT, recorded.
    mr = orthanc.upload(FIXTURES / "bad" / "mr")
    (mr_series,) = mr.values()
    orthanc.wait_log(rf"series {mr_series} not segmented: Modality \"MR\" is not CT")
    assert orthanc.request("GET", f"/ichseg/series/{mr_series}")[0] == 404
    failed = orthanc.json("POST", f"/ichseg/series/{mr_series}/segment", b"", expect=422, timeout=SEGMENT_TIMEOUT_S)
    assert failed["status"] == "failed" and failed["series"] == mr_series and failed["error"] == "not-ct", failed
    assert orthanc.json("GET", f"/ichseg/series/{mr_series}") == failed
    state = orthanc.request("GET", f"/series/{mr_series}/metadata/IchsegState")[1].decode()
    assert state.startswith('failed: not-ct: Modality "MR" is not CT'), state

    assert orthanc.seg_instances() == [], "a failed series must store no SEG"
    status = orthanc.json("GET", "/ichseg/status")
    assert status["failed"] == 2 and status["done"] == 0, status
    assert orthanc.proc.poll() is None


def test_series_filter(servers, tmp_path):
    """DescriptionPattern keeps a CT series out (nothing recorded); with "Modality": "" an MR
    series passes the filter and is recorded as failed (not-ct), without a SEG."""
    ct_dir = FIXTURES / "series" / "explicit_le"
    description = str(pydicom.dcmread(next(ct_dir.glob("*.dcm")), stop_before_pixels=True).SeriesDescription)
    orthanc = servers(default_ichseg(tmp_path, SeriesFilter={"Modality": "", "DescriptionPattern": "^no such series$"}))
    mr = orthanc.upload(FIXTURES / "bad" / "mr")
    (mr_series,) = mr.values()
    orthanc.wait_log(rf"series {mr_series} not segmented: SeriesDescription .* does not match DescriptionPattern")
    ct = orthanc.upload(ct_dir)
    for s in ct.values():
        orthanc.wait_log(rf"series {s} not segmented: SeriesDescription .* does not match DescriptionPattern")
        assert orthanc.request("GET", f"/ichseg/series/{s}")[0] == 404
    orthanc.stop()

    orthanc = servers(default_ichseg(tmp_path, SeriesFilter={"Modality": "", "DescriptionPattern": "."},
                                     MinLesionMl=0.25),
                      workdir=tmp_path / "second")
    (mr_series,) = orthanc.upload(FIXTURES / "bad" / "mr").values()
    report = orthanc.wait_report(mr_series)
    assert report["status"] == "failed" and report["error"] == "not-ct", report
    orthanc.wait_log(rf"series {mr_series} failed \(not-ct\)")
    # The CT series passes (its description matches "."); the one-instance SR beside it has no
    # description, so the filter keeps it out.
    uids = orthanc.upload(ct_dir)
    ct_uid = str(pydicom.dcmread(next(ct_dir.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
    report = orthanc.wait_report(uids[ct_uid])
    assert report["status"] == "done" and report["series_description"] == description, report
    assert report["model"]["min_lesion_ml"] == 0.25, report  # the configured filter
    assert orthanc.seg_instances() == [report["seg_instance"]]
    for uid, s in uids.items():
        if uid != ct_uid:
            orthanc.wait_log(rf"series {s} not segmented: SeriesDescription \"\" does not match DescriptionPattern")
    status = orthanc.json("GET", "/ichseg/status")
    assert status["failed"] == 1 and status["done"] == 1 and status["model"]["min_lesion_ml"] == 0.25, status


@pytest.mark.parametrize("case", ["missing model", "not a model", "no Model", "no UserMetadata", "bad Device"])
def test_bad_configuration_leaves_orthanc_running_without_the_plugin(servers, tmp_path, case):
    ichseg = default_ichseg(tmp_path)
    user_metadata = True
    reason = {
        "missing model": "cannot load the model",
        "not a model": "ICHSEG_STATUS_INVALID_MODEL",
        "no Model": r"\"Model\": required",
        "no UserMetadata": r"does not declare \"IchsegState\"",
        "bad Device": r"\"Device\": must be",
    }[case]
    if case == "missing model":
        ichseg["Model"] = str(tmp_path / "missing.onnx")
    elif case == "not a model":
        ichseg["Model"] = str(ROOT / "tests" / "fixtures" / "unet" / "not_a_model.onnx")
    elif case == "no Model":
        del ichseg["Model"]
    elif case == "no UserMetadata":
        user_metadata = False
    else:
        ichseg["Device"] = "gpu"
    orthanc = servers(ichseg, user_metadata=user_metadata)
    assert orthanc.json("GET", "/system")["Name"] == "ichseg-test"
    assert orthanc.request("GET", "/ichseg/status")[0] == 404
    orthanc.wait_log(r"ichseg: not registered: .*" + reason, timeout=10)
    # Orthanc still stores images.
    assert orthanc.upload(FIXTURES / "bad" / "mr")
    assert orthanc.proc.poll() is None


def test_five_series_at_once_each_segmented_once_with_bounded_memory(servers):
    """Series arriving together are all segmented, none twice, and Orthanc's memory does not grow
    with the number of series (the model and the worker's buffers are reused)."""
    orthanc = servers()
    (first,) = orthanc.upload(FIXTURES / "series" / "deflate").values()
    assert orthanc.wait_report(first)["status"] == "done"
    rss_after_one, _ = orthanc.rss_mib()

    series = orthanc.upload_at_once(BATCH)
    reports = {name: orthanc.wait_report(s) for name, s in series.items()}
    for name, report in reports.items():
        assert report["status"] == "done" and report["series"] == series[name], (name, report)
    segs = sorted(orthanc.seg_instances())
    assert set(r["seg_instance"] for r in reports.values()) < set(segs)
    assert len(segs) == len(BATCH) + 1, "one SEG per series, none twice"
    for name, s in series.items():
        seg = dcm(orthanc.request("GET", f"/instances/{reports[name]['seg_instance']}/file")[1])
        src = orthanc.json("GET", f"/series/{s}")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src["MainDicomTags"]["SeriesInstanceUID"]
        assert len(re.findall(rf"series {s} segmented:", orthanc.log_text())) == 1, name
    status = orthanc.json("GET", "/ichseg/status")
    assert status["done"] == len(BATCH) + 1 and status["failed"] == 0 and status["dropped"] == 0, status
    assert status["queue_length"] == 0, status

    rss, peak = orthanc.rss_mib()
    print(f"Orthanc RSS: {rss_after_one:.0f} MiB after one series, {rss:.0f} MiB after {len(BATCH) + 1}, "
          f"peak {peak:.0f} MiB")
    assert rss - rss_after_one < MAX_RSS_GROWTH_MIB, (rss_after_one, rss)
    assert peak < MAX_PEAK_RSS_MIB, peak


def test_a_full_queue_records_the_dropped_series_and_answers_503(servers, tmp_path):
    """QueueSize 1: stable series beyond the queue are dropped and recorded on the series (never
    lost silently); POSTs beyond it get 503 at once; a dropped series runs on demand."""
    orthanc = servers(default_ichseg(tmp_path, QueueSize=1))
    series = orthanc.upload_at_once(BATCH[:4])
    deadline = time.monotonic() + SEGMENT_TIMEOUT_S
    while any(orthanc.state(s) in (None, "") for s in series.values()):
        assert time.monotonic() < deadline, {n: orthanc.state(s) for n, s in series.items()}
        time.sleep(0.5)
    states = {n: orthanc.state(s) for n, s in series.items()}
    dropped = [n for n, st in states.items() if st.startswith("skipped: the queue was full")]
    done = [n for n, st in states.items() if st == "done"]
    # Four series stable within a second or two, one in the worker, one queued: the rest dropped.
    assert dropped and len(dropped) + len(done) == len(series), states
    for n in dropped:
        orthanc.wait_log(rf"queue full \(QueueSize 1\): series {series[n]} not segmented")
        assert orthanc.request("GET", f"/ichseg/series/{series[n]}")[0] == 404
    assert orthanc.json("GET", "/ichseg/status")["dropped"] == len(dropped)

    # Four on-demand requests at once: one runs, one waits in the queue, the others are refused.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda s: orthanc.request("POST", f"/ichseg/series/{s}/segment", b"",
                                                          timeout=SEGMENT_TIMEOUT_S), series.values()))
    codes = [code for code, _ in answers]
    assert codes.count(503) >= 1 and set(codes) <= {200, 503}, answers
    for code, body in answers:
        if code == 503:
            assert b"queue is full (QueueSize 1)" in body, body
    # Every series, dropped ones included, gets its report on demand, with one SEG each.
    for n, s in series.items():
        report = orthanc.json("POST", f"/ichseg/series/{s}/segment", b"", timeout=SEGMENT_TIMEOUT_S)
        assert report["status"] == "done", (n, report)
        assert orthanc.state(s) == "done"
    assert len(orthanc.seg_instances()) == len(series), "a new run replaces the series' SEG"
    assert orthanc.proc.poll() is None


def test_out_of_memory_is_a_recorded_failure_without_a_seg(servers, tmp_path):
    """MemoryLimitMb below what a series needs: libichseg refuses before allocating, the plugin
    records out-of-memory on the series, stores nothing, and Orthanc keeps running."""
    orthanc = servers(default_ichseg(tmp_path, MemoryLimitMb=1))
    (series,) = orthanc.upload(FIXTURES / "series" / "implicit_le").values()
    report = orthanc.wait_report(series)
    assert report["status"] == "failed" and report["error"] == "out-of-memory", report
    assert orthanc.state(series).startswith("failed: out-of-memory"), orthanc.state(series)
    orthanc.wait_log(rf"series {series} failed \(out-of-memory\)")
    assert orthanc.seg_instances() == []
    assert orthanc.json("GET", "/ichseg/status")["failed"] == 1
    assert orthanc.proc.poll() is None
