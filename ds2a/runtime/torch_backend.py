"""PyTorch backend: the reference the exported and compiled models are compared against.

torch is imported here only, when a checkpoint is opened, so the rest of the runtime stays
torch-free. CUDA is used when available unless device= says otherwise.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from ..errors import UserError
from ..meta import ModelMeta
from ..preprocess import normalize
from .base import Frames, InferResult, Segmenter, make_results


class TorchSegmenter(Segmenter):
    """A Segmenter over `ds2a.model.load_model(path)`, or over a model in memory (`from_module`).

    Options: device ('auto' = CUDA when available, 'cpu', 'cuda', 'cuda:1'), return_logits,
    half (FP16 autocast on CUDA), threads (torch intra-op threads on CPU, 0 = default),
    input_size ((H, W) to run at instead of the checkpoint's size; multiples of 32).
    """

    backend = "pytorch"

    def __init__(self, path: str, *, device: str = "auto", return_logits: bool = False, half: bool = False,
                 threads: int = 0, input_size: Optional[Tuple[int, int]] = None) -> None:
        torch = _import_torch(path)
        from ..model import load_model

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device '{device}' asked for {path} but PyTorch sees no CUDA GPU; use device='cpu'")
        if threads:
            torch.set_num_threads(int(threads))
        target = torch.device(device)
        model = load_model(str(path), map_location="cpu").to(target).eval()
        meta = model.meta
        if input_size is not None:
            if any(int(v) % 32 for v in input_size):
                raise UserError(f"input_size {tuple(input_size)} for {path} must be multiples of 32 (e.g. 512x512)")
            meta = ModelMeta.from_dict({**meta.to_dict(), "input_size": [int(v) for v in input_size]})
        amp = torch.float16 if half and target.type == "cuda" else None
        self._setup(torch, str(path), model, meta, target, amp, return_logits)

    @classmethod
    def from_module(cls, module: Any, meta: ModelMeta, device: Any, *, amp: Any = None,
                    return_logits: bool = False) -> "TorchSegmenter":
        """A model already in memory (training's evaluation): the same preprocessing and argmax as a file.

        module: anything with `semantic_logits(x)`, already on `device` and in the mode the caller
        wants; amp: an autocast dtype (torch.float16 / torch.bfloat16) or None for FP32. The caller
        keeps the module: close() only drops this reference.
        """
        torch = _import_torch("an in-memory model")
        seg = cls.__new__(cls)
        seg._setup(torch, "<module>", module, meta, torch.device(device), amp, return_logits)
        return seg

    def _setup(self, torch: Any, path: str, model: Any, meta: ModelMeta, device: Any, amp: Any,
               return_logits: bool) -> None:
        super().__init__(meta)
        self._torch = torch
        self.path = path
        self.model = model
        self.device = device
        self.amp = amp
        self.half = amp == torch.float16
        self.return_logits = bool(return_logits)
        self._mean_std = (self.meta.mean, self.meta.std)

    @property
    def batch_size(self) -> Optional[int]:
        return None

    def infer_batch(self, frames: Frames) -> List[InferResult]:
        torch = self._torch
        batch = self.prepare_batch(frames)
        x = torch.from_numpy(normalize(batch, *self._mean_std)).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                                                    enabled=self.amp is not None):
            logits = self.model.semantic_logits(x).float()
            class_map = logits.argmax(1).to(torch.uint8)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        lg: Any = logits.cpu().numpy() if self.return_logits else None
        return make_results(class_map.cpu().numpy(), lg, len(batch), keep_logits=self.return_logits)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()


def _import_torch(what: str) -> Any:
    try:
        import torch
    except ImportError:
        raise UserError(f"opening {what} needs PyTorch (pip install 'ds2a-edge[train]'); "
                        "on a device without torch, export it with `ds2a export` and open the .onnx") from None
    return torch
