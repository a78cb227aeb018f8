"""Shared lead-owned helpers: preprocessing, metadata, timing statistics and the CLI front door."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ds2a.cli import COMMANDS, main
from ds2a.errors import UserError
from ds2a.meta import MBSD_CLASSES, ModelMeta, parse_size
from ds2a.preprocess import class_map_to_frame, normalize, resize_frame, to_bgr
from ds2a.timing import Stopwatch, summarize


def test_normalize_matches_per_pixel_formula() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    out = normalize(frame)
    assert out.shape == (1, 3, 4, 6) and out.dtype == np.float32
    # channel 0 of the output is RED = channel 2 of the BGR frame
    expected_r = (frame[2, 3, 2] - 123.675) / 58.395
    expected_b = (frame[2, 3, 0] - 103.53) / 57.375
    assert out[0, 0, 2, 3] == pytest.approx(expected_r, rel=1e-6)
    assert out[0, 2, 2, 3] == pytest.approx(expected_b, rel=1e-6)


def test_to_bgr_converts_gray_bgra_and_uint16() -> None:
    gray = np.full((5, 7), 100, np.uint8)
    assert to_bgr(gray).shape == (5, 7, 3)
    bgra = np.zeros((5, 7, 4), np.uint8)
    bgra[..., 2] = 9
    assert to_bgr(bgra)[0, 0, 2] == 9 and to_bgr(bgra).shape == (5, 7, 3)
    deep = np.full((3, 3), 0x4000, np.uint16)
    assert to_bgr(deep)[0, 0, 0] == 0x40
    with pytest.raises(ValueError, match="shape"):
        to_bgr(np.zeros((2, 2, 2, 2), np.uint8))


def test_resize_frame_and_class_map_roundtrip() -> None:
    frame = np.zeros((720, 1280, 3), np.uint8)
    small = resize_frame(frame, (256, 320))
    assert small.shape == (256, 320, 3)
    same = np.zeros((256, 320, 3), np.uint8)
    assert resize_frame(same, (256, 320)) is same  # no copy when it already fits
    cmap = np.zeros((256, 320), np.uint8)
    cmap[:128] = 3
    big = class_map_to_frame(cmap, (720, 1280))
    assert big.shape == (720, 1280) and set(np.unique(big)) == {0, 3}


def test_model_meta_json_roundtrip_and_default_palette() -> None:
    meta = ModelMeta(arch="ds2a_tiny", classes=list(MBSD_CLASSES) + ["scratch"], input_size=(128, 256))
    assert len(meta.palette) == 5 and len(set(meta.palette)) == 5
    again = ModelMeta.from_json(meta.to_json())
    assert again == meta and again.num_classes == 5


def test_parse_size() -> None:
    assert parse_size("512") == (512, 512)
    assert parse_size("256x320") == (256, 320)
    with pytest.raises(UserError, match="HxW"):
        parse_size("big")


def test_summarize_percentiles_on_known_distribution() -> None:
    s = summarize(range(1, 101))
    assert s["count"] == 100 and s["min"] == 1 and s["max"] == 100
    assert s["median"] == pytest.approx(50.5)
    assert s["p99"] == pytest.approx(99.01)
    assert summarize([])["count"] == 0
    sw = Stopwatch()
    with sw.stage("infer"):
        pass
    sw.add("infer", 5.0)
    assert sw.summary()["infer"]["count"] == 2
    assert "infer" in sw.table()


def test_cli_unknown_command_lists_valid_ones(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "inspect" in err


def test_every_registered_command_has_a_module_with_the_interface() -> None:
    import importlib

    for verb, (module_name, _, _) in COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(getattr(module, "add_arguments")), verb
        assert callable(getattr(module, "run")), verb


def test_import_ds2a_does_not_import_torch() -> None:
    code = "import sys, ds2a, ds2a.cli, ds2a.preprocess; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
