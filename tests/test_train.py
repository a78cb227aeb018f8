"""`ds2a train`: end to end on a tiny synthetic set, checkpoints, resume, determinism, time limit, bad input."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from ds2a.cli import main  # noqa: E402
from ds2a.data import write_dataset  # noqa: E402
from ds2a.errors import UserError  # noqa: E402
from ds2a.train import TrainConfig, Trainer, train  # noqa: E402

# A very small DS2A-Former so a CPU step takes well under a second.
TINY = dict(backbone_width=16, hidden_dim=32, encoder_layers=1, encoder_heads=2, encoder_ffn=64,
            decoder_layers=1, decoder_heads=2, decoder_ffn=64, num_queries=4, norm_groups=8)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, 6, 3, size_hw=(64, 64), seed=0, n_val=2)
    return root


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(model="ds2a_tiny", data=str(data), out=str(out), iters=4, batch_size=2, crop=(64, 64),
                       eval_every=0, ckpt_every=2, log_every=1, workers=0, num_points=64, threads=1,
                       ratio_range=(0.8, 1.25), model_overrides=dict(TINY), progress=False, lr=1e-3)
    return replace(base, **kw)


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _rows(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_trains_evaluates_and_writes_a_loadable_checkpoint(synth: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import ds2a.model as model_pkg
    from ds2a import load_model

    original = model_pkg.build_model
    monkeypatch.setattr(model_pkg, "build_model", lambda name, **kw: original(name, **{**TINY, **kw}))
    out = tmp_path / "run"
    rc = main(["train", "--model", "ds2a_tiny", "--data", str(synth), "--out", str(out), "--iters", "3",
               "--batch-size", "2", "--crop", "64x64", "--eval-every", "2", "--ckpt-every", "2", "--log-every", "1",
               "--workers", "0", "--num-points", "64", "--quiet", "--seed", "1", "--threads", "1"])
    assert rc == 0
    rows = list(_rows(out / "eval.csv"))
    assert [r["iter"] for r in rows] == ["2", "3"]  # every 2 iterations and at the end
    assert all(0.0 <= float(r["mIoU"]) <= 1.0 for r in rows)
    train_rows = list(_rows(out / "train.csv"))
    assert [r["iter"] for r in train_rows] == ["1", "2", "3"] and float(train_rows[0]["loss"]) > 0
    kinds = [json.loads(line)["kind"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert kinds.count("eval") == 2 and kinds.count("train") == 3
    model = load_model(str(out / "best.pt"))
    assert model.meta.classes == ["background", "damage", "smudge", "dust"]
    assert tuple(model.meta.input_size) == (64, 64)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iter"] == 3 and summary["best_mIoU"] == max(float(r["mIoU"]) for r in rows)
    from ds2a.train.plot import plot_run

    png = Path(plot_run(str(out), str(tmp_path / "curve.png")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_weights_other_seed_differs(synth: Path, tmp_path: Path) -> None:
    train(_cfg(synth, tmp_path / "a", seed=3))
    train(_cfg(synth, tmp_path / "b", seed=3))
    train(_cfg(synth, tmp_path / "c", seed=4))
    a, b, c = (_weights(tmp_path / n / "last.pt") for n in "abc")
    assert _same(a, b)
    assert not _same(a, c)


def test_resume_continues_from_the_saved_iteration_exactly(synth: Path, tmp_path: Path) -> None:
    train(_cfg(synth, tmp_path / "full"))
    # stop after 2 of 4 iterations (iters=4 keeps the same lr schedule), then resume
    first = Trainer(_cfg(synth, tmp_path / "split"))
    first.cfg = replace(first.cfg, time_limit_min=1e-9)
    assert first.run()["iter"] == 1
    trainer = Trainer(_cfg(synth, tmp_path / "split", resume=True))
    assert trainer.start_iter == 1
    assert trainer.run()["iter"] == 4
    assert _same(_weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "split" / "last.pt"))
    iters = [int(r["iter"]) for r in _rows(tmp_path / "split" / "train.csv")]
    assert iters == [1, 2, 3, 4]


def test_time_limit_stops_cleanly_with_a_checkpoint(synth: Path, tmp_path: Path) -> None:
    summary = train(_cfg(synth, tmp_path / "t", iters=50, time_limit_min=1e-9, eval_every=25))
    assert summary["stopped_early"] and summary["iter"] == 1
    state = torch.load(tmp_path / "t" / "last.pt", weights_only=True)["extra"]["train_state"]
    assert state["iter"] == 1
    assert (tmp_path / "t" / "best.pt").exists()  # evaluated before stopping


def test_training_reduces_the_loss(synth: Path, tmp_path: Path) -> None:
    train(_cfg(synth, tmp_path / "fit", iters=30, lr=3e-3, ckpt_every=100, warmup_iters=0))
    losses = [float(r["loss"]) for r in _rows(tmp_path / "fit" / "train.csv")]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


@pytest.mark.parametrize("kw, match", [
    (dict(resume=True), "does not exist"),
    (dict(num_classes=3), "4 classes"),
    (dict(crop=(60, 64)), "multiples of 32"),
    (dict(model="ds2a_huge"), "valid names"),
    (dict(amp="fp16"), "CUDA"),
])
def test_bad_options_are_user_errors(synth: Path, tmp_path: Path, kw: dict, match: str) -> None:
    if kw.get("amp") and torch.cuda.is_available():
        pytest.skip("fp16 is allowed with a GPU")
    with pytest.raises(UserError, match=match):
        Trainer(_cfg(synth, tmp_path / "bad", **kw))


@pytest.mark.parametrize("kw, match", [
    (dict(crop=(64, 60)), "--crop 64x60: both sides must be multiples of 32"),
    (dict(input_size=(96, 100)), "--input-size 96x100: both sides must be multiples of 32"),
    (dict(batch_size=0), "--iters and --batch-size must be at least 1"),
    (dict(lr=float("inf")), "--lr inf must be a finite number"),
])
def test_a_config_is_checked_when_made_before_anything_is_read_or_written(tmp_path: Path, kw: dict,
                                                                           match: str) -> None:
    with pytest.raises(UserError, match=match):
        TrainConfig(model="ds2a_tiny", data=str(tmp_path / "no_data"), out=str(tmp_path / "o"), **kw)
    assert not (tmp_path / "o").exists()
    cfg = TrainConfig(model="ds2a_tiny", data=str(tmp_path / "no_data"), out=str(tmp_path / "o"))
    cfg.iters = 0  # assigned after construction: the trainer checks again before it starts
    with pytest.raises(UserError, match="at least 1"):
        Trainer(cfg)


def test_existing_run_needs_resume_and_empty_eval_split_is_explained(synth: Path, tmp_path: Path) -> None:
    train(_cfg(synth, tmp_path / "r", iters=1))
    with pytest.raises(UserError, match="--resume"):
        Trainer(_cfg(synth, tmp_path / "r"))
    with pytest.raises(UserError, match="--eval-every 0"):
        Trainer(_cfg(synth, tmp_path / "e", eval_every=1, eval_split="nosuchsplit"))


def test_resume_refuses_a_checkpoint_of_another_class_count(synth: Path, tmp_path: Path) -> None:
    from ds2a.model import build_model, save_checkpoint

    out = tmp_path / "other"
    out.mkdir()
    save_checkpoint(str(out / "last.pt"), build_model("ds2a_tiny", num_classes=2, **TINY),
                    extra={"train_state": {"iter": 1}})
    with pytest.raises(UserError, match="another model"):
        Trainer(_cfg(synth, out, resume=True))


@pytest.mark.parametrize("kw, match", [
    (dict(lr=float("nan")), "--lr nan must be a finite number"),
    (dict(lr=-1.0), "--lr -1.0 must be a finite number"),
    (dict(device="foo"), "--device 'foo' is not a device"),
])
def test_bad_numbers_and_devices_from_the_api_are_user_errors(synth: Path, tmp_path: Path, kw: dict,
                                                              match: str) -> None:
    with pytest.raises(UserError, match=match):
        Trainer(_cfg(synth, tmp_path / "bad", **kw))


@pytest.mark.parametrize("content", [b"", b"\x00garbage", b"PK\x03\x04 truncated zip"])
def test_resume_from_a_corrupt_last_pt_is_one_clear_error(synth: Path, tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(content)
    with pytest.raises(UserError, match=r"--resume: .*last\.pt.*delete it to start over"):
        Trainer(_cfg(synth, out, resume=True))


def test_an_all_ignore_eval_split_is_refused_before_training(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    for split in ("train", "test"):
        for i in range(2):
            (tmp_path / "d" / "img_dir" / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "d" / "ann_dir" / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / "d" / "img_dir" / split / f"{i}.png"), np.zeros((64, 64, 3), np.uint8))
            mask = np.full((64, 64), 255 if split == "test" else 1, np.uint8)
            cv2.imwrite(str(tmp_path / "d" / "ann_dir" / split / f"{i}.png"), mask)
    with pytest.raises(UserError, match="evaluation would score nothing"):
        Trainer(_cfg(tmp_path / "d", tmp_path / "out", eval_every=1, eval_split="test"))


def test_resume_on_a_dataset_with_reordered_classes_is_refused(synth: Path, tmp_path: Path) -> None:
    import shutil

    train(_cfg(synth, tmp_path / "run", iters=1))
    data = tmp_path / "swapped"
    shutil.copytree(synth, data)
    names = ["background", "damage", "smudge", "dust"]  # M-BSD's, what the synthetic set uses
    (data / "classes.txt").write_text("\n".join([names[0], names[2], names[1], names[3]]) + "\n")
    with pytest.raises(UserError, match="was trained with classes"):
        Trainer(_cfg(data, tmp_path / "run", resume=True, iters=2))


def test_resume_with_a_damaged_training_state_is_one_clear_error(synth: Path, tmp_path: Path) -> None:
    from ds2a.model import build_model, save_checkpoint

    out = tmp_path / "damaged"
    out.mkdir()
    torch.manual_seed(0)
    save_checkpoint(str(out / "last.pt"), build_model("ds2a_tiny", num_classes=4, **TINY),
                    extra={"train_state": {"iter": 1}})
    with pytest.raises(UserError, match="damaged training state"):
        Trainer(_cfg(synth, out, resume=True))


def test_mixed_precision_only_where_supported() -> None:
    from ds2a.train.loop import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16
    if torch.cuda.is_available():
        assert amp_dtype("auto", torch.device("cuda")) in (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("extra, message", [
    (["--ratio-range", "2,1"], "needs 0 < MIN <= MAX"),
    (["--ratio-range", "big"], "is not MIN,MAX"),
    (["--crop", "64xZ"], "is not HxW"),
    (["--iters", "0"], "must be a whole number >= 1"),
    (["--lr", "nan"], "must be a finite number"),
    (["--lr", "-1"], "must be a finite number"),
    (["--device", "foo"], "is not a device"),
    (["--ratio-range", "0.5,inf"], "needs 0 < MIN <= MAX"),
])
def test_cli_bad_options_print_the_fix(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       extra: list, message: str) -> None:
    argv = ["train", "--model", "ds2a_tiny", "--data", str(synth), "--out", str(tmp_path / "x")] + extra
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- selection split, norm, --init


def test_best_is_chosen_on_val_and_a_missing_val_split_is_explained(synth: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(synth, tmp_path / "v", eval_every=1))
    assert trainer.eval_set.split == "val" and all(n.startswith("cell_val_") for n in trainer.eval_set.names)
    no_val = tmp_path / "noval"
    write_dataset(no_val, 2, 1, size_hw=(64, 64), seed=0)
    with pytest.raises(UserError, match=r"ds2a synth --val"):
        Trainer(_cfg(no_val, tmp_path / "nv", eval_every=1))


def _norm_state(model: torch.nn.Module) -> tuple:
    bn = model.backbone.bn1
    return type(bn).__name__, bn.weight.requires_grad


@pytest.mark.parametrize("kw, kind, trainable", [
    (dict(), "BatchNorm2d", True),  # from scratch: trainable BN
    (dict(backbone_norm="frozen_bn"), "BatchNorm2d", False),
    (dict(backbone_norm="gn"), "GroupNorm", True),
])
def test_backbone_norm_choice_is_applied_and_recorded(synth: Path, tmp_path: Path, kw: dict, kind: str,
                                                      trainable: bool) -> None:
    from ds2a import load_model

    out = tmp_path / "n"
    train(_cfg(synth, out, iters=1, **kw))
    model = load_model(str(out / "last.pt"))
    assert _norm_state(model)[0] == kind
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["config"]["backbone_norm"]
    assert saved == {"BatchNorm2d": "frozen_bn" if not trainable else "bn", "GroupNorm": "gn"}[kind]
    trainer = Trainer(_cfg(synth, tmp_path / "again", **kw))
    assert _norm_state(trainer.model) == (kind, trainable)


def test_imagenet_weights_keep_the_official_frozen_bn(synth: Path, tmp_path: Path) -> None:
    from ds2a.train.loop import resolve_backbone_norm

    cfg = _cfg(synth, tmp_path / "w", backbone_weights="resnet18.pth")
    assert resolve_backbone_norm(cfg) == "frozen_bn"
    assert resolve_backbone_norm(replace(cfg, backbone_weights=None)) == "bn"
    assert resolve_backbone_norm(replace(cfg, backbone_weights=None), init_norm="gn") == "gn"


def test_init_warm_starts_every_weight_and_inherits_the_norm(synth: Path, tmp_path: Path) -> None:
    train(_cfg(synth, tmp_path / "src", iters=2, backbone_norm="gn", seed=5))
    src = _weights(tmp_path / "src" / "last.pt")
    trainer = Trainer(_cfg(synth, tmp_path / "ft", init=str(tmp_path / "src" / "last.pt"), seed=9))
    assert type(trainer.model.backbone.bn1).__name__ == "GroupNorm"
    assert _same({k: v for k, v in trainer.model.state_dict().items()}, src)
    assert trainer.start_iter == 0  # a fresh schedule, not a resume


@pytest.mark.parametrize("make, match", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.write_bytes(b"junk"), p)[1], "--init"),
])
def test_bad_init_checkpoint_is_a_user_error(synth: Path, tmp_path: Path, make, match: str) -> None:
    path = make(tmp_path / "init.pt")
    with pytest.raises(UserError, match=match):
        Trainer(_cfg(synth, tmp_path / "x", init=str(path)))


def test_init_from_a_model_with_other_classes_is_refused(synth: Path, tmp_path: Path) -> None:
    from ds2a.model import build_model, save_checkpoint

    path = tmp_path / "two.pt"
    save_checkpoint(str(path), build_model("ds2a_tiny", num_classes=2, backbone_norm="bn", **TINY))
    with pytest.raises(UserError, match=r"--init: .*2 classes"):
        Trainer(_cfg(synth, tmp_path / "x", init=str(path)))


def test_cli_passes_norm_and_init(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["train", "--model", "ds2a_tiny", "--data", str(synth), "--out", str(tmp_path / "o"), "--iters", "1",
            "--eval-every", "0", "--quiet"]
    assert main(base + ["--init", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "--init" in err and "nope.pt' does not exist" in err
    with pytest.raises(SystemExit) as exc:
        main(base + ["--backbone-norm", "nope"])
    assert exc.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_a_run_never_replaces_the_checkpoint_it_starts_from(synth: Path, tmp_path: Path) -> None:
    """--init out/best.pt with --out out: the run's best.pt would overwrite its own starting point."""
    import shutil

    train(_cfg(synth, tmp_path / "src", iters=2, seed=5))
    folder = tmp_path / "ft"
    folder.mkdir()
    start = folder / "best.pt"
    shutil.copy(tmp_path / "src" / "last.pt", start)
    before = start.read_bytes()
    with pytest.raises(UserError, match=r"--out .*best\.pt.* same file as the input --init"):
        train(_cfg(synth, folder, iters=2, init=str(start)))
    assert start.read_bytes() == before and not (folder / "last.pt").exists()
    train(_cfg(synth, tmp_path / "elsewhere", iters=1, init=str(start)))  # another --out is fine
