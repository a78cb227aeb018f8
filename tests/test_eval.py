"""`ds2a eval` and `evaluate_segmenter()`: scoring png predictions and models, with clear errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ds2a.cli import main
from ds2a.data import open_dataset, write_dataset
from ds2a.errors import UserError
from ds2a.eval import evaluate_predictions, evaluate_segmenter
from ds2a.meta import ModelMeta
from ds2a.metrics import ConfusionMatrix
from ds2a.runtime.base import InferResult, Segmenter


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth_eval")
    write_dataset(root, 2, 4, size_hw=(64, 96), seed=1)
    return root


class OracleSegmenter(Segmenter):
    """Answers with the label map at model size (shifted by `shift` classes), for a known score."""

    backend = "oracle"

    def __init__(self, dataset, size=(32, 32), shift: int = 0, classes=None) -> None:
        super().__init__(ModelMeta(arch="oracle", classes=classes or dataset.classes, input_size=size))
        self.by_key = {dataset[i].image.tobytes(): dataset[i].mask for i in range(len(dataset))}
        self.shift, self.k, self.calls = shift, len(dataset.classes), 0

    def infer_batch(self, frames):
        self.calls += 1
        out = []
        for f in frames:  # the original frames come in; the model size is applied here
            m = self.by_key[np.asarray(f).tobytes()]
            m = cv2.resize(m, self.input_size[::-1], interpolation=cv2.INTER_NEAREST)
            out.append(InferResult(class_map=((m.astype(int) + self.shift) % self.k).astype(np.uint8)))
        return out


def test_evaluate_maps_predictions_back_to_label_size(synth: Path) -> None:
    ds = open_dataset(synth, split="test")
    seg = OracleSegmenter(ds, size=(64, 96))
    r = evaluate_segmenter(seg, ds, batch_size=3)
    assert r["num_images"] == 4 and seg.calls == 2
    assert r["aAcc"] == 1.0 and r["mIoU"] == 1.0
    # at a coarser model size the nearest-neighbour round trip loses thin defects: same as a direct count
    coarse = evaluate_segmenter(OracleSegmenter(ds, size=(32, 32)), ds)
    cm = ConfusionMatrix(4)
    for s in ds:
        small = cv2.resize(s.mask, (32, 32), interpolation=cv2.INTER_NEAREST)
        cm.update(cv2.resize(small, (96, 64), interpolation=cv2.INTER_NEAREST), s.mask)
    assert coarse["mIoU"] == pytest.approx(cm.metrics()["mIoU"])


def test_evaluate_refuses_a_model_with_another_class_count(synth: Path) -> None:
    ds = open_dataset(synth, split="test")
    with pytest.raises(UserError, match="2 classes"):
        evaluate_segmenter(OracleSegmenter(ds, classes=["background", "crack"]), ds)


def _write_preds(ds, folder: Path, shift: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in ds:
        cv2.imwrite(str(folder / f"{s.name}.png"), ((s.mask.astype(int) + shift) % 4).astype(np.uint8))


def test_pred_dir_perfect_and_wrong_predictions(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = open_dataset(synth, split="test")
    _write_preds(ds, tmp_path / "good")
    out = tmp_path / "m.json"
    assert main(["eval", "--pred-dir", str(tmp_path / "good"), "--data", str(synth), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mIoU"] == 1.0 and result["aAcc"] == 1.0 and result["num_images"] == 4
    assert set(result["per_class"]) == set(ds.classes) and "mDice" in result
    assert "mIoU 100.00" in capsys.readouterr().out
    _write_preds(ds, tmp_path / "bad", shift=1)
    bad = evaluate_predictions(str(tmp_path / "bad"), ds)
    assert bad["aAcc"] == 0.0 and bad["mIoU"] == 0.0


def test_pred_dir_missing_files_are_listed(synth: Path, tmp_path: Path) -> None:
    ds = open_dataset(synth, split="test")
    _write_preds(ds, tmp_path / "p")
    (tmp_path / "p" / f"{ds.names[1]}.png").unlink()
    with pytest.raises(UserError, match=f"1 of 4 images: {ds.names[1]}.png"):
        evaluate_predictions(str(tmp_path / "p"), ds)
    with pytest.raises(UserError, match="does not exist"):
        evaluate_predictions(str(tmp_path / "nope"), ds)


def test_pred_dir_size_mismatch_names_the_file(synth: Path, tmp_path: Path) -> None:
    ds = open_dataset(synth, split="test")
    _write_preds(ds, tmp_path / "p")
    cv2.imwrite(str(tmp_path / "p" / f"{ds.names[0]}.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(UserError, match=f"{ds.names[0]}.png.*10x10"):
        evaluate_predictions(str(tmp_path / "p"), ds)


def test_cli_reports_user_errors_without_traceback(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--pred-dir", str(tmp_path / "empty"), "--data", str(synth)]) == 2
    assert "lacks predictions for 4 of 4" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "none.pt"), "--data", str(synth)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_needs_a_non_empty_split(synth: Path) -> None:
    class Empty:
        classes, names, root = ["background", "damage", "smudge", "dust"], [], "x"

        def __len__(self) -> int:
            return 0

    with pytest.raises(UserError, match="empty"):
        evaluate_segmenter(OracleSegmenter(open_dataset(synth, split="test")), Empty())  # type: ignore[arg-type]


def test_eval_and_metrics_import_without_torch() -> None:
    code = "import sys, ds2a.eval, ds2a.cli.eval, ds2a.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_scores_a_checkpoint_through_the_runtime(synth: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    torch = pytest.importorskip("torch")
    from ds2a.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("ds2a_tiny", input_size=(64, 96), backbone_width=16, hidden_dim=32, encoder_layers=1,
                        encoder_heads=2, encoder_ffn=64, decoder_layers=1, decoder_heads=2, decoder_ffn=64,
                        num_queries=4, norm_groups=8)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(str(ckpt), model)
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(ckpt), "--data", str(synth), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    # the same numbers as scoring the model's own argmax directly
    ds = open_dataset(synth, split="test")
    from ds2a.preprocess import normalize

    cm = ConfusionMatrix(4)
    with torch.no_grad():
        for s in ds:
            pred = model.eval().semantic_logits(torch.from_numpy(normalize(s.image))).argmax(1)[0].numpy()
            cm.update(pred, s.mask)
    assert result["mIoU"] == pytest.approx(cm.metrics()["mIoU"]) and result["backend"] == "pytorch"
    two = tmp_path / "two"
    write_dataset(two, 1, 1, size_hw=(64, 96), seed=0)
    (two / "classes.txt").write_text("background\ncrack\n")
    for m in (two / "ann_dir").rglob("*.png"):
        cv2.imwrite(str(m), (cv2.imread(str(m), 0) > 0).astype(np.uint8))
    capsys.readouterr()
    assert main(["eval", "--model", str(ckpt), "--data", str(two)]) == 2
    assert "predicts 4 classes" in capsys.readouterr().err  # a checkpoint for another class count
