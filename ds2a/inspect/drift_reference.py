"""Record a model's drift reference from the line's own picture (docs/DRIFT.md).

    python -m ds2a.inspect.drift_reference MODEL.onnx --source URI [--frames 200] [--out OTHER.onnx]

`ds2a export` / `ds2a calibrate` record the reference from their frames; a line's camera sees the
parts through its own optics and light, so at commissioning the reference is best taken from it.
Frames are prepared as the inspection loop prepares them (the part box when the source gives one,
resized to the model size), one per part; only the drift reference key of the metadata changes.
"""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..data.picture_stats import Reference, reference_from, set_reference
from ..errors import UserError


def line_frames(source: Any, size_hw: Tuple[int, int], count: int) -> List[np.ndarray]:
    """Up to `count` frames from a source as the inspection loop prepares them (the part box when the
    source gives one, else the whole frame; resized to the model size), one per part."""
    from ..preprocess import resize_frame

    frames: List[np.ndarray] = []
    last = None
    try:
        for frame in source:
            if frame.image is None or not getattr(frame.image, "size", 0):
                continue
            if getattr(source, "gives_roi", False) and frame.roi is None:
                continue  # no part in view
            if frame.part_id is not None and frame.part_id == last:
                continue
            last = frame.part_id
            image = frame.image
            if frame.roi is not None:
                x, y, w, h = frame.roi
                image = image[y:y + h, x:x + w]
            frames.append(resize_frame(image, size_hw))
            if len(frames) >= count:
                break
    finally:
        source.close()
    return frames


def record_reference(model_path: str, source_uri: str, count: int = 200, out: Optional[str] = None) -> Reference:
    """Record the drift reference of an ONNX model from a source's picture (the line at commissioning) and
    write it into the model's metadata (in place, or into `out`); every other metadata key stays."""
    import onnx
    import onnxruntime as ort

    from ..export.metadata import load_onnx, read_meta, write_meta
    from ..outputs import atomic_path
    from ..runtime import open_model
    from ..sources import open_source

    if not str(model_path).lower().endswith(".onnx"):
        raise UserError(f"{model_path}: drift statistics are recorded into an ONNX file; record them into the "
                        "ONNX, then build the engine from it")
    proto = load_onnx(model_path)
    meta = read_meta(proto, model_path)
    seg = open_model(str(model_path), backend="onnxruntime", return_logits=True)
    try:
        frames = line_frames(open_source(source_uri), tuple(meta.input_size), count)  # type: ignore[arg-type]
        if len(frames) < 20:
            raise UserError(f"{source_uri} gave {len(frames)} frames with a part; the reference needs at least 20 "
                            "(a longer source, or frames=N larger)")
        ref = reference_from(seg.infer_batch, frames, meta.classes, source_uri, f"onnxruntime {ort.__version__} CPU")
    finally:
        seg.close()
    set_reference(meta, ref)
    write_meta(proto, meta)
    target = out or model_path
    with atomic_path(target, label="--out") as tmp:
        onnx.save(proto, str(tmp))
    return ref


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m ds2a.inspect.drift_reference MODEL.onnx --source URI [--frames N] [--out FILE]`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ds2a.inspect.drift_reference", description=(
        "record the drift reference statistics of an ONNX model from the line's own picture (docs/DRIFT.md)"))
    p.add_argument("model", help="the ONNX model (written in place unless --out)")
    p.add_argument("--source", required=True, help="the line's picture: a camera, a video, a folder, demo://...")
    p.add_argument("--frames", type=int, default=200, help="parts (frames) to record (default 200)")
    p.add_argument("--out", help="write the model with the statistics here instead")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ref = record_reference(args.model, args.source, args.frames, args.out)
    except UserError as exc:
        print(f"error: {exc}")
        return 2
    print(f"{args.out or args.model}: {ref.line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
