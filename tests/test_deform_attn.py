"""`ds2a export --deform-attn`: each variant's parity, the plugin node's interface and CPU reference,
the verdicts `--check-trt` reports, the plugin library at build and load, and FP16/INT8 handling."""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ds2a.model import ms_deform_attn as msda
from ds2a.model.ms_deform_attn import DeformableSampler, deform_attn_variant, level_starts
from ds2a.trt import deform_attn as da
from ds2a.trt.compat import blockers, check_model

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.pt"
SHAPES = [(8, 8), (4, 6), (2, 3)]
TOL = 1e-5  # relative: max |a - b| / max |b|


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def op_inputs(seed: int = 0, b: int = 2, q: int = 30, heads: int = 4, d: int = 8, points: int = 3):
    """Random op inputs with a quarter of the points outside the maps (zero padding matters)."""
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(b, sum(h * w for h, w in SHAPES), heads, d, generator=g)
    ref = torch.rand(b, q, len(SHAPES), 2, generator=g)
    offsets = torch.randn(b, q, heads, len(SHAPES), points, 2, generator=g) * 3
    weights = torch.rand(b, q, heads, len(SHAPES), points, generator=g).softmax(-1)
    return value, ref, offsets, weights


def locations(ref, offsets):
    norm = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float32)
    return ref[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]


class Sampler(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sampler = DeformableSampler()

    def forward(self, value, ref, offsets, weights):
        return self.sampler(value, SHAPES, ref, offsets, weights)


def export_op(variant: str, args, dynamic: bool = False) -> onnx.ModelProto:
    buf = io.BytesIO()
    names = ["value", "ref", "offsets", "weights"]
    dyn = {n: {0: "batch"} for n in names + ["out"]} if dynamic else None
    with torch.no_grad(), deform_attn_variant(variant), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Sampler(), args, buf, opset_version=17, input_names=names, output_names=["out"],
                          dynamic_axes=dyn, dynamo=False, custom_opsets={msda.PLUGIN_DOMAIN: 1})
    return onnx.load_from_string(buf.getvalue())


def ort_run(model: onnx.ModelProto, feeds, outputs=None):
    import onnxruntime as ort

    sess = ort.InferenceSession(da.expand_plugin_nodes(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds)


# --- the op alone --------------------------------------------------------------------------------

def test_constants_of_the_model_and_the_torch_free_module_agree():
    assert (msda.PLUGIN_OP, msda.PLUGIN_DOMAIN) == (da.PLUGIN_OP, da.PLUGIN_DOMAIN)
    assert level_starts(SHAPES) == [0, 64, 88]


def test_gather_sampling_matches_grid_sample_in_pytorch():
    value, ref, offsets, weights = op_inputs()
    loc = locations(ref, offsets)
    assert ((loc < 0) | (loc > 1)).any()  # the zero padding is exercised
    assert rel(msda.sample_gather(value, SHAPES, loc, weights), msda.sample_grid(value, SHAPES, loc, weights)) <= TOL


def test_numpy_plugin_reference_matches_pytorch():
    value, ref, offsets, weights = op_inputs(seed=1)
    loc = locations(ref, offsets)
    got = da.reference(value.numpy(), np.array(SHAPES, np.int32), np.array(level_starts(SHAPES), np.int32),
                       loc.numpy(), weights.numpy())
    assert got.shape == (2, 30, 4, 8)
    assert rel(got, msda.sample_grid(value, SHAPES, loc, weights).numpy()) <= TOL
    # a wrong level start moves every sample: the comparison can fail
    bad = da.reference(value.numpy(), np.array(SHAPES, np.int32), np.array([0, 60, 88], np.int32),
                       loc.numpy(), weights.numpy())
    assert rel(bad, got) > 1e-2


@pytest.mark.parametrize("variant", ["grid-sample", "gather", "trt-plugin"])
def test_op_alone_exports_and_matches_pytorch_through_onnx_runtime(variant):
    args = op_inputs(seed=2)
    model = export_op(variant, args, dynamic=True)
    ops = [n.op_type for n in model.graph.node]
    assert ("GridSample" in ops) == (variant == "grid-sample")
    assert (da.PLUGIN_OP in ops) == (variant == "trt-plugin")
    assert "If" not in ops  # a dynamic batch must not turn the sampling into a conditional
    expected = Sampler()(*args).detach().numpy()
    feeds = dict(zip(["value", "ref", "offsets", "weights"], (a.numpy() for a in args)))
    assert rel(ort_run(model, feeds)[0], expected) <= TOL
    one = {k: v[:1] for k, v in feeds.items()}  # the batch stays dynamic
    assert rel(ort_run(model, one)[0], expected[:1]) <= TOL


# --- the plugin node against NVIDIA's documented interface --------------------------------------

def test_plugin_node_has_the_documented_interface():
    model = export_op("trt-plugin", op_inputs())
    (node,) = da.plugin_nodes(model)
    assert node.domain == "trt" and any(o.domain == "trt" for o in model.opset_import)
    assert len(node.input) == 5 and len(node.output) == 1
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_version": b"1", "plugin_namespace": b""}  # the plugin itself has no fields
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type for vi in list(g.input) + list(g.value_info) + list(g.output)}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    consts.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    spatial, starts = consts[node.input[1]], consts[node.input[2]]
    assert spatial.dtype == np.int32 and spatial.tolist() == [list(s) for s in SHAPES]  # (h, w) per level
    assert starts.dtype == np.int32 and starts.tolist() == level_starts(SHAPES)
    want = {0: [2, 94, 4, 8], 3: [2, 30, 4, 3, 3, 2], 4: [2, 30, 4, 3, 3]}  # (N,S,M,D) (N,Lq,M,L,P,2) (N,Lq,M,L,P)
    for i, shape in want.items():
        t = types[node.input[i]]
        assert t.elem_type == TensorProto.FLOAT and [d.dim_value for d in t.shape.dim] == shape, i
    out = types[node.output[0]]
    assert [d.dim_value for d in out.shape.dim] == [2, 30, 4, 8]  # (N, Lq, M, D)
    assert da.interface_problems(model, node, "8.5") == []


def test_interface_check_names_each_break():
    model = export_op("trt-plugin", op_inputs())
    node = da.plugin_nodes(model)[0]
    for a in node.attribute:
        if a.name == "plugin_version":
            a.s = b"2"
    assert any("ships only from TensorRT 10.11" in p for p in da.interface_problems(model, node, "10.3"))
    assert da.interface_problems(model, node, "10.11") == []
    node.input[1], node.input[3] = node.input[3], node.input[1]
    problems = " ".join(da.interface_problems(model, node))
    assert "spatial_shapes is FLOAT" in problems and "sampling_locations has rank 2" in problems


def test_plugin_inputs_captured_from_the_demo_model_give_pytorch_result():
    """The node's inputs, fetched with ONNX Runtime from the full demo export, fed to the numpy reference,
    equal what the grid-sample PyTorch model computes in the same layer."""
    from ds2a.export.onnx_export import ExportOptions, build_onnx
    from ds2a.model import load_model
    from ds2a.preprocess import normalize

    net = load_model(str(DEMO)).eval()
    model = build_onnx(net, net.meta, ExportOptions(deform_attn="trt-plugin"))
    nodes = da.plugin_nodes(model)
    assert len(nodes) == len(net.pixel_decoder.layers) == 2
    wanted = [i for n in nodes for i in (n.input[0], n.input[3], n.input[4])]
    model.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in wanted)
    frame = np.random.default_rng(3).integers(0, 256, (1, *net.meta.input_size, 3), dtype=np.uint8)
    got = dict(zip(wanted, ort_run(model, {"images": frame}, wanted)))
    seen = []
    hooks = [layer.attn.sampler.register_forward_hook(lambda m, a, out: seen.append(out.detach().numpy()))
             for layer in net.pixel_decoder.layers]
    with torch.no_grad():
        net.semantic_logits(torch.from_numpy(normalize(frame, net.meta.mean, net.meta.std)))
    for h in hooks:
        h.remove()
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node, expected in zip(nodes, seen):
        out = da.reference(got[node.input[0]], consts[node.input[1]], consts[node.input[2]],
                           got[node.input[3]], got[node.input[4]])
        assert rel(out.reshape(expected.shape), expected) <= TOL


# --- the full demo model through ONNX Runtime ---------------------------------------------------

@pytest.fixture(scope="module")
def demo_exports():
    from ds2a.export.onnx_export import ExportOptions, build_onnx
    from ds2a.model import load_model

    net = load_model(str(DEMO)).eval()
    return net, {v: build_onnx(net, net.meta, ExportOptions(deform_attn=v)) for v in da.VARIANTS}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gather", "trt-plugin", "grid-sample"])
def test_demo_model_matches_pytorch_for_each_variant(demo_exports, variant):
    from ds2a.export.parity import _torch_logits

    net, models = demo_exports
    model = models[variant]
    ops = {n.op_type for n in model.graph.node}
    assert ("GridSample" in ops) == (variant == "grid-sample")
    frames = np.random.default_rng(4).integers(0, 256, (2, *net.meta.input_size, 3), dtype=np.uint8)
    logits = np.concatenate([ort_run(model, {"images": f[None]}, ["logits"])[0] for f in frames])
    assert rel(logits, _torch_logits(net, frames, net.meta.mean, net.meta.std)) <= TOL
    assert onnx.load_from_string(model.SerializeToString()).metadata_props  # metadata survives
    from ds2a.export.metadata import read_meta

    assert read_meta(model).extra["deform_attn"] == variant


@pytest.mark.slow
def test_cli_exports_the_plugin_variant_parity_checked_and_runs_in_onnx_runtime(tmp_path, capsys):
    from ds2a.cli import main
    from ds2a.runtime.onnxruntime_backend import OnnxRuntimeSegmenter

    out = tmp_path / "plugin.onnx"
    assert main(["export", str(DEMO), "--out", str(out), "--deform-attn", "trt-plugin", "--check-trt", "10"]) == 0
    text = capsys.readouterr().out
    assert "TensorRT 10.0: OK" in text or "TensorRT 10: OK" in text
    assert "libnvinfer_plugin" in text  # the report says the plugin library is needed
    assert "deformable attention trt-plugin" in text
    seg = OnnxRuntimeSegmenter(str(out))  # runs the plugin as its CPU reference
    try:
        assert seg.infer_batch([np.zeros((256, 256, 3), np.uint8)])[0].class_map.shape == (256, 256)
    finally:
        seg.close()


@pytest.mark.slow
def test_trt11_target_writes_plugin_version_2():
    from ds2a.export.onnx_export import ExportOptions, build_onnx
    from ds2a.model import load_model

    net = load_model(str(DEMO)).eval()
    model = build_onnx(net, net.meta, ExportOptions(deform_attn="trt-plugin", trt="11", batch=None))
    nodes = da.plugin_nodes(model)
    assert nodes and all({a.name: a.s for a in n.attribute}["plugin_version"] == b"2" for n in nodes)
    assert da.interface_problems(model, nodes[0], "11") == []
    assert da.interface_problems(model, nodes[0], "10.3")  # v2 does not exist before 10.11


def test_unknown_variant_is_one_line(tmp_path, capsys):
    from ds2a.cli import main

    with pytest.raises(SystemExit):
        main(["export", str(DEMO), "--out", str(tmp_path / "x.onnx"), "--deform-attn", "bilinear"])
    assert "grid-sample" in capsys.readouterr().err


# --- verdicts per TensorRT release ----------------------------------------------------------------

def test_verdicts_per_release():
    assert da.verdict("grid-sample", "8.5").status == "ok"
    assert da.verdict("grid-sample", "10.13").status == "ok"
    for v in ("10.14", "10.16", "11", "11.1"):
        assert da.verdict("grid-sample", v).status == "risk" and "public TensorRT bug report" in da.verdict("grid-sample", v).reason
    assert da.verdict("grid-sample", "10.13", opset=20).status == "blocked"
    for v in ("8.5", "8.6", "10.3", "10.13", "10.14", "11"):
        assert da.verdict("gather", v).status == "ok"
        assert da.verdict("trt-plugin", v).status == "ok"
    assert da.plugin_version_for("8.5") == "1" and da.plugin_version_for("10") == "1"
    assert da.plugin_version_for("11") == "2"
    assert da.default_variant(None) == da.default_variant("11") == "gather"


def _gridsample_model(opset: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    grid = helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, 3, 3, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])
    mode = "linear" if opset >= 20 else "bilinear"
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="gs", mode=mode)
    return helper.make_model(helper.make_graph([node], "g", [x, grid], [y]), opset_imports=[helper.make_opsetid("", opset)])


def test_check_trt_reports_gridsample_risk_and_opset20_block():
    m17 = _gridsample_model(17)
    assert not check_model(m17, "10.13")
    warn = check_model(m17, "10.14")
    assert warn and warn[0].severity == "warning" and "public TensorRT bug report" in warn[0].reason and "gather" in warn[0].fix
    assert any("onnx-tensorrt parser fix" in f.reason for f in blockers(check_model(_gridsample_model(20), "10.13")))


def test_check_trt_accepts_the_plugin_node_and_blocks_a_broken_one():
    model = export_op("trt-plugin", op_inputs())
    for v in ("8.5", "8.6", "10", "11"):
        assert not blockers(check_model(model, v)), v
    assert any("libnvinfer_plugin" in f.reason for f in check_model(model, "10"))
    node = da.plugin_nodes(model)[0]
    node.input[1], node.input[3] = node.input[3], node.input[1]
    assert blockers(check_model(model, "10"))


# --- TensorRT build and load load the plugin library (fakes of real releases) -------------------

def _plugin_tiny_onnx(path: Path) -> str:
    """The fake-engine test model (tests/trt_stubs/onnx_models.py) plus one plugin node on constant inputs."""
    from trt_stubs.onnx_models import make_onnx

    make_onnx(path)
    model = onnx.load(str(path))
    value, ref, offsets, weights = op_inputs(b=1)
    consts = {"msda_value": value.numpy(), "msda_shapes": np.array(SHAPES, np.int32),
              "msda_starts": np.array(level_starts(SHAPES), np.int32),
              "msda_loc": locations(ref, offsets).numpy(), "msda_w": weights.numpy()}
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    model.graph.node.append(helper.make_node(da.PLUGIN_OP, list(consts), ["msda_out"], name="msda", domain="trt",
                                             plugin_version="1", plugin_namespace=""))
    model.opset_import.append(helper.make_opsetid("trt", 1))
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("version", ["10.16.1.11", "8.6.1"])
def test_build_and_load_register_the_plugin_library(tmp_path, version):
    """Without trt.init_libnvinfer_plugins the parser finds no MultiscaleDeformableAttnPlugin_TRT
    (onnx-tensorrt FallbackPluginImporter) and a plan with the plugin does not deserialize."""
    from trt_stubs.helpers import build, fake_for

    from ds2a.runtime.tensorrt_backend import TensorRTSegmenter

    fake, cuda = fake_for(version)
    path = _plugin_tiny_onnx(tmp_path / "plugin.onnx")
    assert not fake.plugin_registered(da.PLUGIN_OP, "1", "")
    engine = tmp_path / "plugin.engine"
    build(fake, cuda, path, str(engine))
    assert fake.state.plugin_inits and set(fake.state.plugin_inits) == {""}  # default namespace
    fake.state.plugin_inits.clear()  # the station is another process: its registry starts empty
    frame = np.full((8, 8, 3), 200, np.uint8)
    with TensorRTSegmenter(str(engine), trt_module=fake, cuda_api=cuda) as seg:
        assert seg.infer_batch([frame])[0].class_map.tolist() == [[3] * 8] * 8  # fake engine: class = blue // 64
    assert fake.state.plugin_inits == [""]


# --- FP16 / INT8 handling ---------------------------------------------------------------------------

def test_sampling_nodes_stay_fp32_and_unquantized(demo_exports, monkeypatch):
    from ds2a.precision import fp16, int8
    from ds2a.precision.model_info import OnnxModelInfo

    _, models = demo_exports
    for variant in ("gather", "grid-sample"):
        model = models[variant]
        names = da.sampling_nodes(model)
        ops = {n.op_type for n in model.graph.node if n.name in names}
        assert {"Div", "Add"} <= ops  # the location arithmetic is inside
        assert ("Gather" in ops and "Floor" in ops) if variant == "gather" else ("GridSample" in ops)
        assert all(any(re.match(p, n) for p in fp16.FP32_NODE_PATTERNS) for n in names)
        seen = {}
        monkeypatch.setattr(int8, "quantize_modelopt", lambda info, calib, out, method, ops_, nodes, *a: seen.update(nodes=nodes))
        info = OnnxModelInfo(Path("m.onnx"), model, None, "images", False, 1)

        class Calib:
            names = ["a"]

            def fingerprint(self):
                return "x"

        int8.calibrate_int8(info, Calib(), Path("out.onnx"), exclude_nodes=["keep_me"])
        assert seen["nodes"][0] == "keep_me" and set(names) <= set(seen["nodes"])


def test_calibrating_a_plugin_export_is_refused_with_the_fix(tmp_path, demo_exports):
    from ds2a.errors import UserError
    from ds2a.precision.model_info import inspect_model

    path = tmp_path / "plugin.onnx"
    onnx.save(demo_exports[1]["trt-plugin"], str(path))
    with pytest.raises(UserError, match="--deform-attn gather"):
        inspect_model(str(path))
