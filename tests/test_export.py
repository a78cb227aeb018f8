"""`ds2a export`: graph I/O contract, metadata, parity, TensorRT reformulations, bad input (ds2a_tiny at 64x64)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from ds2a.cli import main  # noqa: E402
from ds2a.errors import UserError  # noqa: E402
from ds2a.export import read_meta  # noqa: E402
from ds2a.export.onnx_export import check_size  # noqa: E402
from ds2a.export.parity import check_parity  # noqa: E402
from ds2a.preprocess import normalize  # noqa: E402
from ds2a.trt.compat import blockers, check_model  # noqa: E402

SIZE = (64, 64)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from ds2a.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("ds2a_tiny", input_size=SIZE)
    path = tmp_path_factory.mktemp("ckpt") / "tiny64.pt"
    save_checkpoint(str(path), model)
    return path


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny64.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--outputs", "both"]) == 0
    return out


def test_default_export_takes_uint8_frames_and_returns_uint8_class_map_and_logits(exported):
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type, inp.shape) == ("images", "tensor(uint8)", [1, 64, 64, 3])
    outs = {o.name: o for o in sess.get_outputs()}
    assert outs["class_map"].type == "tensor(uint8)" and outs["class_map"].shape == [1, 64, 64]
    assert outs["logits"].type == "tensor(float)" and outs["logits"].shape == [1, 4, 64, 64]
    frame = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    cls, logits = sess.run(["class_map", "logits"], {"images": frame})
    assert np.array_equal(cls, logits.argmax(1).astype(np.uint8))


def test_export_matches_pytorch_on_the_same_frame(exported, ckpt):
    from ds2a.model import load_model

    model = load_model(str(ckpt))
    frame = np.random.default_rng(3).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = model.semantic_logits(torch.from_numpy(normalize(frame))).numpy()
    got = ort.InferenceSession(str(exported)).run(["logits"], {"images": frame})[0]
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_metadata_carries_meta_and_checkpoint_hash(exported, ckpt):
    from ds2a.meta import file_sha256

    model = onnx.load(str(exported))
    meta = read_meta(model, exported)
    assert meta.arch == "ds2a_tiny" and meta.input_size == SIZE and len(meta.classes) == 4
    assert meta.checkpoint_sha256 == file_sha256(ckpt)
    assert model.opset_import[0].version >= 17


def test_graph_is_clean_and_parseable_by_trt86_and_newer(exported):
    model = onnx.load(str(exported))
    ops = {n.op_type for n in model.graph.node}
    assert "Einsum" not in ops  # exported as MatMul
    assert "LayerNormalization" in ops and "GridSample" not in ops  # --deform-attn gather (docs/DEFORM_ATTN.md)
    for v in ("8.6", "10", "11"):
        assert not blockers(check_model(model, v)), v
    assert blockers(check_model(model, "8.5"))  # LayerNormalization


@pytest.mark.slow
def test_check_trt_exit_code_and_trt85_export(ckpt, tmp_path, capsys):
    out = tmp_path / "jp5.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--trt", "8.5", "--check-trt", "8.5"]) == 0
    model = onnx.load(str(out))
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}
    assert [o.name for o in model.graph.output] == ["class_map"]
    assert "TensorRT 8.5: OK" in capsys.readouterr().out


@pytest.mark.slow
def test_dynamic_batch_float_input_runs_any_batch(ckpt, tmp_path):
    out = tmp_path / "dyn.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--dynamic-batch", "--input", "float",
                 "--outputs", "logits"]) == 0
    sess = ort.InferenceSession(str(out))
    assert sess.get_inputs()[0].type == "tensor(float)" and [o.name for o in sess.get_outputs()] == ["logits"]
    x = normalize(np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    assert sess.run(None, {"images": x})[0].shape == (3, 4, 64, 64)
    # only the batch is dynamic: a builder or Triton sees the other output sizes (not torch's `Cast..._dim_1`)
    assert [o.shape for o in sess.get_outputs()] == [["batch", 4, 64, 64]]


def test_parity_failure_is_loud(ckpt, exported):
    from ds2a.model import load_model

    model = load_model(str(ckpt))
    onnx_model = onnx.load(str(exported))
    assert check_parity(onnx_model, model, SIZE, model.meta.mean, model.meta.std, batch=1)[0].ok
    with torch.no_grad():  # the torch model drifts away from what was exported
        for p in model.parameters():
            p.add_(0.05)
    with pytest.raises(UserError, match="does not match PyTorch"):
        check_parity(onnx_model, model, SIZE, model.meta.mean, model.meta.std, batch=1)


def test_size_not_multiple_of_32_is_refused_with_fix():
    with pytest.raises(UserError, match="multiple of 32.*--size 64x96"):
        check_size((50, 70), SIZE, force=False)


def test_size_other_than_trained_needs_force(ckpt, tmp_path, capsys):
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--size", "96x96"]) == 2
    assert "--force-size" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    check_size((96, 96), SIZE, force=True)  # allowed when asked for


def test_non_checkpoint_file_is_refused(tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", str(bad), "--out", str(tmp_path / "x.onnx")]) == 2


@pytest.mark.parametrize("opset", ["99", "16"])
def test_an_opset_the_exporter_cannot_write_is_one_line(ckpt, tmp_path, capsys, opset):
    from ds2a.export.onnx_export import max_opset

    assert main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--opset", opset]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--opset {opset} is outside 17..{max_opset()}" in err
    assert not (tmp_path / "x.onnx").exists()
