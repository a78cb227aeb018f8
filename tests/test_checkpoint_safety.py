"""No checkpoint file runs code: every torch.load is weights-only unless the user passes --trust-checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.model import build_model, load_model
from ds2a.model.checkpoint import load_backbone_weights, read_checkpoint
from ds2a.model.convert import convert_official_checkpoint, ours_to_official

SMALL = {"num_classes": 4, "decoder_layers": 2, "encoder_layers": 1, "num_queries": 16}


class _Payload:
    """Unpickling this opens (so creates) `path`: stands for any code a crafted .pth would run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _official_state() -> dict:
    torch.manual_seed(0)
    return ours_to_official(build_model("ds2a_tiny", **SMALL).state_dict())


def _crafted(tmp_path, name: str = "evil.pth", **extra) -> tuple:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / name
    torch.save({"meta": {"hook": _Payload(str(marker))}, "state_dict": _official_state(), **extra}, str(path))
    return str(path), marker


def test_convert_official_refuses_a_crafted_file_and_names_the_blocking_global(tmp_path) -> None:
    src, marker = _crafted(tmp_path)
    with pytest.raises(UserError, match=r"io\.open.*--trust-checkpoint"):
        convert_official_checkpoint(src, str(tmp_path / "out.pt"), "ds2a_tiny", decoder_layers=2,
                                    encoder_layers=1, num_queries=16)
    assert not marker.exists()
    assert not (tmp_path / "out.pt").exists()


def test_cli_refuses_without_the_flag_and_its_help_states_the_risk(tmp_path, capsys) -> None:
    src, marker = _crafted(tmp_path)
    assert main(["convert-official", src, str(tmp_path / "out.pt"), "--arch", "r18"]) == 2
    err = capsys.readouterr().err
    assert "io.open" in err and "--trust-checkpoint" in err and "Traceback" not in err
    assert not marker.exists()
    with pytest.raises(SystemExit):
        main(["convert-official", "--help"])
    assert "arbitrary code" in capsys.readouterr().out


def test_trust_checkpoint_is_the_only_way_to_full_unpickling(tmp_path, caplog) -> None:
    src, marker = _crafted(tmp_path)
    convert_official_checkpoint(src, str(tmp_path / "out.pt"), "ds2a_tiny", trust_checkpoint=True,
                                decoder_layers=2, encoder_layers=1, num_queries=16)
    assert marker.exists()  # the payload ran: exactly what the flag warns about
    assert "fully unpickling" in caplog.text


def test_numpy_training_meta_loads_safely_without_the_flag(tmp_path, capsys) -> None:
    src = tmp_path / "official.pth"
    meta = {"seed": np.int64(3), "hist": np.arange(4.0), "dataset_meta": {"classes": ("a", "b", "c", "d")}}
    torch.save({"meta": meta, "state_dict": _official_state()}, str(src))
    convert_official_checkpoint(str(src), str(tmp_path / "out.pt"), "ds2a_tiny", decoder_layers=2,
                                encoder_layers=1, num_queries=16)
    assert load_model(str(tmp_path / "out.pt")).meta.classes == ["a", "b", "c", "d"]
    assert "unpickling" not in capsys.readouterr().err


def test_ds2a_checkpoints_and_backbone_weights_never_unpickle_code(tmp_path) -> None:
    src, marker = _crafted(tmp_path, "ours.pt", format="ds2a-checkpoint", version=1)
    with pytest.raises(UserError, match="not a readable ds2a checkpoint"):
        read_checkpoint(src)
    with pytest.raises(UserError, match="not a readable ds2a checkpoint"):
        load_model(src)
    model = build_model("ds2a_tiny", **SMALL)
    with pytest.raises(UserError, match="not a readable PyTorch weights file"):
        load_backbone_weights(model, src)
    assert not marker.exists()


def test_numpy_meta_loads_safely_in_a_fresh_process(tmp_path) -> None:
    import subprocess
    import sys

    src = tmp_path / "np.pth"
    torch.save({"meta": {"seed": np.int64(3), "hist": np.arange(3.0)}, "state_dict": {"decode_head.x": torch.zeros(1)}},
               str(src))
    proc = subprocess.run([sys.executable, "-m", "ds2a", "convert-official", str(src), str(tmp_path / "o.pt"),
                           "--arch", "r18"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not fit ds2a_r18" in proc.stderr, proc.stderr  # read, then checked
