"""ResNet-18/34/50 backbone with torchvision's parameter names, frozen BatchNorm affine, 4 outputs.

The key layout (conv1, bn1, layer1..4, downsample.0/.1) is torchvision's and mmseg's
(`style='pytorch'`: the stride sits on the 3x3 conv), so ImageNet `.pth` files and the
official checkpoints load without renaming. The normalisation is a choice (`NORMS`):

- "frozen_bn", the official setting for ImageNet weights (`norm_cfg=dict(type='SyncBN',
  requires_grad=False)`): BN scale/shift never train, running statistics still update;
- "bn": trainable BatchNorm, for training from scratch (frozen scale/shift there leave the
  random init's features unnormalised and cost accuracy);
- "gn": GroupNorm (32 groups or fewer), batch-size independent, no running statistics.

"bn" and "frozen_bn" share the state-dict layout, so either loads the other's weights.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

# blocks per stage
_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
NORMS = ("frozen_bn", "bn", "gn")


def _bn(channels: int, norm: str = "frozen_bn") -> nn.Module:
    if norm == "gn":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    bn = nn.BatchNorm2d(channels)
    if norm == "frozen_bn":
        bn.weight.requires_grad_(False)
        bn.bias.requires_grad_(False)
    return bn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: str = "frozen_bn") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = _bn(ch, norm)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = _bn(ch, norm)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: str = "frozen_bn") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = _bn(ch, norm)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
        self.bn2 = _bn(ch, norm)
        self.conv3 = nn.Conv2d(ch, ch * 4, 1, bias=False)
        self.bn3 = _bn(ch * 4, norm)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Feature pyramid at strides 4, 8, 16, 32 (outputs of layer1..layer4)."""

    def __init__(self, depth: int = 18, width: int = 64, norm: str = "frozen_bn") -> None:
        super().__init__()
        if depth not in _LAYERS:
            raise ValueError(f"ResNet depth {depth} not supported; use 18, 34 or 50")
        if norm not in NORMS:
            raise ValueError(f"backbone norm '{norm}' not supported; use one of {', '.join(NORMS)}")
        self.norm = norm
        block: type[BasicBlock | Bottleneck] = Bottleneck if depth >= 50 else BasicBlock
        self.depth, self.width = depth, width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = _bn(width, norm)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.out_channels: list[int] = []
        in_ch = width
        for i, blocks in enumerate(_LAYERS[depth]):
            ch = width * 2 ** i
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                down = None
                if b == 0 and (stride != 1 or in_ch != ch * block.expansion):
                    down = nn.Sequential(nn.Conv2d(in_ch, ch * block.expansion, 1, stride, bias=False),
                                         _bn(ch * block.expansion, norm))
                layers.append(block(in_ch, ch, stride if b == 0 else 1, down, norm))
                in_ch = ch * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels.append(in_ch)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


def load_torchvision_state(backbone: ResNet, state: dict) -> list[str]:
    """Copy a torchvision-style ResNet state dict (fc.* ignored) into `backbone`; returns ignored keys.

    Raises KeyError/ValueError on missing keys or shape mismatches; callers turn these into UserError.
    """
    state = {(k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in state.items()}
    own = backbone.state_dict()
    ignored = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    if missing:
        raise KeyError(", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    for k, v in own.items():
        if k in state and tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"{k}: file has shape {tuple(state[k].shape)}, model has {tuple(v.shape)}")
    with torch.no_grad():
        for k, v in own.items():
            if k in state:
                v.copy_(state[k].to(v.dtype))
    return ignored
