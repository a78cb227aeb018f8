"""Our DS2A-Former against the official mmsegmentation implementation, without the official code.

tests/fixtures/official/ holds a checkpoint written by the official code (small configuration,
random weights), the official semantic logits for three input sizes, and the state-dict key lists
of the official R18/R50 models; README.md there says how they were made. Acceptance:
our `semantic_logits` after conversion equals the official logits within 1e-4 relative
error (max |ours - official| / max |official|).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ds2a.errors import UserError
from ds2a.model import DS2AFormer, get_config, load_model
from ds2a.model.convert import (
    convert_official_checkpoint,
    convert_official_state_dict,
    read_official_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures" / "official"
SIZES = ["64x64", "96x128", "128x96"]
TOLERANCE = 1e-4
# Official parameter totals (every parameter, unused ones included) and ours after dropping
# the unused decoder self_attn / DQGSA transconv / DQGSA norm2 (docs/ARCHITECTURE.md, "The model").
OFFICIAL_TOTAL = {"r18": 48_067_310, "r50": 61_136_110}
OURS_TOTAL = {"r18": 40_383_470, "r50": 53_452_270}
UNUSED = re.compile(r"^decode_head\.transformer_decoder\.layers\.\d+\.(self_attn\.|DQGSA\.transconv\.|DQGSA\.norm2\.)")
BUFFER = re.compile(r"\.(running_mean|running_var|num_batches_tracked)$")

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"official fixtures not found at {FIXTURES}")


def _fixture_config():
    fields = json.loads((FIXTURES / "config.json").read_text())
    return fields, get_config("ds2a_r18", **fields)


@pytest.fixture(scope="module")
def converted_model() -> DS2AFormer:
    _, config = _fixture_config()
    state, dropped = convert_official_state_dict(read_official_checkpoint(str(FIXTURES / "checkpoint.pth")), config)
    assert len(dropped) == 8 * config.decoder_layers  # self_attn (4) + transconv (2) + norm2 (2) per layer
    model = DS2AFormer(config).eval()
    model.load_state_dict(state, strict=True)
    return model


def _relative_error(model: DS2AFormer, size: str) -> tuple[float, float]:
    x = torch.from_numpy(np.load(FIXTURES / f"inputs_{size}.npy"))
    expected = np.load(FIXTURES / f"expected_{size}.npy")
    with torch.no_grad():
        ours = model.semantic_logits(x).numpy()
    assert ours.shape == expected.shape
    scale = float(np.abs(expected).max())
    return float(np.abs(ours - expected).max()) / scale, scale


@pytest.mark.parametrize("size", SIZES)
def test_semantic_logits_match_official(converted_model: DS2AFormer, size: str) -> None:
    err, scale = _relative_error(converted_model, size)
    print(f"official parity {size}: max relative error {err:.3e} (max |logit| {scale:.3f})")
    assert err <= TOLERANCE, f"{size}: max relative error {err:.3e} > {TOLERANCE}"


def test_every_prediction_head_matches_official(converted_model: DS2AFormer) -> None:
    """Deep supervision: `forward` gives the official (cls, mask) logits after every decoder stage."""
    x = torch.from_numpy(np.load(FIXTURES / "inputs_64x64.npy"))
    expected = np.load(FIXTURES / "expected_preds_64x64.npz")
    with torch.no_grad():
        preds = converted_model(x)
    assert len(preds) == converted_model.config.decoder_layers + 1 == len(expected.files) // 2
    for i, (cls, mask) in enumerate(preds):
        for name, ours in (("cls", cls), ("mask", mask)):
            want = expected[f"{name}_{i}"]
            assert tuple(ours.shape) == want.shape
            err = float(np.abs(ours.numpy() - want).max() / np.abs(want).max())
            assert err <= TOLERANCE, f"prediction {i} {name}: max relative error {err:.3e}"


def test_fixture_notices_a_wrong_weight(converted_model: DS2AFormer) -> None:
    """The comparison is sensitive: silencing DQGSA (gamma = 0) must break parity clearly."""
    gammas = [layer.dqgsa.gamma for layer in converted_model.transformer_decoder.layers]
    saved = [g.detach().clone() for g in gammas]
    try:
        with torch.no_grad():
            for g in gammas:
                g.zero_()
        err, _ = _relative_error(converted_model, SIZES[0])
    finally:
        with torch.no_grad():
            for g, s in zip(gammas, saved):
                g.copy_(s)
    assert err > 100 * TOLERANCE


def test_convert_official_file_then_load_model(tmp_path: Path) -> None:
    """The file-level path (`ds2a convert-official`) gives the same logits through load_model."""
    fields, config = _fixture_config()
    overrides = {k: v for k, v in fields.items() if k not in ("backbone_depth", "num_classes")}
    out = tmp_path / "converted.pt"
    report = convert_official_checkpoint(str(FIXTURES / "checkpoint.pth"), str(out), arch="r18", **overrides)
    assert report.num_classes == config.num_classes
    assert len(report.dropped) == 8 * config.decoder_layers
    model = load_model(str(out))
    assert model.config.num_classes == config.num_classes
    err, _ = _relative_error(model, "96x128")
    assert err <= TOLERANCE


def _official_keys(arch: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads((FIXTURES / f"{arch}_keys.json").read_text()).items()}


def _meta_state(keys: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Shape-only tensors (no memory) standing in for a real official checkpoint."""
    def dtype(key: str) -> torch.dtype:
        return torch.long if key.endswith("num_batches_tracked") else torch.float32

    return {k: torch.empty(shape, device="meta", dtype=dtype(k)) for k, shape in keys.items()}


@pytest.mark.parametrize("arch", ["r18", "r50"])
def test_every_official_key_converts_with_the_right_shape(arch: str) -> None:
    keys = _official_keys(arch)
    official_params = sum(int(np.prod(s)) for k, s in keys.items() if not BUFFER.search(k))
    assert official_params == OFFICIAL_TOTAL[arch]  # the key list is the real official model
    config = get_config(f"ds2a_{arch}")
    state, dropped = convert_official_state_dict(_meta_state(keys), config)
    assert sorted(dropped) == sorted(k for k in keys if UNUSED.match(k))
    with torch.device("meta"):
        ours = DS2AFormer(config)
    own = ours.state_dict()
    assert set(state) == set(own)
    assert all(tuple(state[k].shape) == tuple(own[k].shape) for k in own)
    assert sum(p.numel() for p in ours.parameters()) == OURS_TOTAL[arch]
    converted_params = sum(v.numel() for k, v in state.items() if not BUFFER.search(k))
    assert converted_params == OURS_TOTAL[arch]


@pytest.mark.parametrize("arch", ["r18", "r50"])
def test_official_state_missing_a_key_is_rejected(arch: str) -> None:
    keys = _official_keys(arch)
    victim = "decode_head.transformer_decoder.layers.3.DQGSA.conv2.weight"
    del keys[victim]
    with pytest.raises(UserError, match="dqgsa.proj.weight"):
        convert_official_state_dict(_meta_state(keys), get_config(f"ds2a_{arch}"))


def test_official_state_with_wrong_shape_is_rejected() -> None:
    keys = _official_keys("r18")
    keys["decode_head.cls_embed.weight"] = (7, 256)  # 6 classes + no-object, config says 4
    with pytest.raises(UserError, match="wrong shape"):
        convert_official_state_dict(_meta_state(keys), get_config("ds2a_r18"))
