"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch, in three export forms.

Same arithmetic as mmcv's CPU path (`multi_scale_deformable_attn_pytorch`): bilinear
sampling, zero padding, align_corners=False. Spatial shapes are plain Python ints so the
module traces/exports to ONNX without dynamic shape tensors. How the sampling is written
into the graph is chosen at export time (docs/DEFORM_ATTN.md):

- "grid-sample": one `grid_sample` per level (ONNX GridSample, opset >= 16); the fastest in
  PyTorch and the form used for training.
- "gather": the same bilinear sum from Floor/Mul/Add and one Gather per layer, so the graph has
  no GridSample at all (the pattern TensorRT 10.14+ is reported to miscompile).
- "trt-plugin": one custom node `trt::MultiscaleDeformableAttnPlugin_TRT` per layer, the
  interface of NVIDIA's plugin (ds2a/trt/deform_attn.py documents it); runs as "grid-sample" in PyTorch.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VARIANTS = ("grid-sample", "gather", "trt-plugin")
PLUGIN_OP = "MultiscaleDeformableAttnPlugin_TRT"  # op_type the TensorRT ONNX parser looks up
PLUGIN_DOMAIN = "trt"  # the parser ignores the domain; ONNX needs one for a non-standard op
_state: dict = {"variant": "grid-sample", "plugin_version": "1", "shapes": []}


@contextlib.contextmanager
def deform_attn_variant(variant: str, plugin_version: str = "1") -> Iterator[None]:
    """While exporting, every MSDeformAttn samples with `variant` (one of VARIANTS)."""
    if variant not in VARIANTS:
        raise ValueError(f"deformable attention variant '{variant}' is unknown; choose one of {', '.join(VARIANTS)}")
    old = dict(_state)
    _state.update(variant=variant, plugin_version=str(plugin_version))
    try:
        yield
    finally:
        _state.update(old)


def level_starts(shapes: Sequence[tuple[int, int]]) -> list[int]:
    """Offset of each level in the concatenated value (the plugin's `level_start_index`)."""
    starts, acc = [], 0
    for h, w in shapes:
        starts.append(acc)
        acc += h * w
    return starts


def sample_grid(value: Tensor, shapes: Sequence[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """grid_sample per level. value (B, N, heads, d); locations (B, Q, heads, L, P, 2) as (x, y)
    in [0, 1]; weights (B, Q, heads, L, P). Returns (B, Q, heads, d)."""
    b, _, heads, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (B, h*w, heads, d) -> (B*heads, d, h, w)
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * heads, d, h, w)
        # (B, Q, heads, P, 2) -> (B*heads, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B*heads, d, Q, L*P) * (B*heads, 1, Q, L*P) -> (B*heads, d, Q)
    attn = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * attn).sum(-1)
    return out.view(b, heads, d, q).permute(0, 3, 1, 2)


def sample_gather(value: Tensor, shapes: Sequence[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """The same bilinear sum as `sample_grid` from index arithmetic and one Gather over all levels.

    Pixel coordinates follow PyTorch's grid_sampler_unnormalize (align_corners=False):
    ((2 * loc - 1 + 1) * size - 1) / 2; a corner outside its map contributes zero (its weight
    is masked, its index clamped into range). Returns (B, Q, heads, d).
    """
    b, n, heads, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    kw = {"dtype": value.dtype, "device": value.device}
    size_w = torch.tensor([w for _, w in shapes], **kw).view(levels, 1, 1)  # against (B, Q, heads, L, P, 4)
    size_h = torch.tensor([h for h, _ in shapes], **kw).view(levels, 1, 1)
    start = torch.tensor(level_starts(shapes), **kw).view(levels, 1, 1)
    corner_dx = torch.tensor([0.0, 1.0, 0.0, 1.0], **kw)
    corner_dy = torch.tensor([0.0, 0.0, 1.0, 1.0], **kw)
    zero = torch.zeros((), **kw)
    grid = 2 * locations - 1
    px = ((grid[..., 0:1] + 1) * size_w - 1) / 2  # (B, Q, heads, L, P, 1)
    py = ((grid[..., 1:2] + 1) * size_h - 1) / 2
    xs = torch.floor(px) + corner_dx  # (B, Q, heads, L, P, 4)
    ys = torch.floor(py) + corner_dy
    wgt = (1 - (px - xs).abs()) * (1 - (py - ys).abs())
    xc = torch.maximum(torch.minimum(xs, size_w - 1), zero)
    yc = torch.maximum(torch.minimum(ys, size_h - 1), zero)
    inside = (xs == xc) & (ys == yc)
    wgt = wgt * inside.to(value.dtype) * weights[..., None]
    # row of value flattened to (B*N*heads, d) for batch i, position s, head m: (i*N + s)*heads + m
    batch = torch.arange(b, device=value.device).view(b, 1, 1, 1, 1, 1) * (n * heads)
    head = torch.arange(heads, device=value.device).view(1, 1, heads, 1, 1, 1)
    rows = batch + (yc * size_w + xc + start).to(torch.int64) * heads + head
    k = levels * points * 4
    picked = value.reshape(b * n * heads, d)[rows.reshape(-1)].view(b, q, heads, k, d)
    return torch.matmul(wgt.reshape(b, q, heads, 1, k), picked).select(3, 0)  # squeeze would export an If


class _TrtPluginSample(torch.autograd.Function):
    """Exports as NVIDIA's MultiscaleDeformableAttnPlugin_TRT node; runs `sample_grid` in PyTorch
    (`sample_gather` traced inside an autograd.Function trips the TorchScript exporter's peephole pass).

    Inputs in the plugin's order (TensorRT plugin/multiscaleDeformableAttnPlugin/README.md):
    value (N, S, M, D), spatial_shapes int32 (L, 2) as (h, w), level_start_index int32 (L,),
    sampling_locations (N, Lq, M, L, P, 2), attention_weights (N, Lq, M, L, P); output (N, Lq, M, D).
    The shapes travel as int32 tensors (they are constants of the trace and become the node's
    constant inputs); the plugin version is read from the export state, not passed.
    """

    @staticmethod
    def forward(ctx, value, spatial, starts, locations, weights):  # noqa: ARG004
        return sample_grid(value, _state["shapes"], locations, weights)

    @staticmethod
    def symbolic(g, value, spatial, starts, locations, weights):
        out = g.op(f"{PLUGIN_DOMAIN}::{PLUGIN_OP}", value, spatial, starts, locations, weights,
                   plugin_version_s=_state["plugin_version"], plugin_namespace_s="")
        vs, ls = value.type().sizes(), locations.type().sizes()
        if vs is not None and ls is not None:
            out.setType(value.type().with_sizes([vs[0], ls[1], vs[2], vs[3]]))
        return out


def deformable_sample(value: Tensor, shapes: Sequence[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum of bilinear samples, written the way `deform_attn_variant` chose.

    value (B, N, heads, d) over the concatenated levels; locations (B, Q, heads, L, P, 2) as
    (x, y) in [0, 1]; weights (B, Q, heads, L, P). Returns (B, Q, heads * d).
    """
    variant = _state["variant"]
    if variant == "gather":
        out = sample_gather(value, shapes, locations, weights)
    elif variant == "trt-plugin":
        spatial = torch.tensor([list(s) for s in shapes], dtype=torch.int32)
        starts = torch.tensor(level_starts(shapes), dtype=torch.int32)
        _state["shapes"] = [tuple(s) for s in shapes]
        out = _TrtPluginSample.apply(value, spatial, starts, locations, weights)
    else:
        out = sample_grid(value, shapes, locations, weights)
    return out.flatten(2)


class DeformableSampler(nn.Module):
    """Sampling locations and `deformable_sample` as a module, so their nodes export as `.../sampler/...`.

    ds2a calibrate finds them by that name (ds2a/trt/deform_attn.py sampling_nodes) to keep the
    coordinate arithmetic FP32 and unquantized. No parameters: checkpoints are unchanged.
    """

    def forward(self, value: Tensor, shapes: list[tuple[int, int]], reference_points: Tensor, offsets: Tensor,
                weights: Tensor) -> Tensor:
        """reference_points (B, Q, L, 2) normalised (x, y); offsets (B, Q, heads, L, P, 2) in pixels of each level."""
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return deformable_sample(value, shapes, locations, weights)


class MSDeformAttn(nn.Module):
    """Each query samples `points` locations per head and level around its reference point."""

    def __init__(self, dim: int = 256, heads: int = 8, levels: int = 3, points: int = 4) -> None:
        super().__init__()
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.sampler = DeformableSampler()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a ring (one direction per head), uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1)
        for i in range(self.points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: Tensor, query_pos: Tensor | None, value: Tensor,
                reference_points: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        """query/value (B, N, C); reference_points (B, N, levels, 2) normalised (x, y).

        Returns the attention output plus the residual `query` (as mmcv does).
        """
        identity = query
        if query_pos is not None:
            query = query + query_pos
        b, nq, _ = query.shape
        nv = value.shape[1]
        v = self.value_proj(value).view(b, nv, self.heads, -1)
        offsets = self.sampling_offsets(query).view(b, nq, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, nq, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, nq, self.heads, self.levels, self.points)
        out = self.sampler(v, shapes, reference_points, offsets, weights)
        return self.output_proj(out) + identity
