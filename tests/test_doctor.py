"""`ds2a doctor`: facts, verdicts and exit codes on fake machines; `--smoke` skips honestly; OpenCV extra."""
from __future__ import annotations

import configparser
import json
import subprocess
import sys
import threading
import types
from enum import Enum
from pathlib import Path
from typing import Any, List

import pytest
from cuda_fakes import Machine, pycuda_entries

from ds2a.cli import doctor as command
from ds2a.cli import main
from ds2a.doctor import probe, smoke
from ds2a.opencv import MISSING, gstreamer_in_build
from ds2a.trt.sidecar import write_sidecar

ROOT = Path(__file__).resolve().parents[1]


class Err(Enum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35


class FakeCudart:
    """cuda-python's runtime module on a machine with `gpus` [(name, (major, minor), sms, bytes)]."""

    def __init__(self, driver: int, runtime: int, gpus: List[Any]) -> None:
        self.driver, self.runtime, self.gpus = driver, runtime, gpus

    def cudaDriverGetVersion(self):
        return Err.cudaSuccess, self.driver

    def cudaRuntimeGetVersion(self):
        return Err.cudaSuccess, self.runtime

    def cudaGetDeviceCount(self):
        if self.driver == 0:
            return Err.cudaErrorInsufficientDriver, None
        return Err.cudaSuccess, len(self.gpus)

    def cudaGetDeviceProperties(self, i):
        name, (major, minor), sms, mem = self.gpus[i]
        return Err.cudaSuccess, types.SimpleNamespace(name=name.encode(), major=major, minor=minor,
                                                      multiProcessorCount=sms, totalGlobalMem=mem)


ORIN = ("Orin", (8, 7), 16, 64 * 2**30)


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Configure a fake machine: machine(trt="10.3.0", driver=..., gpus=[...])."""
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setattr(probe, "cameras", lambda pattern="/dev/video*": [])

    def configure(trt=None, driver=0, runtime=12060, gpus=(), board=None, pycuda=None):
        """`pycuda`: a tests/cuda_fakes.py Machine whose fake pycuda is the only CUDA layer (JetPack 5)."""
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=trt) if trt else None)
        monkeypatch.setattr(probe, "load_cudart", lambda: FakeCudart(driver, runtime, list(gpus)))
        if pycuda is not None:
            for name, module in pycuda_entries(pycuda):
                monkeypatch.setitem(sys.modules, name, module)
            monkeypatch.setattr(probe, "load_cudart", lambda: None)
        board_file = tmp_path / "model"
        board_file.write_bytes((board or "").encode() + b"\x00")
        monkeypatch.setattr(probe.platform_info, "__defaults__", (str(tmp_path / "no_tegra"), str(board_file)))
    return configure


def doctor(capsys, *args: str):
    code = main(["doctor", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cpu_machine_says_plainly_there_is_no_gpu_or_driver(machine, capsys):
    machine(trt=None, driver=0)
    code, out, _ = doctor(capsys)
    assert code == command.NO_GPU == 1
    assert "No NVIDIA GPU or driver is usable here" in out and "no NVIDIA driver" in out
    assert "tensorrt      not importable" in out and "gpu           none" in out


def test_json_has_every_fact_and_the_same_exit_code(machine, capsys):
    machine(trt=None, driver=0)
    code, out, _ = doctor(capsys, "--json")
    report = json.loads(out)
    assert report["exit_code"] == code == 1
    for key in ("platform", "python", "tensorrt", "cuda_python", "pycuda", "gpus", "onnxruntime", "opencv", "cameras"):
        assert key in report
    assert report["cuda_python"]["no_driver"] is True and report["gpus"] == []
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]


def test_gpu_machine_reports_the_gpu_and_exits_0(machine, capsys):
    machine(trt="10.3.0", driver=12060, runtime=12060, gpus=[ORIN], board="NVIDIA Jetson AGX Orin Developer Kit")
    code, out, _ = doctor(capsys)
    assert code == 0, out
    assert "Orin, compute capability 8.7, 16 SMs, 64.0 GiB" in out
    assert "board: NVIDIA Jetson AGX Orin Developer Kit" in out and "TensorRT and a CUDA GPU are usable" in out


def test_cuda_python_newer_than_the_driver_is_named(machine, capsys):
    machine(trt="10.3.0", driver=11040, runtime=12060, gpus=[ORIN])
    _, out, _ = doctor(capsys)
    assert "(CUDA runtime 12.6) - too new for this driver" in out and "CUDA 11.4" in out


def _engine(tmp_path, trt="10.3.0.26", gpu=ORIN):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_sidecar(str(engine), {"tensorrt_version": trt, "gpu_name": gpu[0], "compute_capability": list(gpu[1]),
                                "precision": "int8", "inputs": [], "outputs": [], "onnx_path": "/data/m.int8.onnx",
                                "build_args": ["--int8"], "sm_count": gpu[2], "total_memory": gpu[3]})
    return str(engine)


def test_engine_for_another_tensorrt_gives_the_rebuild_command(machine, capsys, tmp_path):
    machine(trt="10.13.3.9", driver=12060, gpus=[ORIN])
    code, out, _ = doctor(capsys, "--model", _engine(tmp_path))
    assert code == command.MODEL_WONT_LOAD == 3
    assert "TensorRT 10.3.0.26" in out and f"fix: ds2a build-engine /data/m.int8.onnx --out {tmp_path}/m.engine --int8" in out


def test_engine_built_here_loads(machine, capsys, tmp_path):
    machine(trt="10.3.0.26", driver=12060, gpus=[ORIN])
    code, out, _ = doctor(capsys, "--model", _engine(tmp_path))
    assert code == 0 and "loads here: yes" in out


def test_engine_on_a_cpu_machine_points_at_the_onnx(machine, capsys, tmp_path):
    machine(trt=None, driver=0)
    code, out, _ = doctor(capsys, "--model", _engine(tmp_path))
    assert code == 3 and "no TensorRT" in out and "ds2a inspect --model /data/m.int8.onnx" in out


def test_onnx_model_runs_on_onnxruntime_and_missing_model_is_a_usage_error(machine, capsys, tmp_path):
    from fakes.onnx_models import tiny_onnx

    machine(trt=None, driver=0)
    code, out, _ = doctor(capsys, "--model", str(tiny_onnx(tmp_path / "m.onnx")))
    assert code == 1 and "loads here: yes; ONNX Runtime (CPU) loads it" in out
    code, _, err = doctor(capsys, "--model", str(tmp_path / "nope.engine"))
    assert code == 2 and "nope.engine does not exist" in err


def test_l4t_release_board_and_jetpack(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    board = tmp_path / "model"
    board.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    info = probe.platform_info(str(release), str(board))
    assert info["l4t"] == "35.4.1" and info["jetpack"] == "5.1.x" and info["jetson"]
    assert info["board"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert probe.jetpack_for("36.4.0") == "6.1/6.2" and probe.jetpack_for(None) is None
    assert probe.platform_info(str(tmp_path / "none"), str(tmp_path / "none"))["jetson"] is False


def test_gstreamer_read_from_opencv_build_information():
    assert gstreamer_in_build("  Video I/O:\n    GStreamer:                   YES (1.20.3)\n") is True
    assert gstreamer_in_build("  Video I/O:\n    GStreamer:                   NO\n") is False
    assert gstreamer_in_build("  Video I/O:\n    FFMPEG: YES\n") is None


def test_smoke_here_skips_every_part_with_its_reason(machine, capsys):
    machine(trt=None, driver=0)
    code, out, _ = doctor(capsys, "--smoke", "--json")
    parts = json.loads(out)["smoke"]
    assert code == 1 and {p["name"] for p in parts} == set(smoke.PARTS)
    assert all(p["status"] == "skipped" and "TensorRT is not importable" in p["detail"] for p in parts)


def test_smoke_runs_parts_whose_needs_are_met_and_reports_failures(machine, capsys, monkeypatch):
    machine(trt="10.3.0", driver=12060, gpus=[ORIN])

    def broken(ws):
        raise RuntimeError("invalid device context")

    fake = {"ok": (("tensorrt", "gpu"), lambda ws: "fine"), "broken": (("tensorrt", "cuda-python"), broken),
            "dla": (("tensorrt", "agx-orin"), lambda ws: "never"), "two": (("two-gpus",), lambda ws: "never")}
    monkeypatch.setattr(smoke, "PARTS", fake)
    code, out, _ = doctor(capsys, "--smoke")
    assert code == command.SMOKE_FAILED == 4
    assert "smoke         ok: passed - fine" in out
    assert "smoke         broken: failed - RuntimeError: invalid device context" in out
    assert "dla: skipped - DLA check needs a Jetson AGX Orin" in out
    assert "two: skipped - needs two GPUs, this machine has 1" in out


def test_smoke_model_matches_onnxruntime_convention(tmp_path):
    """The smoke model is a ds2a ONNX: the runtime opens it and agrees with the reference."""
    pytest.importorskip("onnx")
    from ds2a.runtime import open_model

    path = smoke.write_tiny_onnx(str(tmp_path / "t.onnx"))
    batch = smoke.frames(2)
    with open_model(path) as model:
        assert (smoke.class_maps(model, batch) == smoke.reference(path, batch)).all()


def test_missing_opencv_is_a_clear_error_naming_the_fix():
    code = "import sys; sys.modules['cv2'] = None\nfrom ds2a.cli import main\nsys.exit(main(['synth', 'x']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and MISSING in proc.stderr and "Traceback" not in proc.stderr


def test_opencv_is_an_extra_that_make_demo_and_make_test_install():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "opencv" not in cfg["options"]["install_requires"].lower()
    assert "opencv-python-headless" in cfg["options.extras_require"]["opencv"]
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -e '.[opencv]'" in makefile and "'.[opencv,train," in makefile


def test_smoke_cli_runs_can_hide_cuda_python_to_exercise_pycuda():
    """The pycuda parts run the CLI with cuda-python hidden, as on JetPack 5 where only pycuda exists."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed, nothing to hide")
    seen = {layer: json.loads(smoke.ds2a_cli("doctor", "--json", layer=layer, timeout=120).stdout)["cuda_python"]
            for layer in ("cuda-python", "pycuda")}
    assert seen["cuda-python"]["installed"] is True and seen["pycuda"]["installed"] is False


def test_doctor_reports_a_missing_opencv_instead_of_failing_on_it():
    code = "import sys; sys.modules['cv2'] = None\nfrom ds2a.cli import main\nsys.exit(main(['doctor', '--json']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    assert proc.returncode == report["exit_code"] and report["opencv"] == {**report["opencv"], "installed": False,
                                                                           "fix": MISSING}
    assert "installed" in report["cuda_python"]


# --- pycuda-only machines and --device ----------------------------------------------------------------------
def test_engine_on_a_pycuda_only_jetson_is_checked_against_pycudas_gpu(machine, capsys, tmp_path):
    """JetPack 5 has pycuda and no cuda-python: the GPU list comes from pycuda, as `ds2a inspect` would use it."""
    jetson = Machine([("NVIDIA Orin", (8, 7))], sm_count=16)
    machine(trt="8.5.2.2", pycuda=jetson)
    code, out, _ = doctor(capsys, "--model", _engine(tmp_path, trt="8.5.2.2", gpu=("NVIDIA Orin", (8, 7), 16, 8 << 30)))
    assert "gpu 0         NVIDIA Orin, compute capability 8.7, 16 SMs, 8.0 GiB" in out
    assert code == 0 and "loads here: yes" in out, out


def test_no_gpu_reason_reads_as_a_sentence(machine, capsys, tmp_path):
    machine(trt="10.3.0", driver=12060, gpus=[])
    _, out, _ = doctor(capsys, "--model", _engine(tmp_path))
    assert "this machine has no CUDA GPU, so no engine loads here" in out


def test_model_is_checked_on_the_gpu_given_with_device(machine, capsys, tmp_path):
    ampere = ("NVIDIA RTX A2000", (8, 6), 26, 6 << 30)
    hopper = ("NVIDIA H100 80GB HBM3", (9, 0), 132, 80 << 30)
    machine(trt="10.3.0.26", driver=12060, gpus=[ampere, hopper])
    engine = _engine(tmp_path, gpu=hopper)
    code, out, _ = doctor(capsys, "--model", engine, "--device", "1")
    assert code == 0 and "loads here: yes" in out, out
    code, out, _ = doctor(capsys, "--model", engine)  # GPU 0 is the A2000: refused with the reason
    assert code == 3 and "compute capability 9.0" in out
    code, out, _ = doctor(capsys, "--model", engine, "--device", "2")
    assert code == 3 and "GPU 2 does not exist here (CUDA lists GPU 0, 1)" in out


# --- which cuda-python fits the driver ------------------------------------------------------------------------
def test_cuda_python_newer_than_the_driver_gets_the_pip_line_of_the_drivers_major(machine, capsys):
    """pip's newest cuda-python is 13.x; a CUDA 12 driver refuses it: the fix pins the driver's major."""
    machine(trt="10.3.0", driver=12060, runtime=13040, gpus=[ORIN])
    code, out, _ = doctor(capsys, "--json")
    cuda = json.loads(out)["cuda_python"]
    assert cuda["fits_driver"] is False and "pip install 'cuda-python==12.*'" in cuda["fix"]
    _, out, _ = doctor(capsys)
    assert "fix: pip uninstall cuda-python cuda-bindings, then pip install 'cuda-python==12.*'" in out


@pytest.mark.parametrize("driver,line", [(12020, "pip install 'cuda-python==12.*' (the ds2a-edge[cu12] extra"),
                                         (13000, "pip install 'cuda-python==13.*' (the ds2a-edge[cu13] extra"),
                                         (11040, "pip install pycuda"),
                                         (None, "'ds2a-edge[cu12]' on a CUDA 12 driver, 'ds2a-edge[cu13]' on CUDA 13")])
def test_missing_cuda_python_names_the_install_line_for_the_drivers_cuda(machine, capsys, monkeypatch, driver, line):
    machine(trt="10.3.0", driver=0)
    monkeypatch.setattr(probe, "load_cudart", lambda: None)
    monkeypatch.setattr(probe, "driver_cuda_version", lambda lib=None: driver)
    _, out, _ = doctor(capsys)
    assert "cuda-python   not installed; " in out and line in out


def test_the_drivers_cuda_is_read_from_libcuda_itself():
    class LibCuda:  # libcuda's cuDriverGetVersion(int*) -> CUresult
        def __init__(self, version, result=0):
            self.version, self.result = version, result

        def cuDriverGetVersion(self, pointer):  # noqa: N802
            pointer._obj.value = self.version
            return self.result

    assert probe.driver_cuda_version(LibCuda(12060)) == 12060
    assert probe.driver_cuda_version(LibCuda(0, result=100)) is None  # CUDA_ERROR_NO_DEVICE


def test_the_cuda_layer_extras_pin_cuda_python_to_one_cuda_major():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    assert "cuda-python" not in extras["trt"]
    assert extras["cu12"].split() == ["cuda-python>=12.0,<13"] and extras["cu13"].split() == ["cuda-python>=13.0,<14"]
    assert ",cu13," in (ROOT / "Makefile").read_text()  # make test installs one, to import the real bindings


# --- the --smoke parts for items that need real GPUs: their logic on the fakes ------------------------------------
class LibCudaOn:
    """libcuda's cuInit / cuDeviceGet / cuDevicePrimaryCtxGetState (cuda-bindings `driver` docstrings) over a
    tests/cuda_fakes.py Machine: `active` is whether the device's primary context exists; nothing is created."""

    def __init__(self, machine):
        self.machine = machine

    def cuInit(self, flags):  # noqa: N802
        return 0

    def cuDeviceGet(self, device, ordinal):  # noqa: N802
        if not 0 <= ordinal < len(self.machine.gpus):
            return 101  # CUDA_ERROR_INVALID_DEVICE
        device._obj.value = ordinal
        return 0

    def cuDevicePrimaryCtxGetState(self, device, flags, active):  # noqa: N802
        active._obj.value = int(device.value in self.machine.primary)
        return 0


def test_smoke_gpu0_check_passes_a_model_on_gpu_1_and_fails_one_that_touches_gpu_0(tmp_path):
    """What `--smoke` asks the driver in its fresh process, here on the fake machine (no GPU on this host)."""
    from cuda_fakes import FakeCudaDriver, FakeCudart, attach_tensorrt
    from trt_stubs.helpers import NEWEST_10, build, fake_for
    from trt_stubs.onnx_models import make_onnx

    from ds2a.runtime.cuda_buffers import CudaPythonApi
    from ds2a.runtime.tensorrt_backend import TensorRTSegmenter

    fake, cuda = fake_for(NEWEST_10)
    engine = str(tmp_path / "m.engine")
    build(fake, cuda, make_onnx(tmp_path / "m.onnx"), engine)
    machine = Machine([("NVIDIA Orin", (8, 7)), ("NVIDIA Orin", (8, 7))])
    attach_tensorrt(fake, machine)
    lib, memory = LibCudaOn(machine), iter([1000.0, 1000.0, 1000.0, 1000.0])
    before = smoke.gpu_state(0, lib=lib, smi=lambda i: next(memory))
    api = CudaPythonApi(1, cudart=FakeCudart(machine), driver=FakeCudaDriver(machine))
    with TensorRTSegmenter(engine, device=1, trt_module=fake, cuda_api=api) as seg:
        seg.warmup(1)
        out = {}
        thread = threading.Thread(target=lambda: out.update(r=seg.infer_batch(smoke.frames(2)[:, :8, :8])))
        thread.start()
        thread.join(30)
        assert len(out["r"]) == 2
    after = smoke.gpu_state(0, lib=lib, smi=lambda i: next(memory))
    assert before == {"context": False, "used_mib": 1000.0} and after["context"] is False
    assert "no context on GPU 0; GPU 0 memory used 1000 -> 1000 MiB" in smoke.judge_gpu0(
        {"codes": [0, 0], "before": before, "after": after}, "GPU 1")
    machine.init_primary(0)  # what cudaSetDevice(0) on the loop thread did before
    touched = smoke.gpu_state(0, lib=lib, smi=lambda i: 1300.0)
    with pytest.raises(AssertionError, match="created a context on GPU 0"):
        smoke.judge_gpu0({"codes": [0, 0], "before": before, "after": touched}, "GPU 1")
    with pytest.raises(AssertionError, match=r"exit statuses \[0, 2\]"):
        smoke.judge_gpu0({"codes": [0, 2], "before": before, "after": after}, "GPU 1")
    with pytest.raises(smoke.Skip, match="libcuda"):
        smoke.judge_gpu0({"codes": [0], "before": before, "after": smoke.gpu_state(0, lib=object(), smi=lambda i: None)},
                         "GPU 1")


@pytest.mark.parametrize("trt,jetson,cc,reason", [
    ("8.5.2.2", False, "8.6", "cannot build hardware-compatible engines"),
    ("10.3.0", True, "8.7", "this is a Jetson"),
    ("10.3.0", False, "7.5", "needs 8.0 or newer"),
    ("8.6.1", False, "8.6", None),
])
def test_smoke_hardware_compatible_part_runs_only_where_it_can_build(trt, jetson, cc, reason):
    report = {"tensorrt": {"version": trt}, "platform": {"jetson": jetson},
              "gpus": [{"index": 0, "compute_capability": cc}]}
    got = smoke.hardware_compat_blocker(report, 0)
    assert (got is None) if reason is None else (reason in got)


def test_smoke_instance_norm_model_runs_on_onnxruntime_at_any_batch(tmp_path):
    """The hardware-compatible part's model: an InstanceNormalization that ONNX Runtime runs as the reference."""
    pytest.importorskip("onnx")
    import onnx

    path = smoke.write_tiny_onnx(str(tmp_path / "t.onnx"), "N", instance_norm=True)
    assert "InstanceNormalization" in [n.op_type for n in onnx.load(path).graph.node]
    maps = smoke.reference(path, smoke.frames(3))
    assert maps.shape == (3,) + smoke.SIZE and len(set(maps.ravel().tolist())) > 1


def test_smoke_lists_the_parts_for_items_that_need_real_gpus():
    needs = {name: parts[0] for name, parts in smoke.PARTS.items()}
    assert needs["--device 1 under pycuda, GPU 0 alone"] == ("tensorrt", "pycuda", "two-gpus", "onnx")
    assert "two-gpus" in needs["GPU 1 leaves GPU 0 alone (cuda-python)"]
    assert {"hardware-compatible build (InstanceNormalization)", "profile minimum batch above 1"} <= set(needs)


def test_smoke_needs_cuda_pythons_own_gpus_not_pycudas():
    """The GPU list falls back to pycuda's; a cuda-python part still needs cuda-python to see a GPU."""
    gpu = {"index": 0, "name": "Orin", "compute_capability": "8.7"}
    report = {"tensorrt": {"importable": True}, "cuda_python": {"installed": True, "devices": []},
              "pycuda": {"installed": True, "device_count": 1, "devices": [gpu]}, "gpus": [gpu], "platform": {}}
    assert smoke.needs_missing(report, ("tensorrt", "cuda-python")) == "cuda-python sees no GPU"
    assert smoke.needs_missing(report, ("tensorrt", "pycuda", "gpu")) is None
