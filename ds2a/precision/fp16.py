"""FP16 mixed precision: most of the network in half, the overflow-prone statistics in fp32.

ModelOpt AutoCast converts the graph (it runs on the CPU through ONNX Runtime and also keeps
nodes whose observed activations exceed `data_max` in fp32). Kept in fp32 by op type: layer/group
normalisation, softmax, every reduction and the Pow/Sqrt/Div/Exp of hand-written statistics; by
name: everything inside the DQGSA/DSSCA statistics branches. Input and output types are kept
(uint8 frames in, uint8 class map / fp32 logits out), so runtimes need no change.
"""
from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import List, Sequence

import numpy as np
import onnx

from ..data.calibration import CalibrationSet
from ..errors import UserError
from .calib_data import FrameReader
from .isolated import run_isolated
from .model_info import OnnxModelInfo

FP32_OP_TYPES = [
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceLogSumExp",
    "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Erf", "CumSum", "TopK", "ArgMax",
]
# AutoCast keeps in fp32 the nodes whose reference activations exceed its data_max (512); 4 frames
# give the demo model the same fp32 set as 8 (benchmarks/results/memory.md), at half the reference-run time.
REFERENCE_IMAGES = 4
# node-name regexes (torch export names nodes after module paths: /dssca1/..., /transformer_decoder/...)
# The deformable-attention sampling (`.../sampler/...`, ds2a/trt/deform_attn.py SAMPLER_SCOPE) stays fp32:
# an fp16 pixel coordinate is off by up to 1/32 px at x = 64, which moves every bilinear weight.
FP32_NODE_PATTERNS = [r".*[Dd][Ss][Ss][Cc][Aa].*(Reduce|Pow|Sqrt|Div|Sub|Sigmoid).*",
                      r".*[Dd][Qq][Gg][Ss][Aa].*(Reduce|Pow|Sqrt|Div|Sub|Norm).*",
                      r".*/sampler/.*"]


def convert_fp16(info: OnnxModelInfo, calib: CalibrationSet, out: Path, exclude_ops: Sequence[str] = (),
                 exclude_nodes: Sequence[str] = (), opset: int = 17) -> None:
    """Write the mixed-precision model to `out` (opset kept at 17 so TensorRT 8.5/8.6 still parse it)."""
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--precision fp16 needs NVIDIA ModelOpt AutoCast ({exc}); install it with "
                        "`pip install nvidia-modelopt onnx-graphsurgeon lief polygraphy` "
                        "(without the [onnx] extra)") from None
    reader = FrameReader(calib, info.input_name, info.batch, info.float_input, info.meta.mean, info.meta.std,
                         limit=max(info.batch, min(len(calib.names), REFERENCE_IMAGES)))
    with tempfile.TemporaryDirectory(prefix="ds2a_fp16_") as tmp:
        src = Path(tmp) / "model.onnx"
        onnx.save(info.model, str(src))
        data_dir = Path(tmp) / "calib"
        data_dir.mkdir()
        for i, batch in enumerate(iter(reader.get_next, None)):
            np.savez(data_dir / f"{i:04d}.npz", **batch)
        patterns = FP32_NODE_PATTERNS + [f"^{re.escape(n)}$" for n in exclude_nodes]
        run_isolated("ds2a.precision.fp16:_autocast", str(src), str(out),
                     sorted(set(FP32_OP_TYPES) | set(exclude_ops)), patterns, str(data_dir), opset)


def _autocast(src: str, out: str, op_types: List[str], node_patterns: List[str], data_dir: str, opset: int) -> None:
    import modelopt.onnx.autocast.convert as autocast_convert
    from modelopt.onnx.autocast import convert_to_mixed_precision

    from .ranges import autocast_reference_runner

    logging.getLogger("modelopt").setLevel(logging.WARNING)
    # AutoCast's own reference run gets every tensor of every batch back (5.3 GiB per image, ds2a_r18 512x512)
    autocast_convert.ReferenceRunner = autocast_reference_runner()
    model = convert_to_mixed_precision(src, low_precision_type="fp16", op_types_to_exclude=op_types,
                                       nodes_to_exclude=node_patterns, keep_io_types=True,
                                       calibration_data=data_dir, providers=["cpu"], opset=opset)
    onnx.save(model, out)
