"""Data and metrics that cannot lie: mask conversion, class lists, NaN scores, gates and option ranges."""
from __future__ import annotations

import json
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

import ds2a.bench.runner as bench_runner
import ds2a.runtime
from ds2a.bench import BenchOptions, check_gates
from ds2a.cli import main
from ds2a.data import Crack500Dataset, FolderDataset, open_dataset, write_dataset
from ds2a.errors import UserError
from ds2a.eval import evaluate_segmenter
from ds2a.meta import ModelMeta
from ds2a.runtime.base import InferResult, Segmenter


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


# ---------------------------------------------------------------- Crack-500 mask rule

def _crack(tmp_path: Path, name: str, mask: np.ndarray) -> None:
    _write(tmp_path / f"{name}.jpg", np.zeros((*mask.shape, 3), np.uint8))
    _write(tmp_path / f"{name}_mask.png", mask)


def test_crack500_class_ids_keep_their_labels_and_255_stays_ignore(tmp_path: Path) -> None:
    _crack(tmp_path, "a", np.array([[0, 1, 255, 1]] * 4, np.uint8))
    _crack(tmp_path, "b", np.array([[0, 255, 255, 0]] * 4, np.uint8))
    ds = Crack500Dataset(tmp_path, "all")
    assert ds[0].mask[0].tolist() == [0, 1, 255, 1]  # ids with an ignore region: untouched
    assert ds[1].mask[0].tolist() == [0, 1, 1, 0]  # Crack-500's own 0/255: 255 is crack


def test_crack500_ambiguous_masks_are_refused_naming_file_and_values(tmp_path: Path) -> None:
    _crack(tmp_path, "a", np.array([[0, 2, 2, 0]] * 4, np.uint8))
    with pytest.raises(UserError, match=r"a_mask\.png' has mask values \[0, 2\]"):
        Crack500Dataset(tmp_path, "all")[0]


# ---------------------------------------------------------------- class lists

def _folder(root: Path, masks: list) -> Path:
    for i, m in enumerate(masks):
        _write(root / "images" / f"im{i}.png", np.zeros((*m.shape, 3), np.uint8))
        _write(root / "masks" / f"im{i}.png", m)
    return root


def test_a_stray_mask_value_is_refused_instead_of_a_201_class_model(tmp_path: Path) -> None:
    good = np.zeros((8, 8), np.uint8)
    good[2:4, 2:4] = 1
    stray = good.copy()
    stray[0, 0] = 200
    _folder(tmp_path, [good, good, stray, good, good])
    with pytest.raises(UserError, match=r"im2\.png' has mask value 200.*201-class"):
        FolderDataset(tmp_path, "train")
    (tmp_path / "masks" / "im2.png").unlink()
    _write(tmp_path / "masks" / "im2.png", good)
    assert FolderDataset(tmp_path, "all").classes == ["background", "class_1"]


@pytest.mark.parametrize("content, match", [
    (b"\xff\xfebackground\n", "is not UTF-8 text"),
    (b"background\ncrack\ncrack\n", "lists crack more than once"),
])
def test_a_bad_classes_txt_is_one_clear_error(tmp_path: Path, content: bytes, match: str) -> None:
    mask = np.zeros((8, 8), np.uint8)
    _folder(tmp_path, [mask] * 5)
    (tmp_path / "classes.txt").write_bytes(content)
    with pytest.raises(UserError, match=match):
        FolderDataset(tmp_path, "all")


def test_a_folder_named_like_a_mask_is_not_a_mask(tmp_path: Path) -> None:
    _folder(tmp_path, [np.zeros((8, 8), np.uint8)] * 5)
    (tmp_path / "masks" / "zz.png").mkdir()
    assert len(FolderDataset(tmp_path, "all")) == 5


class _Oracle(Segmenter):
    backend = "oracle"

    def __init__(self, dataset, classes, offset: int = 0) -> None:
        super().__init__(ModelMeta(arch="oracle", classes=list(classes), input_size=(64, 96)))
        self.masks = {dataset[i].image.tobytes(): dataset[i].mask for i in range(len(dataset))}
        self.offset = offset

    def infer_batch(self, frames):
        return [InferResult(class_map=(self.masks[np.asarray(f).tobytes()] + self.offset).astype(np.uint8))
                for f in frames]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("failsafe")
    write_dataset(root, 1, 3, size_hw=(64, 96), seed=2)
    return root


def test_a_reordered_class_list_is_refused(synth: Path) -> None:
    ds = open_dataset(synth, "test")
    assert evaluate_segmenter(_Oracle(ds, ds.classes), ds)["mIoU"] == 1.0
    swapped = [ds.classes[0], ds.classes[2], ds.classes[1], ds.classes[3]]
    with pytest.raises(UserError, match="in another order"):
        evaluate_segmenter(_Oracle(ds, swapped), ds)


@pytest.mark.parametrize("kw", [dict(batch_size=-3), dict(batch_size=0), dict(limit=-1)])
def test_a_batch_size_or_limit_that_scores_nothing_is_refused(synth: Path, kw: dict) -> None:
    ds = open_dataset(synth, "test")
    with pytest.raises(UserError, match="must be at least 1"):
        evaluate_segmenter(_Oracle(ds, ds.classes), ds, **kw)


def test_class_ids_outside_the_class_list_are_refused(synth: Path, tmp_path: Path, capsys) -> None:
    ds = open_dataset(synth, "test")
    for name in ds.names:
        _write(tmp_path / "preds" / f"{name}.png", np.full((64, 96), 7, np.uint8))
    assert main(["eval", "--pred-dir", str(tmp_path / "preds"), "--data", str(synth)]) == 2
    assert "class ids [7] outside 0..3" in capsys.readouterr().err
    with pytest.raises(UserError, match="outside 0..3"):
        evaluate_segmenter(_Oracle(ds, ds.classes, offset=4), ds)


def test_an_all_ignore_split_scores_nothing_and_exits_non_zero(tmp_path: Path, capsys) -> None:
    data = _folder(tmp_path / "data", [np.full((8, 8), 255, np.uint8) for _ in range(5)])
    (data / "classes.txt").write_text("background\ndefect\n")
    for i in range(5):
        _write(tmp_path / "preds" / f"im{i}.png", np.zeros((8, 8), np.uint8))
    assert main(["eval", "--pred-dir", str(tmp_path / "preds"), "--data", str(data), "--split", "all"]) == 2
    assert "nothing was scored" in capsys.readouterr().err


# ---------------------------------------------------------------- gates

def test_a_gate_that_cannot_be_evaluated_fails() -> None:
    args = BenchOptions(min_miou=0.5, max_latency_ms=10.0, gate_stat="median")
    row = {"model": "m", "backend": "b", "precision": "fp32", "miou": float("nan"),
           "latency_ms": {"count": 0, "median": float("nan")}}
    failed = check_gates([row], args)
    assert len(failed) == 2 and "could not be measured" in failed[0] and "no median latency" in failed[1]
    ok = {**row, "miou": 0.6, "latency_ms": {"count": 3, "median": 5.0}}
    assert check_gates([ok], args) == []


def test_end_to_end_bench_refuses_an_accuracy_gate(tmp_path: Path, capsys) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    rc = main(["bench", "--model", str(tmp_path / "m.onnx"), "--source", "demo://", "--data", str(tmp_path),
               "--min-miou", "0.5"])
    assert rc == 2 and "end-to-end mode" in capsys.readouterr().err


class _FakeModel:
    backend = "fake"
    input_size = (32, 32)
    meta = ModelMeta(arch="fake", classes=["background", "defect"], input_size=(32, 32))

    def infer(self, frame):
        return InferResult(class_map=np.zeros((32, 32), np.uint8))

    infer_batch = None

    def close(self) -> None:
        pass


def _fake_e2e(monkeypatch, frames):
    """Run `bench --source` with a loop that outputs `frames` = [(latency ms, inferred?)]."""
    from ds2a import sources
    from ds2a.inspect import loop as loop_mod

    class FakeLoop:
        def __init__(self, source, model, analyse, output, max_frames=None) -> None:
            self.output = output

        def run(self, duration=None):
            stats = loop_mod.LoopStats(wall_s=1.0)
            for ms, inferred in frames:
                self.output(types.SimpleNamespace(inspected=inferred))
                stats.timings.add("latency", ms)
                stats.frames += 1
                stats.no_part += not inferred
            return stats

    monkeypatch.setattr(loop_mod, "InspectionLoop", FakeLoop)
    monkeypatch.setattr(sources, "open_source", lambda uri: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(ds2a.runtime, "open_model", lambda path, backend=None, **kw: _FakeModel())
    monkeypatch.setattr(bench_runner, "measure", lambda *a, **k: None)


def test_end_to_end_latency_counts_only_inferred_frames(monkeypatch, tmp_path: Path) -> None:
    _fake_e2e(monkeypatch, [(5.0, True), (0.5, False), (7.0, True), (0.5, False)])
    (tmp_path / "m.onnx").write_bytes(b"x")
    rc = main(["bench", "--model", str(tmp_path / "m.onnx"), "--source", "demo://", "--gate-stat", "mean",
               "--max-latency-ms", "4", "--json", str(tmp_path / "r.json")])
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert rc == 1 and row["samples_ms"] == [5.0, 7.0] and row["inferred"] == 2 and row["frames"] == 4


def test_end_to_end_with_no_inferred_frame_fails(monkeypatch, tmp_path: Path, capsys) -> None:
    _fake_e2e(monkeypatch, [(0.5, False), (0.5, False)])
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert main(["bench", "--model", str(tmp_path / "m.onnx"), "--source", "demo://"]) == 2
    assert "no frame from demo:// was inferred" in capsys.readouterr().err


# ---------------------------------------------------------------- option ranges

@pytest.mark.parametrize("argv", [
    ["bench", "--model", "m.onnx", "--duration", "nan"],
    ["bench", "--model", "m.onnx", "--warmup-s", "inf"],
    ["bench", "--model", "m.onnx", "--batch", "-3"],
    ["bench", "--model", "m.onnx", "--min-miou", "nan"],
    ["bench", "--model", "m.onnx", "--max-latency-ms", "inf"],
    ["eval", "--pred-dir", "p", "--data", "d", "--batch-size", "-3"],
    ["train", "--model", "ds2a_tiny", "--data", "d", "--out", "o", "--lr", "nan"],
    ["train", "--model", "ds2a_tiny", "--data", "d", "--out", "o", "--lr", "-1"],
    ["train", "--model", "ds2a_tiny", "--data", "d", "--out", "o", "--device", "foo"],
    ["train", "--model", "ds2a_tiny", "--data", "d", "--out", "o", "--vflip", "2"],
    ["synth", "out", "--seed", "-1"],
    ["calibrate", "m.onnx", "--data", "d", "--precision", "int8", "--out", "o.onnx", "--num-images", "0"],
    ["export", "m.pt", "--out", "m.onnx", "--batch", "0"],
])
def test_numeric_and_device_options_are_checked_at_parse_time(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "must be" in err or "is not a" in err


def test_bench_refuses_an_unknown_torch_device(monkeypatch) -> None:
    with pytest.raises(UserError, match="--device 'foo' is not a device"):
        BenchOptions(device="foo").model_options("pytorch", "m.pt")
    assert BenchOptions(device="CUDA:1").model_options("pytorch", "m.pt")["device"] == "cuda:1"


def test_synth_refuses_a_size_that_cannot_fit_in_memory(tmp_path: Path, capsys) -> None:
    assert main(["synth", str(tmp_path / "s"), "--size", "99999x64", "--train", "1", "--test", "0"]) == 2
    assert "larger than 8192 pixels a side" in capsys.readouterr().err and not (tmp_path / "s").exists()
