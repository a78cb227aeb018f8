"""The network as deployed: uint8 BGR frames in, class map (and optionally logits) out.

Cast, BGR->RGB, normalisation and NHWC->NCHW happen inside the graph, so a runtime copies the
camera frame as is. The class map is ArgMax -> float -> uint8: TensorRT before 10 converts uint8
only to and from float (TensorRT 8.6 DataType.UINT8 docs), and the detour is exact for < 256 classes.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, List, Sequence

import torch
from torch import Tensor, nn


class FrameModel(nn.Module):
    """Wraps a DS2AFormer: `frames` (N,H,W,3) uint8 BGR or (N,3,H,W) float normalised RGB."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 uint8_input: bool = True, outputs: str = "both") -> None:
        super().__init__()
        self.model = model
        self.uint8_input = uint8_input
        self.outputs = outputs
        # (x - mean) / std as one multiply-add: x * (1/std) + (-mean/std)
        scale = torch.tensor([1.0 / s for s in std], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * scale,
                             persistent=False)

    def forward(self, frames: Tensor) -> List[Tensor]:
        x = frames
        if self.uint8_input:
            x = x.to(torch.float32).permute(0, 3, 1, 2)[:, [2, 1, 0]]
            x = x * self.scale + self.shift
        logits = self.model.semantic_logits(x)
        class_map = logits.argmax(1).to(torch.float32).to(torch.uint8)
        if self.outputs == "classmap":
            return [class_map]
        if self.outputs == "logits":
            return [logits]
        return [class_map, logits]


def _einsum_as_matmul(equation: str, a: Tensor, b: Tensor) -> Tensor:
    """Two-operand einsum as permute/reshape/MatMul (exact; TensorRT and ORT both run MatMul natively)."""
    lhs, out = equation.replace(" ", "").split("->")
    ia, ib = lhs.split(",")
    batch = [c for c in out if c in ia and c in ib]
    contract = [c for c in ia if c in ib and c not in out]
    left = [c for c in ia if c not in ib]
    right = [c for c in ib if c not in ia]
    size = {c: a.shape[ia.index(c)] for c in ia}
    size.update({c: b.shape[ib.index(c)] for c in ib})
    bs = [size[c] for c in batch]
    n_left, n_con, n_right = (math.prod(int(size[c]) for c in g) for g in (left, contract, right))
    a2 = a.permute([ia.index(c) for c in batch + left + contract]).reshape(*bs, n_left, n_con)
    b2 = b.permute([ib.index(c) for c in batch + contract + right]).reshape(*bs, n_con, n_right)
    y = torch.matmul(a2, b2).reshape(*bs, *[size[c] for c in left], *[size[c] for c in right])
    have = batch + left + right
    return y.permute([have.index(c) for c in out])


def _matmul_friendly(equation: str, operands: Sequence[Tensor]) -> bool:
    if len(operands) != 2 or "..." in equation or "->" not in equation:
        return False
    lhs, out = equation.replace(" ", "").split("->")
    terms = lhs.split(",")
    if any(len(set(t)) != len(t) for t in terms + [out]):
        return False  # diagonals / repeated letters
    ia, ib = terms
    # every free letter must survive to the output (no sum over a letter of one operand only)
    return all(c in out for c in ia if c not in ib) and all(c in out for c in ib if c not in ia)


@contextlib.contextmanager
def einsum_as_matmul() -> Iterator[None]:
    """While exporting, torch.einsum emits MatMul instead of Einsum (TensorRT 8.x restricts Einsum)."""
    original = torch.einsum

    def patched(equation, *operands):
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = tuple(operands[0])
        if _matmul_friendly(equation, operands):
            return _einsum_as_matmul(equation, *operands)
        return original(equation, *operands)

    torch.einsum = patched
    try:
        yield
    finally:
        torch.einsum = original
