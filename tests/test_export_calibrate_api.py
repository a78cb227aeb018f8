"""export_onnx and calibrate called from Python (no CLI): the commands' checks, defaults and files (ds2a_tiny, 64x64)."""
import logging
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from ds2a.errors import UserError  # noqa: E402
from ds2a.export import ExportOptions, export_onnx, read_meta  # noqa: E402
from ds2a.precision import CalibrationOptions, calibrate, precision_of  # noqa: E402

SIZE = (64, 64)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from ds2a.model import build_model, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny64.pt"
    save_checkpoint(str(path), build_model("ds2a_tiny", input_size=SIZE))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ds2a.data.synth import write_dataset

    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, 6, 1, SIZE, seed=0, n_val=0)
    return root


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_onnx(ckpt, out, ExportOptions(outputs="both"), check_trt=("8.5", "10"))


def test_export_onnx_returns_what_the_command_prints_and_prints_nothing(exported, ckpt, capsys):
    assert capsys.readouterr().out == ""
    assert exported.path.stat().st_size == exported.size_bytes
    assert exported.options.size == SIZE  # None resolved to the checkpoint's size
    assert [r.kind for r in exported.parity] == ["random", "real"] and all(r.ok for r in exported.parity)
    assert exported.blocked == ["8.5"]  # LayerNormalization; 10 parses it
    lines = exported.lines()
    assert lines[2].startswith(f"wrote {exported.path} (") and "uint8 batch 1 64x64, outputs both, opset 17" in lines[2]
    assert "TensorRT 8.5" in lines[3] and "TensorRT 8.5" in exported.blocked_message()
    sess = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["class_map", "logits"]
    assert read_meta(onnx.load(str(exported.path)), exported.path).input_size == SIZE


def test_export_onnx_refuses_before_loading_and_writes_nothing(ckpt, tmp_path):
    with pytest.raises(UserError, match="should end in .onnx"):
        export_onnx(ckpt, tmp_path / "model.bin")
    with pytest.raises(UserError, match="--force-size"):
        export_onnx(ckpt, tmp_path / "model.onnx", ExportOptions(size=(96, 96)))
    assert os.listdir(tmp_path) == []


def test_calibrate_applies_the_default_policy_and_reuses_its_cache(exported, data, tmp_path, caplog):
    out = tmp_path / "tiny.int8.onnx"
    opts = CalibrationOptions(data=str(data), precision="int8", target="onnxruntime", num_images=4)
    caplog.set_level(logging.INFO, logger="ds2a")
    first = calibrate(exported.path, out, opts)
    assert caplog.messages[0].startswith(f"calibration: 4 images from {data} (seed 0)")
    assert first.method == "entropy"  # the measured default for the onnxruntime placement
    assert "Softmax" in first.exclude_ops and first.exclude_nodes  # defaults: benchmarks/results/precision_exclusions.md
    assert first.cache == tmp_path / "tiny.int8.calib.json" and first.cache.is_file() and not first.cache_reused
    result = onnx.load(str(out))
    assert precision_of(result) == "int8" and first.size_bytes == out.stat().st_size
    assert read_meta(result, out).extra["calibration"]["exclude_ops"] == first.exclude_ops
    assert 0.5 <= first.agreement <= 1.0 and first.summary().startswith(f"wrote {out} (")
    again = calibrate(exported.path, out, opts)
    assert again.cache_reused and "(calibration cache reused)" in again.summary()
    frame = np.zeros((1, *SIZE, 3), np.uint8)
    assert ort.InferenceSession(str(out)).run(["class_map"], {"images": frame})[0].shape == (1, *SIZE)


def test_calibrate_failure_leaves_no_output_and_no_temp_file(exported, data, tmp_path):
    opts = CalibrationOptions(data=str(data), precision="fp16", exclude=["NoSuchOp"], use_cache=False)
    with pytest.raises(UserError, match="--exclude 'NoSuchOp' matches no op type"):
        calibrate(exported.path, tmp_path / "tiny.fp16.onnx", opts)
    with pytest.raises(UserError, match="--target gpu is unknown"):
        calibrate(exported.path, tmp_path / "tiny.fp16.onnx", CalibrationOptions(str(data), "int8", target="gpu"))
    assert os.listdir(tmp_path) == []
