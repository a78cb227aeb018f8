"""`ds2a export-triton`: every config.pbtxt parses as Triton's own ModelConfig and matches the model's I/O."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("tritonclient.grpc", reason="the config checks use tritonclient's ModelConfig protobuf")
from google.protobuf import json_format, text_format
from triton_server import DEMO_MODEL
from tritonclient.grpc import model_config_pb2 as mc

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.meta import ModelMeta, file_sha256
from ds2a.runtime.triton_backend import TritonSegmenter
from ds2a.serve.repository import export_repository


def parse(config: str) -> "mc.ModelConfig":
    return text_format.Parse(Path(config).read_text(), mc.ModelConfig())


def station_view(config: "mc.ModelConfig") -> TritonSegmenter:
    """What a triton:// station makes of this config (the JSON the gRPC client hands it)."""
    seg = TritonSegmenter.__new__(TritonSegmenter)
    seg.url, seg.name = "triton://server/ds2a", config.name
    meta, hw = seg._read_config(json.loads(json_format.MessageToJson(config, preserving_proto_field_name=True)))
    seg.meta_read, seg.hw_read = meta, hw
    return seg


def tiny_onnx(path: Path, batch="N", float_input: bool = False, meta: bool = True, h: int = 32, w: int = 48) -> Path:
    """Our convention at a small size: class_map uint8 (batch,H,W) and logits float32 (batch,2,H,W)."""
    if float_input:
        inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, h, w])
        nodes = [helper.make_node("ReduceMean", ["images", "ax1"], ["g"], keepdims=0)]
    else:
        inp = helper.make_tensor_value_info("images", TensorProto.UINT8, [batch, h, w, 3])
        nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
                 helper.make_node("ReduceMean", ["f", "ax3"], ["g"], keepdims=0)]
    nodes += [helper.make_node("Less", ["g", "thr"], ["b"]),
              helper.make_node("Cast", ["b"], ["class_map"], to=TensorProto.UINT8),
              helper.make_node("Unsqueeze", ["g", "ax1"], ["g1"]),
              helper.make_node("Concat", ["g1", "g1"], ["logits"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", [inp],
        [helper.make_tensor_value_info("class_map", TensorProto.UINT8, [batch, h, w]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2, h, w])],
        [numpy_helper.from_array(np.array([3], np.int64), "ax3"), numpy_helper.from_array(np.array([1], np.int64), "ax1"),
         numpy_helper.from_array(np.array(60.0, np.float32), "thr")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if meta:
        helper.set_model_props(model, {"ds2a": ModelMeta(arch="tiny", classes=["background", "crack"],
                                                         input_size=(h, w)).to_json()})
    onnx.save(model, str(path))
    return path


def test_demo_model_fixed_batch_keeps_its_batch_in_the_dims(tmp_path):
    config = parse(export_repository(str(DEMO_MODEL), str(tmp_path / "repo")))
    assert config.name == "ds2a" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == \
        [("images", "TYPE_UINT8", [1, 256, 256, 3])]
    assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in config.output] == \
        [("class_map", "TYPE_UINT8", [1, 256, 256])]
    copied = tmp_path / "repo" / "ds2a" / "1" / "model.onnx"
    assert file_sha256(copied) == file_sha256(DEMO_MODEL)
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["ds2a_source_sha256"] == file_sha256(DEMO_MODEL) and params["ds2a_precision"] == "int8"
    onnx_meta = onnx.load(str(DEMO_MODEL), load_external_data=False).metadata_props
    assert ModelMeta.from_json(params["ds2a_meta"]).to_dict() == \
        ModelMeta.from_json({p.key: p.value for p in onnx_meta}["ds2a"]).to_dict()
    seg = station_view(config)
    assert seg.batch_size == 1 and seg.hw_read == (256, 256) and seg.meta_read.classes[1] == "damage"


def test_dynamic_batch_maps_to_max_batch_size_and_dynamic_batching(tmp_path):
    model = tiny_onnx(tmp_path / "dyn.onnx")
    config = parse(export_repository(str(model), str(tmp_path / "repo"), name="line3", version=4, max_batch=16,
                                     max_queue_delay_us=500, instances=3, kind="gpu"))
    assert config.name == "line3" and config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, mc.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [(3, "KIND_GPU")]
    assert {i.name: list(i.dims) for i in config.input} == {"images": [32, 48, 3]}
    assert {o.name: (mc.DataType.Name(o.data_type), list(o.dims)) for o in config.output} == \
        {"class_map": ("TYPE_UINT8", [32, 48]), "logits": ("TYPE_FP32", [2, 32, 48])}
    assert (tmp_path / "repo" / "line3" / "4" / "model.onnx").is_file()
    seg = station_view(config)
    assert seg.batch_size is None and seg._max_batch == 16 and seg._has_logits


@pytest.mark.slow
def test_real_dynamic_batch_export_maps_to_max_batch_size(tmp_path):
    pytest.importorskip("torch")
    onnx_path = tmp_path / "dyn.onnx"
    assert main(["export", str(DEMO_MODEL.with_suffix("").with_suffix(".pt")), "--out", str(onnx_path),
                 "--dynamic-batch"]) == 0
    assert main(["export-triton", str(onnx_path), "--repo", str(tmp_path / "repo"), "--max-batch", "4"]) == 0
    config = parse(str(tmp_path / "repo" / "ds2a" / "config.pbtxt"))
    assert config.max_batch_size == 4 and list(config.input[0].dims) == [256, 256, 3]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model_io = {t.name: [d if isinstance(d, int) else -1 for d in t.shape[1:]] for t in sess.get_outputs()}
    assert {o.name: list(o.dims) for o in config.output} == model_io  # symbolic dims stay dynamic (-1)
    assert station_view(config).batch_size is None


def _engine(tmp_path: Path, profile=(1, 4, 32), sidecar: bool = True) -> Path:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0plan")
    if sidecar:
        record = {"format": "ds2a-engine", "format_version": 1, "tensorrt_version": "10.3.0", "gpu_name": "Orin",
                  "compute_capability": "8.7", "precision": "int8", "batch_profile": list(profile),
                  "inputs": [{"name": "images", "shape": [-1, 64, 64, 3], "dtype": "uint8"}],
                  "outputs": [{"name": "class_map", "shape": [-1, 64, 64], "dtype": "uint8"}],
                  "meta": ModelMeta(arch="ds2a_r18", input_size=(64, 64)).to_dict()}
        (tmp_path / "m.engine.json").write_text(json.dumps(record))
    return engine


def test_engine_goes_to_tensorrt_plan_from_its_sidecar(tmp_path):
    config = parse(export_repository(str(_engine(tmp_path)), str(tmp_path / "repo"), max_batch=64))
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 32  # the profile's maximum wins
    assert list(config.input[0].dims) == [64, 64, 3]
    assert config.parameters["ds2a_tensorrt_version"].string_value == "10.3.0"
    assert (tmp_path / "repo" / "ds2a" / "1" / "model.plan").read_bytes() == b"\0plan"
    assert station_view(config).meta_read.arch == "ds2a_r18"
    with pytest.raises(UserError, match="runs on the GPU"):
        export_repository(str(_engine(tmp_path)), str(tmp_path / "repo"), kind="cpu")


@pytest.mark.parametrize("make, message", [
    (lambda d: tiny_onnx(d / "f.onnx", float_input=True), "takes one 'images' uint8"),
    (lambda d: tiny_onnx(d / "nometa.onnx", meta=False), "has no 'ds2a' metadata"),
    (lambda d: _engine(d, sidecar=False), "no .*m.engine.json"),
    (lambda d: (d / "m.pt").write_bytes(b"x") and d / "m.pt", "takes a .onnx or a TensorRT"),
    (lambda d: (d / "bad.onnx").write_bytes(b"junk") and d / "bad.onnx", "not a loadable ONNX"),
])
def test_models_that_stations_could_not_use_are_refused(tmp_path, capsys, make, message):
    path = make(tmp_path)
    assert main(["export-triton", str(path), "--repo", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ds2a export-triton: error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "repo" / "ds2a" / "config.pbtxt").exists()
