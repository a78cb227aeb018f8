"""Our ModelMeta inside the ONNX file (metadata_props["ds2a"]), so no side file travels with a model.

Torch-free: calibration, the engine builder and the runtimes read it.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import onnx

from ..errors import UserError
from ..meta import ONNX_META_KEY, ModelMeta

PathLike = Union[str, Path]

def load_onnx(path: PathLike) -> onnx.ModelProto:
    """onnx.load with a readable error for a missing or non-ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file '{path}' does not exist; export one with `ds2a export CKPT --out {path.name}`")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise UserError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}); re-export it") from None


def write_meta(model: onnx.ModelProto, meta: ModelMeta) -> None:
    """Set (or replace) the ds2a entry in metadata_props."""
    for prop in list(model.metadata_props):
        if prop.key == ONNX_META_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, meta.to_json()


def read_meta(model: onnx.ModelProto, path: PathLike = "model.onnx", required: bool = True) -> Optional[ModelMeta]:
    """ModelMeta from metadata_props; a foreign ONNX is refused (required) or gives None."""
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_META_KEY not in props:
        if not required:
            return None
        raise UserError(f"'{path}' has no '{ONNX_META_KEY}' metadata (not exported by ds2a): classes, "
                        f"normalisation and input size are unknown; export it with "
                        f"`ds2a export CKPT --out {Path(path).name}`")
    try:
        return ModelMeta.from_dict(json.loads(props[ONNX_META_KEY]))
    except (ValueError, TypeError) as exc:
        raise UserError(f"'{path}' has unreadable '{ONNX_META_KEY}' metadata ({exc}); "
                        "re-export it with `ds2a export`") from None


def attach_golden(model: onnx.ModelProto, candidates: Sequence, source: str, path: PathLike = "model.onnx"):
    """Run `model` with ONNX Runtime (CPU, default settings) on the candidate frames, keep the few richest in
    defects and store them with the class maps it gave in its ds2a metadata (ds2a/runtime/selftest.py).

    The model runs through the same OnnxRuntimeSegmenter a station uses, so the stored maps are
    what `open_model` will compare against. Returns the Golden.
    """
    import onnxruntime as ort

    from ..meta import guess_precision
    from ..runtime.selftest import make_golden, set_golden

    meta = read_meta(model, path)
    with _onnxruntime(model) as seg:
        golden = make_golden(
            [seg.prepare(f) for f in candidates], lambda batch: [r.class_map for r in seg.infer_batch(batch)],
            f"onnxruntime {ort.__version__} CPU ({guess_precision(str(path), meta)})", source, meta.num_classes)
    set_golden(meta, golden)
    write_meta(model, meta)
    return golden


def attach_golden_file(path: PathLike, candidates: Sequence, source: str):
    """`attach_golden` on an ONNX file, rewritten in place (callers pass a temp file they publish later)."""
    return _in_place(path, attach_golden, candidates, source)


def attach_drift_reference(model: onnx.ModelProto, frames: Sequence, source: str, path: PathLike = "model.onnx"):
    """Run `model` with ONNX Runtime (CPU, logits when it has them) on the reference frames and store their
    drift statistics in its ds2a metadata (ds2a/inspect/drift.py, docs/DRIFT.md). Returns the Reference."""
    import onnxruntime as ort

    from ..data.picture_stats import reference_from, set_reference

    meta = read_meta(model, path)
    with _onnxruntime(model, return_logits=True) as seg:
        ref = reference_from(seg.infer_batch, [seg.prepare(f) for f in frames], meta.classes, source,
                             f"onnxruntime {ort.__version__} CPU")
    set_reference(meta, ref)
    write_meta(model, meta)
    return ref


def attach_drift_reference_file(path: PathLike, frames: Sequence, source: str):
    """`attach_drift_reference` on an ONNX file, rewritten in place (callers pass a temp file they publish later)."""
    return _in_place(path, attach_drift_reference, frames, source)


@contextlib.contextmanager
def _onnxruntime(model: onnx.ModelProto, **options: Any) -> Iterator[Any]:
    """The in-memory model opened as a station opens it (OnnxRuntimeSegmenter), from a temp copy."""
    from ..runtime.onnxruntime_backend import OnnxRuntimeSegmenter

    with tempfile.TemporaryDirectory(prefix="ds2a-meta-") as tmp:
        file = os.path.join(tmp, "model.onnx")
        onnx.save(model, file)
        seg = OnnxRuntimeSegmenter(file, **options)
        try:
            yield seg
        finally:
            seg.close()


def _in_place(path: PathLike, attach: Callable[..., Any], *args: Any) -> Any:
    """`attach(model, *args, path)` on the ONNX file at `path`, saved back to it."""
    model = load_onnx(path)
    result = attach(model, *args, path)
    onnx.save(model, str(path))
    return result
