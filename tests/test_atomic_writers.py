"""Every file ds2a writes goes through ds2a/outputs.py: a write that fails half-way leaves the old file and no temp."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from ds2a.errors import UserError

DEMO_ONNX = Path(__file__).resolve().parents[1] / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"


def test_checkpoint_killed_during_torch_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from ds2a.model import build_model, save_checkpoint

    model = build_model("ds2a_tiny", input_size=(64, 64))
    path = tmp_path / "best.pt"
    save_checkpoint(str(path), model)
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(before[: len(before) // 2])
        raise RuntimeError("killed")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(RuntimeError, match="killed"):
        save_checkpoint(str(path), model)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["best.pt"]


def test_calibration_cache_that_cannot_be_serialised_keeps_the_old_cache(tmp_path):
    from ds2a.precision.cache import load_ranges, make_key, save_ranges

    key = make_key("sha", "images", 2, {"method": "minmax"})
    path = tmp_path / "m.calib.json"
    save_ranges(path, key, {"x": [0.0, 1.0]})
    before = path.read_text()
    with pytest.raises(TypeError, match="cannot store object"):  # json.dump has written half the file by then
        save_ranges(path, key, {"x": [0.0, 1.0], "y": object()})
    assert path.read_text() == before and os.listdir(tmp_path) == ["m.calib.json"]
    assert load_ranges(path, key) == {"x": [0.0, 1.0]}


def test_engine_sidecar_on_a_full_disk_keeps_the_old_sidecar(tmp_path, monkeypatch):
    from ds2a.trt.sidecar import sidecar_path, write_sidecar

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    record = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7",
              "precision": "int8", "inputs": [], "outputs": []}
    write_sidecar(str(engine), record)
    before = Path(sidecar_path(str(engine))).read_text()

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device"):
        write_sidecar(str(engine), {**record, "precision": "fp16"})
    assert Path(sidecar_path(str(engine))).read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["model.engine", "model.engine.json"]
    assert json.loads(before)["precision"] == "int8"


def test_triton_config_that_fails_to_encode_keeps_the_old_config(tmp_path, monkeypatch):
    from ds2a.serve import repository

    config = Path(repository.export_repository(str(DEMO_ONNX), str(tmp_path)))
    before = config.read_text()
    monkeypatch.setattr(repository, "config_text", lambda *a, **k: "name: \"x\"\n\udcff")  # not encodable
    with pytest.raises(UnicodeEncodeError):
        repository.export_repository(str(DEMO_ONNX), str(tmp_path))
    assert config.read_text() == before and sorted(os.listdir(config.parent)) == ["1", "config.pbtxt"]


def test_triton_model_copy_on_a_full_disk_keeps_the_old_copy(tmp_path, monkeypatch):
    from ds2a.serve import repository

    config = Path(repository.export_repository(str(DEMO_ONNX), str(tmp_path)))
    version = config.parent / "1"
    (copy,) = os.listdir(version)
    before = (version / copy).read_bytes()

    def full_disk(src, dst):
        with open(dst, "wb") as fh:
            fh.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(repository.shutil, "copyfile", full_disk)
    with pytest.raises(UserError, match="No space left on device"):
        repository.export_repository(str(DEMO_ONNX), str(tmp_path))
    assert os.listdir(version) == [copy] and (version / copy).read_bytes() == before


def test_onnx_export_save_that_fails_keeps_the_old_file(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    from ds2a.export import onnx_export

    out = tmp_path / "model.onnx"
    out.write_bytes(b"old model")

    def dies_half_way(model, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_export.onnx, "save", dies_half_way)
    with pytest.raises(UserError, match="No space left on device"):
        onnx_export.save(onnx.ModelProto(), out)
    assert out.read_bytes() == b"old model" and os.listdir(tmp_path) == ["model.onnx"]

