"""DS2A-Former in PyTorch: named configs, the network, our checkpoints and official-checkpoint conversion."""
from .checkpoint import load_backbone_weights, load_model, load_weights, save_checkpoint
from .config import MODEL_CONFIGS, ModelConfig, get_config
from .ds2a_former import DS2AFormer, build_model

__all__ = [
           "MODEL_CONFIGS",
           "DS2AFormer",
           "ModelConfig",
           "build_model",
           "get_config",
           "load_backbone_weights",
           "load_model",
           "load_weights",
           "save_checkpoint",
]
