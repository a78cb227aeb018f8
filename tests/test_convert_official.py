"""Official mmsegmentation checkpoints -> ours: renaming, dropped unused keys, strict loading, clear errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.model import build_model, load_model, save_checkpoint
from ds2a.model.convert import (
    convert_official_checkpoint,
    convert_official_state_dict,
    official_unused_parameters,
    ours_to_official,
)

SMALL = {"num_classes": 4, "decoder_layers": 2, "encoder_layers": 1, "num_queries": 16}


def _official_state(model, seed: int = 0) -> tuple:
    """An official-format state dict for `model`, random unused official tensors included."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in ours_to_official(model.state_dict()).items()}
    unused = {k: torch.randn(s, generator=gen) for k, s in official_unused_parameters(model.config).items()}
    state.update(unused)
    return state, sorted(unused)


def _model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = build_model("ds2a_tiny", **{**SMALL, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def test_official_names_are_the_mmseg_ones() -> None:
    with torch.device("meta"):
        model = build_model("ds2a_r18")
    names = set(ours_to_official(model.state_dict()))
    for key in ("backbone.layer2.0.downsample.1.running_mean",
                "decode_head.pixel_decoder.input_convs.0.conv.bias", "decode_head.pixel_decoder.input_convs.2.gn.weight",
                "decode_head.pixel_decoder.encoder.layers.5.self_attn.sampling_offsets.weight",
                "decode_head.pixel_decoder.encoder.layers.0.ffn.layers.0.0.weight",
                "decode_head.pixel_decoder.encoder.layers.0.norms.1.bias", "decode_head.pixel_decoder.level_encoding.weight",
                "decode_head.pixel_decoder.lateral_convs.0.conv.weight", "decode_head.pixel_decoder.output_convs.0.gn.bias",
                "decode_head.pixel_decoder.mask_feature.weight", "decode_head.dssca3.transconv.weight",
                "decode_head.dssca1.conv1.weight", "decode_head.transformer_decoder.layers.8.cross_attn.attn.in_proj_weight",
                "decode_head.transformer_decoder.layers.0.cross_attn.attn.out_proj.bias",
                "decode_head.transformer_decoder.layers.0.norms.2.weight",
                "decode_head.transformer_decoder.layers.0.ffn.layers.1.weight",
                "decode_head.transformer_decoder.layers.0.DQGSA.pwconv1_1.weight",
                "decode_head.transformer_decoder.layers.0.DQGSA.gamma1", "decode_head.transformer_decoder.layers.0.DQGSA.conv3.weight",
                "decode_head.transformer_decoder.post_norm.weight", "decode_head.query_embed.weight",
                "decode_head.query_feat.weight", "decode_head.level_embed.weight", "decode_head.cls_embed.bias",
                "decode_head.mask_embed.4.weight"):
        assert key in names, key


@pytest.mark.parametrize("name,total", [("ds2a_r18", 48_067_310), ("ds2a_r50", 61_136_110)])
def test_official_file_sizes_match_the_published_totals(name: str, total: int) -> None:
    with torch.device("meta"):
        model = build_model(name)
    official = {k: v for k, v in ours_to_official(model.state_dict()).items() if k.endswith(("weight", "bias", "gamma1"))}
    counted = sum(v.numel() for k, v in official.items() if "running" not in k)
    counted += sum(math.prod(s) for s in official_unused_parameters(model.config).values())
    assert counted == total


def test_state_dict_conversion_round_trips_and_reports_dropped_keys() -> None:
    model = _model()
    state, unused = _official_state(model)
    ours, dropped = convert_official_state_dict(state, model.config)
    assert dropped == unused and len(dropped) == 8 * model.config.decoder_layers
    own = model.state_dict()
    assert set(ours) == set(own) and all(torch.equal(ours[k], own[k]) for k in own)
    prefixed = {f"module.{k}": v for k, v in state.items()}  # DDP-saved files
    assert set(convert_official_state_dict(prefixed, model.config)[0]) == set(own)


def test_checkpoint_file_converts_to_an_equivalent_model(tmp_path) -> None:
    model = _model()
    state, unused = _official_state(model)
    src, dst = str(tmp_path / "official.pth"), str(tmp_path / "ours.pt")
    # mmengine files carry training meta with numpy objects; those need the full unpickler
    torch.save({"meta": {"seed": np.int64(0), "dataset_meta": {"classes": ("a",)}}, "state_dict": state}, src)
    report = convert_official_checkpoint(src, dst, "ds2a_tiny", **{k: v for k, v in SMALL.items() if k != "num_classes"})
    assert report.num_classes == 4 and report.dropped == unused
    assert "dropped 16 unused official tensors: DQGSA.norm2 x4, DQGSA.transconv x4, self_attn x8" in report.lines()
    loaded = load_model(dst)
    assert loaded.meta.classes == ["background", "damage", "smudge", "dust"]  # the file's names do not fit 4 classes
    assert loaded.meta.extra["source"] == "official" and loaded.meta.extra["source_sha256"] == report.source_sha256
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded.semantic_logits(x), model.semantic_logits(x))


def test_class_names_come_from_the_option_or_the_file(tmp_path) -> None:
    model = _model(num_classes=2)
    state, _ = _official_state(model)
    src = str(tmp_path / "official.pth")
    torch.save({"meta": {"dataset_meta": {"classes": ("road", "crack")}}, "state_dict": state}, src)
    small = {k: v for k, v in SMALL.items() if k != "num_classes"}
    convert_official_checkpoint(src, str(tmp_path / "a.pt"), "ds2a_tiny", **small)
    assert load_model(str(tmp_path / "a.pt")).meta.classes == ["road", "crack"]
    convert_official_checkpoint(src, str(tmp_path / "b.pt"), "ds2a_tiny", classes=["bg", "defect"], **small)
    assert load_model(str(tmp_path / "b.pt")).meta.classes == ["bg", "defect"]


def test_missing_keys_are_named() -> None:
    model = _model()
    state, _ = _official_state(model)
    del state["decode_head.transformer_decoder.layers.1.DQGSA.gamma1"]
    del state["decode_head.pixel_decoder.mask_feature.bias"]
    with pytest.raises(UserError, match=r"missing 2 key\(s\): pixel_decoder.mask_feature.bias, "
                                        r"transformer_decoder.layers.1.dqgsa.gamma"):
        convert_official_state_dict(state, model.config)


def test_unknown_and_misshaped_keys_are_named() -> None:
    model = _model()
    state, _ = _official_state(model)
    state["decode_head.conv_seg.weight"] = torch.zeros(4, 4)
    with pytest.raises(UserError, match="unknown key.*decode_head.conv_seg.weight"):
        convert_official_state_dict(state, model.config)
    state, _ = _official_state(model)
    with pytest.raises(UserError, match="wrong shape.*head.cls_embed.weight"):
        convert_official_state_dict(state, build_model("ds2a_tiny", **{**SMALL, "num_classes": 2}).config)


def _write_official(tmp_path, depth: int = 18) -> str:
    with torch.device("meta"):
        model = build_model(f"ds2a_r{depth}")
    shapes = {k: (v.shape, v.dtype) for k, v in ours_to_official(model.state_dict()).items()}
    base = torch.zeros(max(math.prod(s) for s, _ in shapes.values()))  # one shared storage keeps the file small
    state = {k: base[:math.prod(s)].view(s).to(dt) for k, (s, dt) in shapes.items()}
    path = str(tmp_path / f"official_r{depth}.pth")
    torch.save({"meta": {}, "state_dict": state}, path)
    return path


@pytest.mark.slow
def test_cli_converts_and_reports(tmp_path, capsys) -> None:
    src, dst = _write_official(tmp_path), str(tmp_path / "r18.pt")
    assert main(["convert-official", src, dst, "--arch", "r18", "--half"]) == 0
    out = capsys.readouterr().out
    assert "ds2a_r18, 4 classes" in out and "dropped 0 unused" in out
    assert load_model(dst).config.name == "ds2a_r18"


def test_wrong_arch_and_class_count_are_refused(tmp_path, capsys) -> None:
    src = _write_official(tmp_path)
    assert main(["convert-official", src, str(tmp_path / "x.pt"), "--arch", "r50"]) == 2
    assert "use --arch r18" in capsys.readouterr().err
    with pytest.raises(UserError, match="4 classes, not 3; use --num-classes 4"):
        convert_official_checkpoint(src, str(tmp_path / "x.pt"), "r18", num_classes=3)
    with pytest.raises(UserError, match="2 class names"):
        convert_official_checkpoint(src, str(tmp_path / "x.pt"), "r18", classes=["a", "b"])


def test_files_that_are_not_official_checkpoints_are_refused(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        convert_official_checkpoint(str(tmp_path / "none.pth"), str(tmp_path / "x.pt"), "r18")
    ours = str(tmp_path / "ours.pt")
    save_checkpoint(ours, _model())
    with pytest.raises(UserError, match="already a ds2a checkpoint"):
        convert_official_checkpoint(ours, str(tmp_path / "x.pt"), "r18")
    backbone_only = str(tmp_path / "resnet.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, backbone_only)
    with pytest.raises(UserError, match="not a DS2A-Former"):
        convert_official_checkpoint(backbone_only, str(tmp_path / "x.pt"), "r18")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a pickle")
    with pytest.raises(UserError, match="cannot read"):
        convert_official_checkpoint(str(garbage), str(tmp_path / "x.pt"), "r18")
