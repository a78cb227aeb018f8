"""Runtime: open_model dispatch, the ONNX Runtime backend on tiny hand-built ONNX graphs, bad inputs.

The graphs follow our ONNX convention (uint8 NHWC "images" in, "class_map" + "logits" out,
ModelMeta JSON in metadata_props) but are a single 1x1 convolution (tests/fakes/onnx_models.py), so
the expected output can be computed with numpy and no torch is needed.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from fakes.onnx_models import CLASSES, conv_weights, reference_logits, tiny_onnx
from onnx import TensorProto, helper

from ds2a.errors import UserError
from ds2a.meta import ModelMeta
from ds2a.runtime import BACKENDS, backend_for, open_model
from ds2a.runtime.base import InferResult, Segmenter, fit_batch


@pytest.fixture
def frames() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)


# --- dispatch --------------------------------------------------------------------------------
def test_backend_chosen_from_suffix_or_name() -> None:
    assert backend_for("m.engine") == "tensorrt" and backend_for("m.plan") == "tensorrt"
    assert backend_for("m.onnx") == "onnxruntime" and backend_for("M.PT") == "pytorch"
    assert backend_for("m.onnx", "trt") == "tensorrt"
    assert backend_for("weird.bin", "ort") == "onnxruntime"


def test_unknown_suffix_and_backend_list_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"m\.bin.*\.onnx.*pytorch"):
        backend_for(str(tmp_path / "m.bin"))
    with pytest.raises(UserError, match="unknown backend 'openvino'.*tensorrt, onnxruntime, pytorch"):
        open_model(str(tmp_path / "m.onnx"), backend="openvino")


def test_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.onnx does not exist.*ds2a export"):
        open_model(str(tmp_path / "nope.onnx"))
    with pytest.raises(UserError, match=r"nope\.engine does not exist.*build-engine"):
        open_model(str(tmp_path / "nope.engine"))


# --- ONNX Runtime backend -----------------------------------------------------------------------
def test_uint8_model_matches_numpy_reference(tmp_path: Path, frames: np.ndarray) -> None:
    path = tiny_onnx(tmp_path / "m.onnx")
    with open_model(str(path), return_logits=True) as seg:
        assert seg.backend == "onnxruntime" and seg.input_size == (32, 48)
        assert seg.meta.classes == CLASSES and seg.meta.arch == "tiny_test"
        res = seg.infer(frames[0])
    ref = reference_logits(frames[:1])[0]
    assert isinstance(res, InferResult)
    assert res.class_map.dtype == np.uint8 and res.class_map.shape == (32, 48)
    np.testing.assert_allclose(res.logits, ref, rtol=1e-4, atol=1e-3)
    assert (res.class_map == ref.argmax(0)).mean() > 0.999
    np.testing.assert_allclose(res.confidence, ref.max(0), rtol=1e-4, atol=1e-3)


def test_float_nchw_variant_is_normalised_with_meta(tmp_path: Path, frames: np.ndarray) -> None:
    path = tiny_onnx(tmp_path / "f.onnx", float_input=True)
    with open_model(str(path), return_logits=True) as seg:
        res = seg.infer_batch(frames)
    ref = reference_logits(frames, float_input=True)
    assert len(res) == 3
    for r, lg in zip(res, ref):
        np.testing.assert_allclose(r.logits, lg, rtol=1e-4, atol=1e-3)


def test_dynamic_batch_model_runs_any_batch(tmp_path: Path, frames: np.ndarray) -> None:
    with open_model(str(tiny_onnx(tmp_path / "d.onnx", batch="batch"))) as seg:
        assert seg.batch_size is None
        res = seg.infer_batch(frames)
    ref = reference_logits(frames).argmax(1)
    assert [r.class_map.shape for r in res] == [(32, 48)] * 3
    assert np.mean(np.stack([r.class_map for r in res]) == ref) > 0.999


def test_fixed_batch_model_pads_and_splits(tmp_path: Path, frames: np.ndarray) -> None:
    with open_model(str(tiny_onnx(tmp_path / "b2.onnx", batch=2))) as seg:
        assert seg.batch_size == 2
        res = seg.infer_batch(frames)  # 3 frames -> chunks of 2 + 1 padded
        one = seg.infer(frames[2])
    ref = reference_logits(frames).argmax(1)
    assert len(res) == 3
    assert np.mean(np.stack([r.class_map for r in res]) == ref) > 0.999
    np.testing.assert_array_equal(one.class_map, res[2].class_map)


def test_logits_only_model_gets_argmax_on_host(tmp_path: Path, frames: np.ndarray) -> None:
    with open_model(str(tiny_onnx(tmp_path / "l.onnx", with_class_map=False))) as seg:
        res = seg.infer(frames[0])
    assert res.class_map.dtype == np.uint8
    assert np.mean(res.class_map == reference_logits(frames[:1])[0].argmax(0)) > 0.999


def test_other_sizes_and_channel_counts_are_converted(tmp_path: Path) -> None:
    with open_model(str(tiny_onnx(tmp_path / "m.onnx"))) as seg:
        gray = np.full((64, 96), 77, np.uint8)
        bgra = np.zeros((16, 24, 4), np.uint8)
        bgra[..., 2] = 200
        assert seg.infer(gray).class_map.shape == (32, 48)
        r = seg.infer(bgra).class_map
    expected = reference_logits(np.full((1, 1, 1, 3), (0, 0, 200), np.uint8))[0, :, 0, 0].argmax()
    assert r.shape == (32, 48) and (r == expected).all()


def test_truncated_and_corrupt_onnx_are_user_errors(tmp_path: Path) -> None:
    good = tiny_onnx(tmp_path / "m.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.onnx").write_bytes(b"this is not a protobuf at all" * 10)
    for name in ("cut.onnx", "junk.onnx"):
        with pytest.raises(UserError, match=rf"{name} is not a loadable ONNX.*truncated or corrupt.*ds2a export"):
            open_model(str(tmp_path / name))


def test_onnx_off_convention_says_what_was_expected(tmp_path: Path) -> None:
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [inp], [out])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "mlp.onnx"))
    with pytest.raises(UserError, match=r"mlp\.onnx has inputs \[x float32 \[1, 8\]\]; expected one input 'images' uint8.*ds2a export"):
        open_model(str(tmp_path / "mlp.onnx"))
    # right input, but neither class_map nor logits
    inp = helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 8, 8, 3])
    out = helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 8, 8, 3])
    g = helper.make_graph([helper.make_node("Identity", ["images"], ["y"])], "g", [inp], [out])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "id.onnx"))
    with pytest.raises(UserError, match=r"id\.onnx has outputs \[y.*'class_map'"):
        open_model(str(tmp_path / "id.onnx"))


def test_onnx_without_metadata_runs_with_generic_names_and_warns(tmp_path: Path, frames: np.ndarray, caplog) -> None:
    path = tiny_onnx(tmp_path / "bare.onnx", add_meta=False)
    seg = open_model(str(path))
    assert "bare.onnx has no 'ds2a' metadata" in caplog.text and "class_0..class_2" in caplog.text
    assert seg.meta.classes == ["class_0", "class_1", "class_2"] and seg.input_size == (32, 48)
    assert seg.infer(frames[0]).class_map.shape == (32, 48)


def test_unavailable_execution_provider_lists_available(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(UserError, match="lacks CUDAExecutionProvider.*available: .*CPUExecutionProvider"):
        open_model(str(tiny_onnx(tmp_path / "m.onnx")), device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg = open_model(str(tmp_path / "m.onnx"), device="auto", intra_op_threads=1, inter_op_threads=1)
    assert seg.providers[-1] == "CPUExecutionProvider"


def test_warmup_runs_the_model(tmp_path: Path) -> None:
    with open_model(str(tiny_onnx(tmp_path / "m.onnx"))) as seg:
        calls = []
        orig = seg.infer_batch
        seg.infer_batch = lambda f: calls.append(f.shape) or orig(f)  # type: ignore[method-assign]
        seg.warmup(2)
    assert calls == [(1, 32, 48, 3)] * 2


def test_thread_spinning_is_off_by_default_and_can_be_enabled(tmp_path: Path) -> None:
    path = str(tiny_onnx(tmp_path / "m.onnx"))
    key = "session.intra_op.allow_spinning"
    with open_model(path) as quiet, open_model(path, spin=True) as spinning:
        assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
        assert spinning.session.get_session_options().get_session_config_entry(key) == "1"


# --- base helpers ----------------------------------------------------------------------------
def test_fit_batch_pads_last_chunk_with_real_counts() -> None:
    x = np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 3), np.uint8)
    chunks = fit_batch(x.astype(np.uint8), 2)
    assert [c.shape[0] for c, _ in chunks] == [2, 2, 2] and [n for _, n in chunks] == [2, 2, 1]
    assert chunks[-1][0][1, 0, 0, 0] == 4  # padding repeats the last frame
    assert fit_batch(x, None)[0][1] == 5


def test_segmenter_is_abstract_and_registered_backends_complete() -> None:
    with pytest.raises(TypeError):
        Segmenter(ModelMeta(arch="x"))  # type: ignore[abstract]
    assert {"tensorrt", "onnxruntime", "pytorch"} <= set(BACKENDS)
    import importlib.util

    for name, (module, _cls) in BACKENDS.items():  # every registered backend has its module
        assert importlib.util.find_spec(module) is not None, name


# --- PyTorch backend ---------------------------------------------------------------------------
def test_torch_backend_matches_its_model(tmp_path: Path, frames: np.ndarray, monkeypatch) -> None:
    """The backend normalises with the checkpoint's meta, argmaxes semantic_logits, returns numpy."""
    torch = pytest.importorskip("torch")
    import ds2a.model

    wt, bias = conv_weights(3)

    class OneByOne(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.conv.weight.data = torch.from_numpy(wt.reshape(3, 3, 1, 1))
            self.conv.bias.data = torch.from_numpy(bias)
            self.meta = ModelMeta(arch="tiny_test", classes=CLASSES, input_size=(32, 48))

        def semantic_logits(self, x):
            return self.conv(x)

    seen = []
    monkeypatch.setattr(ds2a.model, "load_model", lambda p, map_location="cpu": seen.append(p) or OneByOne(),
                        raising=False)
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    with open_model(str(ckpt), device="cpu", return_logits=True) as seg:
        assert seg.backend == "pytorch" and seg.input_size == (32, 48)
        res = seg.infer_batch(frames)
        one = seg.infer(frames[0])
    ref = reference_logits(frames, float_input=True)
    assert seen == [str(ckpt)]
    for r, lg in zip(res, ref):
        np.testing.assert_allclose(r.logits, lg, rtol=1e-4, atol=1e-3)
        assert r.class_map.dtype == np.uint8 and np.mean(r.class_map == lg.argmax(0)) > 0.999
    np.testing.assert_array_equal(one.class_map, res[0].class_map)
    with open_model(str(ckpt), device="cpu", input_size=(64, 96)) as seg:
        assert seg.input_size == (64, 96) and seg.infer(frames[0]).class_map.shape == (64, 96)
    with pytest.raises(UserError, match="multiples of 32"):
        open_model(str(ckpt), device="cpu", input_size=(50, 50))
    # the same model in memory (training's evaluation): same preprocessing, same answers, module kept
    from ds2a.runtime.torch_backend import TorchSegmenter

    module = OneByOne()
    with TorchSegmenter.from_module(module, module.meta, "cpu", return_logits=True) as mem:
        assert mem.backend == "pytorch" and mem.batch_size is None
        for r, m in zip(res, mem.infer_batch(frames)):
            np.testing.assert_array_equal(r.class_map, m.class_map)
            np.testing.assert_allclose(r.logits, m.logits, rtol=1e-5, atol=1e-5)
    assert module.conv.weight is not None  # close() dropped its reference only


@pytest.mark.slow
def test_torch_and_onnxruntime_agree_on_a_real_tiny_checkpoint(tmp_path: Path) -> None:
    """End to end on the real model: checkpoint -> `ds2a export` -> both backends give the same logits."""
    pytest.importorskip("torch")
    from ds2a.cli import main
    from ds2a.model import build_model, save_checkpoint

    save_checkpoint(str(tmp_path / "t.pt"), build_model("ds2a_tiny", input_size=(64, 64)))
    assert main(["export", str(tmp_path / "t.pt"), "--out", str(tmp_path / "t.onnx"), "--outputs", "both"]) == 0
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with open_model(str(tmp_path / "t.pt"), device="cpu", return_logits=True) as a, \
            open_model(str(tmp_path / "t.onnx"), return_logits=True) as b:
        ra, rb = a.infer(frame), b.infer(frame)
        assert a.meta.classes == b.meta.classes and b.input_size == (64, 64)
    np.testing.assert_allclose(rb.logits, ra.logits, rtol=1e-3, atol=1e-4)
    assert (ra.class_map == rb.class_map).mean() > 0.999
