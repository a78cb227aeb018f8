"""Our checkpoint format: self-describing round trip, fp16 files, clear errors, torchvision backbone weights."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ds2a.errors import UserError
from ds2a.meta import ModelMeta
from ds2a.model import (
    build_model,
    load_backbone_weights,
    load_model,
    load_weights,
    save_checkpoint,
)
from ds2a.model.backbone import ResNet


def _tiny(num_classes: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("ds2a_tiny", num_classes=num_classes, decoder_layers=2)
    with torch.no_grad():  # non-trivial values everywhere, running stats included
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                noise = 0.01 * torch.randn_like(t)
                t.add_(noise.abs() if "running_var" in name else noise)
    return model.eval()


def test_round_trip_restores_meta_and_outputs(tmp_path) -> None:
    model = _tiny(num_classes=3)
    meta = ModelMeta(arch="ds2a_tiny", classes=["bg", "crack", "spot"], palette=[(0, 0, 0), (1, 2, 3), (4, 5, 6)],
                     mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), input_size=(192, 320))
    path = str(tmp_path / "m.pt")
    wrapped = torch.nn.Module()
    wrapped.module = model  # as DistributedDataParallel holds it
    sha = save_checkpoint(path, wrapped, meta, extra={"iteration": 120, "miou": 0.5})
    loaded = load_model(path)
    assert not loaded.training and next(loaded.parameters()).dtype == torch.float32
    assert loaded.config == model.config
    assert loaded.meta.classes == ["bg", "crack", "spot"] and loaded.meta.palette == [(0, 0, 0), (1, 2, 3), (4, 5, 6)]
    assert loaded.meta.mean == (1.0, 2.0, 3.0) and loaded.meta.std == (4.0, 5.0, 6.0)
    assert loaded.meta.input_size == (192, 320)
    assert sha == loaded.meta.checkpoint_sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert loaded.meta.extra["iteration"] == 120
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.semantic_logits(x), loaded.semantic_logits(x))


def test_fp16_file_is_smaller_and_loads_as_close_fp32(tmp_path) -> None:
    model = _tiny()
    full, half = str(tmp_path / "f.pt"), str(tmp_path / "h.pt")
    save_checkpoint(full, model)
    save_checkpoint(half, model, half=True)
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.semantic_logits(x), model.semantic_logits(x), rtol=2e-2, atol=2e-3)


def test_wrong_arch_or_class_count_is_refused_with_the_fix(tmp_path) -> None:
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, _tiny(num_classes=4))
    with pytest.raises(UserError, match="ds2a_tiny.*expected ds2a_r18"):
        load_model(path, arch="r18")
    with pytest.raises(UserError, match="4 classes, expected 2"):
        load_model(path, num_classes=2)
    with pytest.raises(UserError, match="4 classes, expected 2"):
        load_weights(build_model("ds2a_tiny", num_classes=2, decoder_layers=2), path)
    with pytest.raises(UserError, match="expected ds2a_r18"):
        load_weights(_light(18), path)


def test_load_weights_into_an_existing_model(tmp_path) -> None:
    src, dst = _tiny(seed=1), _tiny(seed=2)
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, src, extra={"iteration": 7})
    assert load_weights(dst, path)["iteration"] == 7
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_foreign_files_are_refused(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "nope.pt"))
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a readable ds2a checkpoint"):
        load_model(str(text))
    other = str(tmp_path / "other.pt")
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="not a ds2a checkpoint"):
        load_model(other)
    mmseg = str(tmp_path / "mmseg.pth")
    torch.save({"meta": {}, "state_dict": {"decode_head.cls_embed.weight": torch.zeros(5, 4)}}, mmseg)
    with pytest.raises(UserError, match="convert-official"):
        load_model(mmseg)


def test_damaged_state_dict_names_the_keys(tmp_path) -> None:
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, _tiny())
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["head.cls_embed.bias"]
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="missing: head.cls_embed.bias"):
        load_model(path)


def test_meta_class_count_must_match_the_model(tmp_path) -> None:
    with pytest.raises(UserError, match="classes"):
        save_checkpoint(str(tmp_path / "m.pt"), _tiny(num_classes=4), ModelMeta(arch="ds2a_tiny", classes=["a", "b"]))


def _light(depth: int):
    """A standard-width ResNet backbone under a deliberately small head (fast to build)."""
    return build_model(f"ds2a_r{depth}", hidden_dim=64, encoder_layers=1, decoder_layers=1, num_queries=4)


def _torchvision_like_state(depth: int) -> dict:
    """A random ResNet state dict with torchvision's names, including the ImageNet classifier."""
    backbone = ResNet(depth)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in backbone.state_dict().items()}
    feat = 2048 if depth == 50 else 512
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, feat), torch.randn(1000)
    return state


def test_torchvision_resnet18_weights_load_into_the_backbone(tmp_path) -> None:
    state = _torchvision_like_state(18)
    # names and shapes as in torchvision's resnet18 state dict
    for key, shape in {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 3, 3),
                       "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer2.0.downsample.1.running_var": (128,),
                       "layer4.1.bn2.weight": (512,)}.items():
        assert tuple(state[key].shape) == shape
    path = str(tmp_path / "resnet18.pth")
    torch.save(state, path)
    model = _light(18)
    ignored = load_backbone_weights(model, path)
    assert ignored == ["fc.bias", "fc.weight"]
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own)


def test_torchvision_resnet50_names_match_the_bottleneck_backbone() -> None:
    state = _torchvision_like_state(50)
    assert tuple(state["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert tuple(state["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert tuple(state["layer3.5.bn3.running_mean"].shape) == (1024,)


def test_backbone_weights_of_another_shape_are_refused(tmp_path) -> None:
    path = str(tmp_path / "resnet18.pth")
    torch.save(_torchvision_like_state(18), path)
    with pytest.raises(UserError, match="width 32"):
        load_backbone_weights(build_model("ds2a_tiny"), path)
    with pytest.raises(UserError, match="not a ResNet-50"):
        load_backbone_weights(_light(50), path)
    with pytest.raises(UserError, match="do not exist"):
        load_backbone_weights(build_model("ds2a_tiny"), str(tmp_path / "missing.pth"))
