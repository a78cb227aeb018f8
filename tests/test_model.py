"""DS2A-Former network: sizes of the official variants, shapes, official semantic inference, training hooks."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F

from ds2a.errors import UserError
from ds2a.model import MODEL_CONFIGS, DS2AFormer, build_model, get_config
from ds2a.model.convert import official_unused_parameters
from ds2a.model.decoder import attention_mask
from ds2a.model.ms_deform_attn import deformable_sample
from ds2a.model.positional_encoding import sine_position_encoding

OFFICIAL_UNUSED = 7_683_840


def _count(name: str) -> tuple:
    with torch.device("meta"):
        model = build_model(name)
    ours = sum(p.numel() for p in model.parameters())
    unused = sum(math.prod(s) for s in official_unused_parameters(model.config).values())
    return ours, unused


@pytest.mark.parametrize("name,ours,official", [("ds2a_r18", 40_383_470, 48_067_310),
                                                ("ds2a_r50", 53_452_270, 61_136_110)])
def test_parameter_counts_equal_the_official_models(name: str, ours: int, official: int) -> None:
    count, unused = _count(name)
    assert count == ours
    assert unused == OFFICIAL_UNUSED and count + unused == official


def test_official_configs_use_the_paper_sizes() -> None:
    for name in ("ds2a_r18", "ds2a_r34", "ds2a_r50"):
        c = MODEL_CONFIGS[name]
        assert (c.hidden_dim, c.encoder_layers, c.decoder_layers, c.num_queries) == (256, 6, 9, 100)
        assert (c.encoder_heads, c.encoder_points, c.encoder_ffn, c.decoder_ffn, c.norm_groups) == (8, 4, 1024, 2048, 32)
        assert c.backbone_depth == int(name[-2:]) and c.backbone_width == 64


def test_tiny_is_small_with_a_square_query_grid() -> None:
    count, _ = _count("ds2a_tiny")
    cfg = MODEL_CONFIGS["ds2a_tiny"]
    assert count <= 6_000_000
    assert math.isqrt(cfg.num_queries) ** 2 == cfg.num_queries
    assert cfg.input_size == (256, 256)


@pytest.fixture(scope="module")
def tiny() -> DS2AFormer:
    torch.manual_seed(0)
    return build_model("ds2a_tiny").eval()


@pytest.mark.parametrize("hw", [(64, 64), (64, 96), (96, 64), (128, 160)])
def test_forward_returns_one_prediction_per_head_at_stride_4(tiny: DS2AFormer, hw: tuple) -> None:
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        preds = tiny(x)
    cfg = tiny.config
    assert len(preds) == cfg.decoder_layers + 1
    for cls, masks in preds:
        assert cls.shape == (2, cfg.num_queries, cfg.num_classes + 1)
        assert masks.shape == (2, cfg.num_queries, hw[0] // 4, hw[1] // 4)
        assert torch.isfinite(cls).all() and torch.isfinite(masks).all()


def test_semantic_logits_follow_the_official_formula(tiny: DS2AFormer) -> None:
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        cls, masks = tiny(x)[-1]
        sem = tiny.semantic_logits(x)
    assert sem.shape == (1, tiny.config.num_classes, 64, 96)
    up = F.interpolate(masks, size=(64, 96), mode="bilinear", align_corners=False).sigmoid()
    probs = cls.softmax(-1)
    expected = sum(probs[0, q, :-1, None, None] * up[0, q] for q in range(cls.shape[1]))
    torch.testing.assert_close(sem[0], expected, rtol=1e-5, atol=1e-6)
    assert float(sem.min()) >= 0.0 and float(sem.max()) <= cls.shape[1]


def test_batch_items_are_independent(tiny: DS2AFormer) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        both = tiny.semantic_logits(x)
        second = tiny.semantic_logits(x[1:])
    torch.testing.assert_close(both[1:], second, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_every_registered_model_runs() -> None:
    x = torch.randn(1, 3, 64, 64)
    for name in MODEL_CONFIGS:
        model = build_model(name, num_classes=2).eval()
        with torch.no_grad():
            assert model.semantic_logits(x).shape == (1, 2, 64, 64)


def test_backward_reaches_trainable_weights_but_not_frozen_bn() -> None:
    torch.manual_seed(0)
    model = build_model("ds2a_tiny", decoder_layers=2).train()
    preds = model(torch.randn(2, 3, 64, 64))
    loss = sum(cls.logsumexp(-1).mean() + masks.sigmoid().mean() for cls, masks in preds)
    loss.backward()
    bn_params = [p for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    assert bn_params and all(not p.requires_grad and p.grad is None for p in bn_params)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters outside the graph break DDP: {no_grad}"
    for name in ("backbone.conv1.weight", "pixel_decoder.layers.0.attn.sampling_offsets.weight",
                 "dssca1.up.weight", "transformer_decoder.layers.0.dqgsa.gamma", "query_feat.weight", "head.cls_embed.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_input_size_must_be_a_multiple_of_32(tiny: DS2AFormer) -> None:
    with pytest.raises(UserError, match="multiple of 32"):
        tiny(torch.randn(1, 3, 64, 80))


def test_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match="ds2a_tiny.*ds2a_r18.*ds2a_r34.*ds2a_r50"):
        build_model("ds2a_r101")


def test_config_overrides_are_checked() -> None:
    assert get_config("ds2a_tiny", num_classes=2, num_queries=36).num_queries == 36
    assert build_model("r18", num_classes=7).head.cls_embed.out_features == 8
    with pytest.raises(UserError, match="perfect square"):
        get_config("ds2a_tiny", num_queries=30)
    with pytest.raises(UserError, match="unknown model option"):
        get_config("ds2a_tiny", hidden=64)


def test_attention_mask_blocks_negative_logits_and_releases_empty_rows() -> None:
    logits = torch.full((1, 2, 4, 4), -1.0)
    logits[0, 0, :2, :2] = 1.0  # query 0 sees the top-left quarter; query 1 sees nothing
    blocked = attention_mask(logits, (2, 2))
    assert blocked.shape == (1, 2, 4)
    assert blocked[0, 0].tolist() == [False, True, True, True]
    assert blocked[0, 1].tolist() == [False, False, False, False]


def _layer_by_layer(model: DS2AFormer, x: torch.Tensor) -> list:
    """The masked-attention loop written out from the modules (what DS2AFormer.forward did before
    the decoder ran its own layers): the reference for the decoder's forward."""
    b, c = x.shape[0], model.config.hidden_dim
    mask_features, mem = model.pixel_decoder(model.backbone(x))
    mem[1] = model.dssca1(mem[0], mem[1])
    mem[2] = model.dssca2(mem[1], mem[2])
    mask_features = model.dssca3(mem[2], mask_features)
    memories, memory_pos, sizes = [], [], []
    for i, m in enumerate(mem):
        h, w = int(m.shape[-2]), int(m.shape[-1])
        memories.append(m.flatten(2).transpose(1, 2) + model.level_embed.weight[i].view(1, 1, -1))
        memory_pos.append(sine_position_encoding(h, w, c // 2, m).flatten(2).transpose(1, 2).expand(b, -1, -1))
        sizes.append((h, w))
    q = model.query_feat.weight.unsqueeze(0).expand(b, -1, -1)
    q_pos = model.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
    post_norm = model.transformer_decoder.post_norm
    preds = [model.head(post_norm(q), mask_features)]
    for i, layer in enumerate(model.transformer_decoder.layers):
        mask = attention_mask(preds[-1][1], sizes[i % 3])
        q = layer(q, q_pos, memories[i % 3], memory_pos[i % 3], mask)
        preds.append(model.head(post_norm(q), mask_features))
    return preds


@pytest.mark.parametrize("train", [False, True])
def test_decoder_forward_equals_the_layer_by_layer_loop_bit_for_bit(train: bool) -> None:
    torch.manual_seed(0)
    model = build_model("ds2a_tiny", backbone_width=16, hidden_dim=32, encoder_layers=1, encoder_heads=2,
                        encoder_ffn=64, decoder_layers=4, decoder_heads=2, decoder_ffn=64, num_queries=4,
                        norm_groups=8).train(train)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got, want = model(x), _layer_by_layer(model, x)
    assert len(got) == len(want) == 5
    for (cls, masks), (ref_cls, ref_masks) in zip(got, want):
        assert torch.equal(cls, ref_cls) and torch.equal(masks, ref_masks)


def test_dqgsa_lays_queries_out_row_major() -> None:
    model = build_model("ds2a_tiny", decoder_layers=1)
    dq = model.transformer_decoder.layers[0].dqgsa
    side = model.config.query_grid
    q = torch.arange(model.config.num_queries, dtype=torch.float32)[None, :, None].expand(1, -1, dq.dim)
    grid = dq._grid(q)
    assert grid[0, 0, 1, 2] == 1 * side + 2


def _bilinear_zero_pad(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Reference bilinear sample of img (C, H, W) at normalised (x, y), align_corners=False, zero padding."""
    c, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(c)
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
        if 0 <= xi < w and 0 <= yi < h:
            out += wgt * img[:, yi, xi]
    return out


def test_deformable_sampling_matches_a_direct_bilinear_sum() -> None:
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    b, heads, d, q, points = 1, 2, 3, 5, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, d)
    loc = torch.rand(b, q, heads, len(shapes), points, 2) * 1.4 - 0.2  # some points fall outside
    wts = torch.rand(b, q, heads, len(shapes), points)
    out = deformable_sample(value, shapes, loc, wts)
    assert out.shape == (b, q, heads * d)
    starts = [0, shapes[0][0] * shapes[0][1]]
    for qi in range(q):
        for hd in range(heads):
            acc = torch.zeros(d)
            for lvl, (h, w) in enumerate(shapes):
                img = value[0, starts[lvl]:starts[lvl] + h * w, hd].T.reshape(d, h, w)
                for p in range(points):
                    x, y = loc[0, qi, hd, lvl, p].tolist()
                    acc += wts[0, qi, hd, lvl, p] * _bilinear_zero_pad(img, x, y)
            torch.testing.assert_close(out[0, qi, hd * d:(hd + 1) * d], acc, rtol=1e-5, atol=1e-5)


def test_positional_encoding_matches_the_detr_formula() -> None:
    h, w, f = 3, 5, 8
    pos = sine_position_encoding(h, w, f, torch.zeros(1))
    assert pos.shape == (1, 2 * f, h, w)
    yy, xx, k = 2, 4, 3  # row 3 of 3, column 5 of 5, feature 3 (odd -> cos)
    y_norm = (yy + 1) / (h + 1e-6) * 2 * math.pi
    x_norm = (xx + 1) / (w + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (k // 2) / f)
    assert float(pos[0, k, yy, xx]) == pytest.approx(math.cos(y_norm / dim_t), abs=1e-5)
    assert float(pos[0, f + k - 1, yy, xx]) == pytest.approx(math.sin(x_norm / (10000 ** (2 * ((k - 1) // 2) / f))), abs=1e-5)
