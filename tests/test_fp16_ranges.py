"""FP16 reference ranges in bounded memory: chunked collection equals one run with every tensor marked."""
import numpy as np
import onnx
import onnxruntime as ort
from fakes.onnx_models import toy_model
from onnx import shape_inference

from ds2a.precision.ranges import collect_ranges, plan_chunks, tensor_bytes


def _model():
    return shape_inference.infer_shapes(toy_model())


def _batches(n=3):
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8) for _ in range(n)]
    return lambda: ({"images": f} for f in frames)


def _all_at_once(model, batches):
    """What ModelOpt AutoCast's reference run does: every tensor a graph output, all kept."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend([vi for vi in m.graph.value_info if vi.name not in have])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    kept = [dict(zip(names, sess.run(names, b)), **b) for b in batches()]
    return {k: (max(np.abs(r[k].astype(np.float64)).max() for r in kept), min(r[k].min() for r in kept),
                max(r[k].max() for r in kept)) for k in kept[0]}


def test_chunked_ranges_equal_the_all_tensors_run():
    model, batches = _model(), _batches()
    want = _all_at_once(model, batches)
    for budget in (1, 64 * 1024, 2**30):  # one tensor per chunk, a few chunks, one chunk
        got = collect_ranges(model, batches, budget_bytes=budget)
        assert set(got) == set(want)
        for name, (absmax, lo, hi) in want.items():
            assert np.allclose(got[name][:3], (absmax, lo, hi), rtol=1e-6), name


def test_chunks_respect_the_budget_and_cover_every_tensor_once():
    model = _model()
    budget = 40 * 1024
    chunks = plan_chunks(model, budget)
    assert len(chunks) > 2
    names = [vi.name for _, vis in chunks for vi in vis]
    assert len(names) == len(set(names))
    order = [n.name for n in model.graph.node]
    for end, vis in chunks:
        sizes = [tensor_bytes(vi)[0] for vi in vis]
        assert sum(sizes) <= budget or len(vis) == 1
        produced = {o for n in model.graph.node[: end + 1] for o in n.output}
        assert {vi.name for vi in vis} <= produced and end < len(order)


def test_prefix_sessions_never_hold_more_than_one_chunk(monkeypatch):
    """Each session's outputs are one chunk: the all-tensors memory of AutoCast is never allocated."""
    model, batches = _model(), _batches(1)
    seen = []
    real = ort.InferenceSession

    class Spy(real):  # type: ignore[misc, valid-type]
        def run(self, names, feed, *a, **k):
            out = super().run(names, feed, *a, **k)
            seen.append(sum(o.nbytes for o in out))
            return out

    monkeypatch.setattr(ort, "InferenceSession", Spy)
    collect_ranges(model, batches, budget_bytes=40 * 1024)
    largest = max(tensor_bytes(vi)[0] for vi in model.graph.value_info)
    assert len(seen) > 2 and max(seen) <= max(40 * 1024, largest)


def test_fp16_conversion_streams_its_reference_ranges(tmp_path, capfd):
    """`ds2a calibrate --precision fp16` replaces AutoCast's keep-everything reference run by the chunked one."""
    from ds2a.cli import main
    from ds2a.precision.model_info import precision_of

    onnx.save(toy_model(), str(tmp_path / "toy.onnx"))
    assert main(["synth", str(tmp_path / "ds"), "--train", "6", "--test", "1", "--size", "48x48", "--seed", "0"]) == 0
    capfd.readouterr()
    out = tmp_path / "toy.fp16.onnx"
    assert main(["calibrate", str(tmp_path / "toy.onnx"), "--data", str(tmp_path / "ds"), "--num-images", "6",
                 "--precision", "fp16", "--out", str(out)]) == 0
    log = capfd.readouterr().out
    assert "fp16 reference ranges:" in log and "4 batch(es)" in log, log  # REFERENCE_IMAGES of the 6
    assert precision_of(onnx.load(str(out))) == "fp16"
