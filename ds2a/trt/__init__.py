"""Everything ds2a knows about TensorRT, in one torch-free place the builder and the runtime share.

- `versions`: reading version strings, the release lines ds2a targets, and which runtimes load
  a version-compatible engine (facts no API tells);
- `features`: what the imported `tensorrt` can do, detected on the module, and `import_tensorrt`;
- `compat`: which ONNX ops/opsets each release's parser reads (needs `onnx`; imported on demand);
- `deform_attn`: the deformable-attention export forms, their verdict per release, NVIDIA's
  MultiscaleDeformableAttnPlugin_TRT interface and its CPU reference (needs `onnx`; on demand);
- `sidecar`: `model.engine.json`, written by the builder and checked by the runtime;
- `platform`: the board model and module identity (Jetson modules all report "Orin").
"""
from .features import TrtFeatures, detect_features, import_tensorrt
from .versions import parse_version

__all__ = ["TrtFeatures", "detect_features", "import_tensorrt", "parse_version"]
