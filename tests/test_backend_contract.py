"""The Segmenter contract (ds2a/runtime/base.py), checked on every backend through `open_model`.

Callers (inspection loop, eval, bench) never branch on the backend, so each one must behave
the same: ONNX Runtime on a tiny hand-built ONNX, PyTorch on an untrained ds2a_tiny checkpoint
(skipped without torch), TensorRT on the fake release and GPU of tests/trt_stubs, Triton on a
real `ds2a serve` (skipped with the reason when PyTriton/tritonclient are missing). The models
come from tests/conftest.py. Backend-specific behaviour stays in test_runtime.py,
test_tensorrt_backend.py and test_triton_serving.py.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest
from fakes.onnx_models import CLASSES as TINY_CLASSES
from trt_stubs.onnx_models import CLASSES as ENGINE_CLASSES

from ds2a.errors import UserError
from ds2a.meta import MBSD_CLASSES
from ds2a.runtime import open_model
from ds2a.runtime.base import InferResult, Segmenter
from ds2a.runtime.options import OPTIONS

BACKENDS = ["onnxruntime", "pytorch", "tensorrt", "triton"]


@dataclass
class Subject:
    """One backend under test: how to open it and what its model is."""

    name: str
    opener: Callable[..., Segmenter]
    classes: List[str]
    input_size: Tuple[int, int]
    logits: bool  # the model has a logits output to return

    def open(self, **options: Any) -> Segmenter:
        return self.opener(**options)

    def frames(self, n: int, seed: int = 0) -> np.ndarray:
        h, w = self.input_size
        return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _opener(path: str, **fixed: Any) -> Callable[..., Segmenter]:
    return lambda **options: open_model(path, **fixed, **options)


@pytest.fixture(params=BACKENDS)
def subject(request: pytest.FixtureRequest) -> Subject:
    name = request.param
    if name == "onnxruntime":
        path = request.getfixturevalue("tiny_onnx_model")
        return Subject(name, _opener(str(path), intra_op_threads=1), TINY_CLASSES, (32, 48), True)
    if name == "pytorch":  # an untrained ds2a_tiny keeps the default (MBSD) classes
        path = request.getfixturevalue("tiny_checkpoint")
        return Subject(name, _opener(str(path), device="cpu"), list(MBSD_CLASSES), (32, 32), True)
    if name == "tensorrt":
        fake, cuda, engine = request.getfixturevalue("trt_engine")
        return Subject(name, _opener(engine, trt_module=fake, cuda_api=cuda), ENGINE_CLASSES, (8, 8), True)
    server = request.getfixturevalue("triton_server")
    from triton_server import DEMO_MODEL

    with open_model(str(DEMO_MODEL), intra_op_threads=1, return_logits=True) as local:  # what the server serves
        meta, has_logits = local.meta, local.return_logits
    return Subject(name, _opener(server.grpc_url), list(meta.classes), tuple(meta.input_size), has_logits)


def _same(a: InferResult, b: InferResult) -> None:
    np.testing.assert_array_equal(a.class_map, b.class_map)


# --- what the model is -----------------------------------------------------------------------------------
def test_meta_names_the_backend_classes_and_input_size(subject: Subject) -> None:
    with subject.open() as seg:
        assert seg.backend == subject.name
        assert seg.meta.classes == subject.classes and seg.meta.num_classes == len(subject.classes)
        assert seg.input_size == subject.input_size
        assert seg.batch_size is None or seg.batch_size >= 1


# --- what it gives -------------------------------------------------------------------------------------
def test_infer_gives_a_uint8_class_map_at_the_model_size_with_known_classes(subject: Subject) -> None:
    with subject.open() as seg:
        for frame in subject.frames(2):
            result = seg.infer(frame)
            assert isinstance(result, InferResult)
            assert result.class_map.dtype == np.uint8 and result.class_map.shape == subject.input_size
            assert int(result.class_map.max()) < len(subject.classes)
            assert result.logits is None and result.confidence is None  # only when asked for


def test_infer_batch_gives_one_result_per_frame_equal_to_single_infers(subject: Subject) -> None:
    x = subject.frames(3, seed=1)
    with subject.open() as seg:
        batch = seg.infer_batch(x)
        listed = seg.infer_batch(list(x))
        singles = [seg.infer(f) for f in x]
    assert len(batch) == len(listed) == 3
    for a, b, c in zip(batch, listed, singles):
        _same(a, c)
        _same(b, c)


def test_results_do_not_share_memory_between_calls(subject: Subject) -> None:
    x = subject.frames(2, seed=2)
    with subject.open() as seg:
        first = seg.infer(x[0])
        kept = first.class_map.copy()
        second = seg.infer(255 - x[0])
        pair = seg.infer_batch(x)
    np.testing.assert_array_equal(first.class_map, kept)
    assert not np.shares_memory(first.class_map, second.class_map)
    assert not np.shares_memory(pair[0].class_map, pair[1].class_map)


def test_frames_of_other_sizes_channels_and_dtypes_are_converted(subject: Subject) -> None:
    """The contract is 'any image in, model size out': converted like ds2a/preprocess.py resize_frame."""
    h, w = subject.input_size
    frame = subject.frames(1, seed=3)[0]
    with subject.open() as seg:
        want = seg.infer(frame)
        _same(seg.infer(np.dstack([frame, np.full((h, w), 255, np.uint8)])), want)  # BGRA
        _same(seg.infer(frame.astype(np.uint16) << 8), want)  # 16-bit
        _same(seg.infer(frame.astype(np.float32)), want)
        gray = np.full((h, w), 77, np.uint8)
        _same(seg.infer(gray[:, :, None]), seg.infer(gray))
        assert seg.infer(np.full((2 * h + 3, 3 * w), 77, np.uint8)).class_map.shape == (h, w)


@pytest.mark.parametrize("call, shape, words", [
    ("infer", "N,H,W,3", r"shape \(2, \d+, \d+, 3\).*pass a batch \(N,H,W,3\) to infer_batch"),
    ("infer", "H,W,5", r"shape \(\d+, \d+, 5\).*HxWx3 \(BGR\)"),
    ("infer_batch", "H,W,3", r"needs frames shaped \(N,H,W,C\).*use infer\(\) for one frame"),
    ("infer_batch", "empty", "empty batch; pass at least one frame"),
    ("infer_batch", "empty array", "empty batch; pass at least one frame"),
])
def test_a_frame_it_cannot_use_is_a_user_error_naming_the_fix(subject: Subject, call: str, shape: str,
                                                              words: str) -> None:
    h, w = subject.input_size
    arrays: Dict[str, Any] = {"N,H,W,3": np.zeros((2, h, w, 3), np.uint8), "H,W,5": np.zeros((h, w, 5), np.uint8),
                              "H,W,3": np.zeros((h, w, 3), np.uint8), "empty": [],
                              "empty array": np.zeros((0, h, w, 3), np.uint8)}
    with subject.open() as seg:
        with pytest.raises(UserError, match=words):
            getattr(seg, call)(arrays[shape])


def test_return_logits_gives_logits_and_confidence_that_match_the_class_map(subject: Subject) -> None:
    frame = subject.frames(1, seed=4)[0]
    with subject.open(return_logits=True) as seg:
        result = seg.infer(frame)
    if not subject.logits:
        assert result.logits is None and result.confidence is None
        return
    k, (h, w) = len(subject.classes), subject.input_size
    assert result.logits.dtype == np.float32 and result.logits.shape == (k, h, w)
    np.testing.assert_array_equal(result.confidence, result.logits.max(axis=0))
    assert (result.logits.argmax(axis=0) == result.class_map).mean() > 0.999


# --- warm-up, closing ------------------------------------------------------------------------------------
def test_warmup_runs_and_refuses_outputs_that_disagree_with_the_metadata(subject: Subject) -> None:
    k = len(subject.classes)
    with subject.open() as seg:
        seg.warmup(2)
        real = seg.infer_batch

        def off_by_k(frames: Any) -> List[InferResult]:
            return [InferResult(class_map=r.class_map + np.uint8(k)) for r in real(frames)]

        seg.infer_batch = off_by_k  # type: ignore[method-assign]
        with pytest.raises(UserError, match=rf"gave class id \d+ but its metadata lists {k} classes"):
            seg.warmup(1)


def test_close_twice_is_safe(subject: Subject) -> None:
    seg = subject.open()
    seg.infer(subject.frames(1)[0])
    seg.close()
    seg.close()


def test_the_context_manager_closes_also_after_an_error(subject: Subject) -> None:
    for fail in (False, True):
        seg = subject.open()
        closed: List[bool] = []
        close = seg.close
        seg.close = lambda: closed.append(True) or close()  # type: ignore[method-assign]
        with pytest.raises(RuntimeError) if fail else nullcontext():
            with seg as entered:
                assert entered is seg
                if fail:
                    raise RuntimeError("the caller failed")
        assert closed == [True]


# --- options ---------------------------------------------------------------------------------------------
def test_an_unknown_option_is_refused_with_the_backends_options(subject: Subject) -> None:
    with pytest.raises(UserError, match=r"option 'colour' only applies to no models; .*its options are "
                                        + ", ".join(o.name for o in OPTIONS[subject.name])):
        subject.open(colour="red")


def test_each_option_of_another_backend_is_refused_naming_the_backends_that_take_it(subject: Subject) -> None:
    """ds2a/runtime/options.py OPTIONS is the table: whatever it does not list for this backend is refused."""
    own = {o.name for o in OPTIONS[subject.name]}
    others = sorted({o.name for opts in OPTIONS.values() for o in opts} - own)
    assert others, "every backend takes every option: nothing to refuse"
    for name in others:
        with pytest.raises(UserError, match=rf"option '{name}' only applies to .* models; .* runs on "):
            subject.open(**{name: 1})
