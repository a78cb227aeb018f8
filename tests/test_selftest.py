"""Golden frames and the self-test at every open (ds2a/runtime/selftest.py, docs/SELFTEST.md).

A model made by ds2a carries a few frames and its own class maps for them; `open_model` runs
them again and refuses a model whose answers changed (weights edited after export), on every
backend, while the untouched model opens.
"""
from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from fakes.onnx_models import tiny_onnx
from onnx import numpy_helper

from ds2a.errors import UserError
from ds2a.export.metadata import attach_golden_file, load_onnx, read_meta, write_meta
from ds2a.runtime import open_model
from ds2a.runtime.selftest import GOLDEN_KEY, Golden, SelfTestFailed, choose_frames, defect_agreement, golden_of, make_golden

DEMO = Path(__file__).resolve().parents[1] / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"


def candidates(size=(32, 48), n: int = 6, seed: int = 0) -> list:
    """Frames with smooth colour regions, so the tiny 1x1-conv model gives every class somewhere."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
        out.append(cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_NEAREST))
    return out


def with_golden(path: Path) -> Path:
    attach_golden_file(path, candidates(), "test frames")
    return path


def edit_weights(path: Path, out: Path) -> Path:
    """The same file with its conv weights changed; the metadata (golden frames included) is kept as it was."""
    model = load_onnx(path)
    for t in model.graph.initializer:
        if t.name == "W":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[::-1].copy(), "W"))
    onnx.save(model, str(out))
    return out


def test_golden_frames_round_trip_through_the_metadata(tmp_path):
    path = with_golden(tiny_onnx(tmp_path / "m.onnx"))
    golden = golden_of(read_meta(load_onnx(path), path))
    assert golden is not None and 1 <= len(golden.frames) <= 4
    assert golden.frames[0].shape == (32, 48, 3) and golden.class_maps[0].shape == (32, 48)
    assert golden.produced_by.startswith("onnxruntime") and golden.source == "test frames"
    again = Golden.from_dict(golden.to_dict(), "x")
    assert all((a == b).all() for a, b in zip(again.frames, golden.frames))
    assert all((a == b).all() for a, b in zip(again.class_maps, golden.class_maps))


def test_damaged_golden_frames_are_a_clear_error(tmp_path):
    path = with_golden(tiny_onnx(tmp_path / "m.onnx"))
    model = load_onnx(path)
    meta = read_meta(model, path)
    meta.extra[GOLDEN_KEY]["frames"][0] = "not base64 png"
    write_meta(model, meta)
    onnx.save(model, str(path))
    with pytest.raises(UserError, match="golden frames are unreadable"):
        open_model(str(path))


def test_frames_with_more_defect_classes_are_chosen_first():
    maps = [np.zeros((4, 4), np.uint8) for _ in range(4)]
    maps[1][0, 0] = 1
    maps[2][:2] = 2
    maps[2][3, 3] = 1
    maps[3][:, :] = 3
    assert choose_frames(maps, maps, n=3, num_classes=4) == [2, 3, 1]


def test_golden_frames_stay_within_the_byte_budget():
    frames = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(4)]
    golden = make_golden(frames, lambda b: [np.ones(b.shape[1:3], np.uint8)] * len(b), "x", "y", budget_bytes=20_000)
    assert len(golden.frames) == 1  # one noise PNG is ~12 kB: a second would pass the budget


def test_defect_agreement_counts_only_pixels_some_map_calls_a_defect():
    a = np.zeros((10, 10), np.uint8)
    b = a.copy()
    assert defect_agreement(a, b) == 1.0
    a[:2] = 1
    b[:1] = 1
    assert defect_agreement(a, b) == pytest.approx(0.5)  # 10 of 20 defect pixels agree; 90 % of all pixels do


def test_onnx_runtime_opens_the_exported_model_and_refuses_it_once_its_weights_were_edited(tmp_path):
    path = with_golden(tiny_onnx(tmp_path / "m.onnx"))
    with open_model(str(path)) as model:
        assert model.selftest.status == "passed" and model.selftest.worst == 1.0
    bad = edit_weights(path, tmp_path / "edited.onnx")
    assert golden_of(read_meta(load_onnx(bad), bad)) is not None  # the metadata travelled with the edit
    with pytest.raises(SelfTestFailed, match=r"edited.onnx failed its self-test.*answers changed.*export it again"):
        open_model(str(bad))
    for threads in (1, 2):  # the legitimate variations pass
        for level in ("all", "basic", "disable"):
            with open_model(str(path), intra_op_threads=threads, optimization=level) as model:
                assert model.selftest.status == "passed"


def test_a_model_without_golden_frames_opens_with_a_warning(tmp_path, caplog):
    path = tiny_onnx(tmp_path / "old.onnx")
    with caplog.at_level(logging.WARNING, logger="ds2a"):
        with open_model(str(path)) as model:
            assert model.selftest.status == "absent"
    assert "carries no golden frames" in caplog.text


def test_the_demo_model_carries_golden_frames_with_defects_and_passes():
    with open_model(str(DEMO)) as model:
        golden = golden_of(model.meta)
        assert model.selftest.status == "passed" and model.selftest.frames == len(golden.frames) == 4
    present = set().union(*(set(np.unique(m)) for m in golden.class_maps))
    assert {1, 2, 3} <= present  # damage, smudge and dust all take part
    assert all((m > 0).any() for m in golden.class_maps)


def test_a_model_used_without_open_model_runs_its_self_test_at_warmup(tmp_path):
    from ds2a.runtime.onnxruntime_backend import OnnxRuntimeSegmenter

    bad = edit_weights(with_golden(tiny_onnx(tmp_path / "m.onnx")), tmp_path / "edited.onnx")
    model = OnnxRuntimeSegmenter(str(bad))
    assert model.selftest is None
    with pytest.raises(SelfTestFailed):
        model.warmup(1)


def test_pytorch_checkpoint_with_golden_frames_is_refused_once_its_weights_change(tmp_path, tiny_checkpoint):
    torch = pytest.importorskip("torch")
    from ds2a.model import load_model, save_checkpoint
    from ds2a.runtime.selftest import set_golden
    from ds2a.runtime.torch_backend import TorchSegmenter

    net = load_model(str(tiny_checkpoint))
    seg = TorchSegmenter(str(tiny_checkpoint), device="cpu")
    golden = make_golden(candidates((32, 32)), lambda b: [r.class_map for r in seg.infer_batch(b)], "pytorch", "t")
    meta = net.meta
    set_golden(meta, golden)
    good = tmp_path / "good.pt"
    save_checkpoint(str(good), net, meta)
    with open_model(str(good), device="cpu") as model:
        assert model.selftest.status == "passed"
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(-1.0)
    save_checkpoint(str(tmp_path / "edited.pt"), net, meta)
    with pytest.raises(SelfTestFailed, match="edited.pt failed its self-test"):
        open_model(str(tmp_path / "edited.pt"), device="cpu")
    with open_model(str(tmp_path / "edited.pt"), device="cpu", input_size=(64, 64)) as model:
        assert model.selftest.status == "skipped"  # asked to run at another size: nothing to compare with


def test_golden_frames_round_trip_through_export_and_calibrate(tmp_path, tiny_checkpoint):
    """export stores demo cells and the FP32 answers; calibrate replaces them with calibration frames and the INT8
    answers; both files open with a passed self-test (the engine build and open: tests/test_accuracy_gate.py)."""
    pytest.importorskip("torch")
    import onnxruntime as ort

    from ds2a.data.synth import write_dataset
    from ds2a.export import ExportOptions, export_onnx
    from ds2a.precision import CalibrationOptions, calibrate

    fp32 = tmp_path / "m.onnx"
    result = export_onnx(tiny_checkpoint, fp32, ExportOptions())
    assert "golden frames: " in result.summary()
    golden = golden_of(read_meta(load_onnx(fp32), fp32))
    assert golden.source == "ds2a/data/synth.py cells" and "(fp32)" in golden.produced_by
    data = tmp_path / "data"
    write_dataset(data, 8, 1, (32, 32), seed=1)
    int8 = tmp_path / "m.int8.onnx"
    calibrated = calibrate(fp32, int8, CalibrationOptions(str(data), "int8", target="onnxruntime", num_images=8))
    assert calibrated.golden_frames == len(golden_of(read_meta(load_onnx(int8), int8)).frames) >= 1
    golden8 = golden_of(read_meta(load_onnx(int8), int8))
    assert golden8.source.startswith("calibration images") and "(int8)" in golden8.produced_by
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    for frame, stored in zip(golden8.frames, golden8.class_maps):  # what the INT8 file itself answers
        assert (sess.run(["class_map"], {"images": frame[None]})[0][0] == stored).all()
    for path in (fp32, int8):
        with open_model(str(path)) as model:
            assert model.selftest.status == "passed"


class _FakeTritonClient:
    """tritonclient.grpc.InferenceServerClient serving one ONNX through ONNX Runtime, with the config
    parameters `ds2a serve` writes (ds2a/serve/server.py); follows tritonclient/grpc/_client.py for the
    calls the Triton backend makes."""

    served: str = ""
    meta_json: str = ""

    def __init__(self, url: str) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(self.served, providers=["CPUExecutionProvider"])

    def is_server_live(self, **kw):
        return True

    def is_model_ready(self, name, version="", **kw):
        return True

    def get_model_config(self, name, version="", as_json=False, **kw):
        shape = self.session.get_inputs()[0].shape
        return {"config": {"max_batch_size": 0, "parameters": {"ds2a_meta": {"string_value": self.meta_json}},
                           "input": [{"name": "images", "data_type": "TYPE_UINT8", "dims": [str(d) for d in shape]}],
                           "output": [{"name": "class_map", "data_type": "TYPE_UINT8",
                                       "dims": [str(d) for d in shape[:3]]}]}}

    def infer(self, name, inputs, model_version="", outputs=None, **kw):
        out = self.session.run(["class_map"], {"images": inputs[0].data})[0]
        return types.SimpleNamespace(as_numpy=lambda n: out)

    def close(self):
        pass


class _Input:
    def __init__(self, name, shape, dtype):
        self.data = None

    def set_data_from_numpy(self, data):
        self.data = data


def test_triton_served_model_whose_answers_changed_is_refused(tmp_path, monkeypatch):
    path = with_golden(tiny_onnx(tmp_path / "m.onnx"))
    grpc = types.ModuleType("tritonclient.grpc")
    grpc.InferenceServerClient, grpc.InferInput = _FakeTritonClient, _Input
    grpc.InferRequestedOutput = lambda name: name
    utils = types.ModuleType("tritonclient.utils")
    utils.InferenceServerException = RuntimeError
    package = types.ModuleType("tritonclient")
    package.grpc, package.utils = grpc, utils
    monkeypatch.setitem(sys.modules, "tritonclient", package)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", grpc)
    monkeypatch.setitem(sys.modules, "tritonclient.utils", utils)
    _FakeTritonClient.meta_json = read_meta(load_onnx(path), path).to_json()
    _FakeTritonClient.served = str(path)
    with open_model("triton://h/ds2a") as model:
        assert model.selftest.status == "passed"
    _FakeTritonClient.served = str(edit_weights(path, tmp_path / "edited.onnx"))  # the server loaded another file
    with pytest.raises(SelfTestFailed, match="triton://h/ds2a failed its self-test"):
        open_model("triton://h/ds2a")


def test_the_self_test_result_is_recorded_with_the_run(tmp_path):
    import json
    import sqlite3

    from ds2a.inspect import InspectOptions, inspect

    db = tmp_path / "r.sqlite"
    options = InspectOptions(model=str(DEMO), source="demo://?frames=8&width=320&height=180", headless=True,
                             db=str(db), backend_options={"intra_op_threads": 1})
    inspect(options, table=__import__("io").StringIO())
    with sqlite3.connect(str(db)) as con:
        stats = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    selftest = stats["selftest"]
    assert selftest["status"] == "passed" and selftest["frames"] == 4 and min(selftest["agreement"]) >= 0.995
    assert selftest["produced_by"].startswith("onnxruntime") and selftest["seconds"] > 0
    from ds2a.records import connect, format_report, summarise
    from ds2a.web.page import overview

    con = connect(str(db), readonly=True)
    con.row_factory = sqlite3.Row
    s = summarise(con, 1)
    con.close()
    assert s["model_checks"] == "self-test passed" and "build_gate" not in stats  # an ONNX has no build gate
    assert "  checks self-test passed\n" in format_report(s)
    assert "(self-test passed)" in overview(str(db), [], 1, s, [], live=False)


def test_doctor_runs_the_self_test_of_an_onnx(tmp_path):
    from ds2a.doctor.model_check import check_model

    path = with_golden(tiny_onnx(tmp_path / "m.onnx"))
    ok = check_model(str(path), {"importable": False}, [])
    assert ok["loads"] is True and ok["selftest"]["status"] == "passed" and "self-test passed" in ok["reason"]
    bad = check_model(str(edit_weights(path, tmp_path / "edited.onnx")), {"importable": False}, [])
    assert bad["loads"] is False and "failed its self-test" in bad["reason"]


def test_a_model_that_cannot_run_its_golden_frames_is_refused_clearly(tmp_path):
    from ds2a.runtime.onnxruntime_backend import OnnxRuntimeSegmenter

    model = OnnxRuntimeSegmenter(str(with_golden(tiny_onnx(tmp_path / "m.onnx"))))

    def broken(frames):
        raise RuntimeError("Gather: indices element out of data bounds\nmore detail")

    model.infer_batch = broken
    with pytest.raises(SelfTestFailed, match=r"could not run its golden frames \(RuntimeError: Gather: indices"):
        model.run_selftest()
