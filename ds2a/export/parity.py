"""Does the ONNX compute what PyTorch computes? ONNX Runtime CPU against the torch model, loudly.

Tolerances: logits within 1e-4 relative, i.e. max|onnx - torch| <= 1e-4 * max(1, max|torch|)
(relative to the logit scale, so near-zero logits do not make the test meaningless), and class
maps equal on at least 99.9% of pixels (argmax ties between near-equal logits may flip).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..errors import UserError
from ..meta import INPUT_NAME, OUTPUT_CLASS_MAP, OUTPUT_LOGITS
from ..preprocess import normalize

LOGIT_RTOL = 1e-4
MIN_AGREEMENT = 0.999


@dataclass
class ParityResult:
    kind: str  # "random" or "real"
    frames: int
    max_abs: float
    rel: float
    agreement: float

    @property
    def ok(self) -> bool:
        return self.rel <= LOGIT_RTOL and self.agreement >= MIN_AGREEMENT

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"parity {self.kind:6s} ({self.frames} frames): logits max|diff| {self.max_abs:.2e} "
                f"(rel {self.rel:.2e} <= {LOGIT_RTOL:g}), class maps {100 * self.agreement:.3f}% equal "
                f"(>= {100 * MIN_AGREEMENT:g}%): {verdict}")


def synthetic_frames(n: int, size_hw: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """Battery-cell-like frames from ds2a.data.synth (realistic content when no data folder is given)."""
    from ..data.synth import render_cell

    rng = np.random.default_rng(seed)
    return np.stack([render_cell(rng, size_hw)[0] for _ in range(n)])


def _torch_logits(model, frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    import torch

    with torch.no_grad():
        x = torch.from_numpy(normalize(frames, mean, std))
        return model.semantic_logits(x).numpy()


def compare(onnx_model: onnx.ModelProto, torch_model, frames: np.ndarray, kind: str,
            mean: Sequence[float], std: Sequence[float], batch: Optional[int]) -> ParityResult:
    """Run both on the same uint8 frames (in export-batch chunks) and measure the differences."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    from ..trt.deform_attn import expand_plugin_nodes  # a TensorRT plugin node runs as its CPU reference

    sess = ort.InferenceSession(expand_plugin_nodes(onnx_model).SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    names = [o.name for o in sess.get_outputs()]
    if OUTPUT_LOGITS not in names:
        raise UserError("parity needs the logits output; export with both outputs first")
    float_input = inp.type == "tensor(float)"
    step = batch or len(frames)
    frames = frames[: len(frames) - len(frames) % step] if len(frames) >= step else frames
    got_l, got_c = [], []
    for i in range(0, len(frames), step):
        chunk = frames[i : i + step]
        x = normalize(chunk, mean, std) if float_input else chunk
        out = dict(zip(names, sess.run(None, {inp.name: x})))
        got_l.append(out[OUTPUT_LOGITS])
        got_c.append(out.get(OUTPUT_CLASS_MAP, out[OUTPUT_LOGITS].argmax(1)))
    got_logits, got_cls = np.concatenate(got_l), np.concatenate(got_c)
    ref = _torch_logits(torch_model, frames, mean, std)
    max_abs = float(np.abs(got_logits - ref).max())
    rel = max_abs / max(1.0, float(np.abs(ref).max()))
    agreement = float((got_cls == ref.argmax(1)).mean())
    return ParityResult(kind, len(frames), max_abs, rel, agreement)


def check_parity(onnx_model: onnx.ModelProto, torch_model, size_hw: Tuple[int, int], mean: Sequence[float],
                 std: Sequence[float], batch: Optional[int], real_frames: Optional[np.ndarray] = None,
                 n: int = 2, seed: int = 0) -> List[ParityResult]:
    """Random frames and real (or synthetic battery) frames; raises UserError naming the failure."""
    rng = np.random.default_rng(seed)
    count = max(n, batch or 1)
    random = rng.integers(0, 256, size=(count, *size_hw, 3), dtype=np.uint8)
    real = real_frames if real_frames is not None else synthetic_frames(count, size_hw, seed)
    results = [compare(onnx_model, torch_model, random, "random", mean, std, batch),
               compare(onnx_model, torch_model, real, "real", mean, std, batch)]
    bad = [r for r in results if not r.ok]
    if bad:
        raise UserError("ONNX export does not match PyTorch: " + "; ".join(r.line() for r in bad) +
                        ". The file was not written; report this with the checkpoint, or try --trt/--opset defaults")
    return results


__all__ = ["ParityResult", "check_parity", "compare", "synthetic_frames", "INPUT_NAME"]
