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
    """A Segmenter over `ds2a.model.load_model(path)`.

    Options: device ('auto' = CUDA when available, 'cpu', 'cuda', 'cuda:1'), return_logits,
    half (FP16 autocast on CUDA), threads (torch intra-op threads on CPU, 0 = default),
    input_size ((H, W) to run at instead of the checkpoint's size; multiples of 32).
    """

    backend = "pytorch"

    def __init__(self, path: str, device: str = "auto", return_logits: bool = False, half: bool = False,
                 threads: int = 0, input_size: Optional[Tuple[int, int]] = None) -> None:
        try:
            import torch
        except ImportError:
            raise UserError(f"opening {path} needs PyTorch (pip install 'ds2a-edge[train]'); "
                            "on a device without torch, export it with `ds2a export` and open the .onnx") from None
        from ..model import load_model

        self._torch = torch
        self.path = str(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device '{device}' asked for {path} but PyTorch sees no CUDA GPU; use device='cpu'")
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.model = load_model(self.path, map_location="cpu").to(self.device).eval()
        meta = self.model.meta
        if input_size is not None:
            if any(int(v) % 32 for v in input_size):
                raise UserError(f"input_size {tuple(input_size)} for {path} must be multiples of 32 (e.g. 512x512)")
            meta = ModelMeta.from_dict({**meta.to_dict(), "input_size": [int(v) for v in input_size]})
        super().__init__(meta)
        self.return_logits = bool(return_logits)
        self.half = bool(half) and self.device.type == "cuda"
        self._mean_std = (self.meta.mean, self.meta.std)

    @property
    def batch_size(self) -> Optional[int]:
        return None

    def infer_batch(self, frames: Frames) -> List[InferResult]:
        torch = self._torch
        batch = self.prepare_batch(frames)
        x = torch.from_numpy(normalize(batch, *self._mean_std)).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.half):
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
