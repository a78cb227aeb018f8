"""The eval and bench stages called from Python (no argparse) give what `ds2a eval` / `ds2a bench` write."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from fakes.onnx_models import CLASSES, reference_logits, tiny_onnx

from ds2a.bench import BenchOptions, bench, make_report
from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.eval import EvalOptions, evaluate, evaluate_folder


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory):
    """The tiny ONNX model and a dataset labelled by another tiny model: some parts escape, some are overkill."""
    root = tmp_path_factory.mktemp("stage_api")
    frames = np.random.default_rng(5).integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    data = root / "data"
    (data / "img_dir" / "test").mkdir(parents=True)
    (data / "ann_dir" / "test").mkdir(parents=True)
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    masks = reference_logits(frames, seed=1).argmax(1).astype(np.uint8)
    for i, (img, mask) in enumerate(zip(frames, masks)):
        cv2.imwrite(str(data / "img_dir" / "test" / f"{i}.png"), img)
        cv2.imwrite(str(data / "ann_dir" / "test" / f"{i}.png"), mask)
    return tiny_onnx(root / "m.onnx"), data


def test_evaluate_from_python_equals_the_cli_json(model_and_data, tmp_path: Path, capsys) -> None:
    onnx_path, data = model_and_data
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(onnx_path), "--data", str(data), "--rules", "default",
                 "--sweep", "min_area_px=16,64,256", "--batch-size", "4", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = evaluate(str(onnx_path), str(data),
                      EvalOptions(rules="default", sweep="min_area_px=16,64,256", batch_size=4))
    assert result.to_dict() == json.loads(out.read_text())
    assert result.parts is not None and result.parts["total"] == 6 and len(result.sweep or []) == 3
    assert 0 < result.metrics["mIoU"] < 1 and result.metrics["backend"] == "onnxruntime"
    assert f"mIoU {100 * result.metrics['mIoU']:.2f}" in printed and "sweep of min_area_px" in printed


def test_evaluate_folder_and_an_open_model(model_and_data, tmp_path: Path) -> None:
    onnx_path, data = model_and_data
    from ds2a.data import open_dataset
    from ds2a.runtime import open_model

    ds = open_dataset(str(data), split="test")
    with open_model(str(onnx_path)) as seg:
        direct = evaluate(seg, ds)
        preds = tmp_path / "preds"
        preds.mkdir()
        for i in range(len(ds)):
            cv2.imwrite(str(preds / f"{ds.names[i]}.png"), seg.infer(ds[i].image).class_map)
    from_path = evaluate(str(onnx_path), str(data))
    folder = evaluate_folder(str(preds), str(data))
    assert direct.metrics["mIoU"] == from_path.metrics["mIoU"] == folder.metrics["mIoU"]
    assert folder.metrics["source"] == str(preds) and folder.parts is None and folder.sweep is None
    with pytest.raises(UserError, match="needs rules"):
        evaluate(str(onnx_path), str(data), EvalOptions(sweep="min_area_px=16,64"))


def test_bench_from_python_agrees_with_the_cli_json(model_and_data, tmp_path: Path) -> None:
    onnx_path, data = model_and_data
    out = tmp_path / "b.json"
    rc = main(["bench", "--model", str(onnx_path), "--iterations", "5", "--warmup-s", "0", "--data", str(data),
               "--min-miou", "0.99", "--threads", "1", "--json", str(out), "--quiet"])
    cli = json.loads(out.read_text())
    opts = BenchOptions(iterations=5, warmup_s=0, data=str(data), min_miou=0.99, threads=1)
    result = bench([str(onnx_path)], opts)
    assert rc == 1 and len(result.failed) == 1 and "< --min-miou 0.99" in result.failed[0]
    timing_free = ("label", "model", "backend", "precision", "input_size", "batch", "threads", "device", "group",
                   "miou", "speedup")
    [row], [cli_row] = result.rows, cli["rows"]
    assert {k: row[k] for k in timing_free} == {k: cli_row[k] for k in timing_free}
    assert len(row["samples_ms"]) == len(cli_row["samples_ms"]) == 5
    report = result.report("ds2a bench ...")
    assert report["rows"] is result.rows and report["title"] == cli["title"] == "ds2a bench"
    assert set(report) == set(make_report([], "x")) == set(cli)


def test_bench_options_refuse_what_cannot_be_measured(model_and_data) -> None:
    onnx_path, data = model_and_data
    with pytest.raises(UserError, match="--min-miou needs --data"):
        bench([str(onnx_path)], BenchOptions(min_miou=0.5))
    with pytest.raises(UserError, match="end-to-end mode"):
        bench([str(onnx_path)], BenchOptions(source="demo://", data=str(data)))
    with pytest.raises(UserError, match="--cuda-graph only applies to TensorRT"):
        bench([str(onnx_path)], BenchOptions(cuda_graph=True, iterations=1))


def test_eval_takes_the_shared_backend_flags(model_and_data, tmp_path: Path, capsys) -> None:
    onnx_path, data = model_and_data
    out = tmp_path / "t.json"
    assert main(["eval", "--model", str(onnx_path), "--data", str(data), "--threads", "1", "--device", "cpu",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mIoU"] == evaluate(str(onnx_path), str(data)).metrics["mIoU"]
    assert main(["eval", "--model", str(onnx_path), "--data", str(data), "--threads", "0"]) == 2
    assert "--threads 0: give at least 1" in capsys.readouterr().err
    assert main(["eval", "--pred-dir", str(tmp_path), "--data", str(data), "--device", "cpu"]) == 2
    assert "drop them with --pred-dir" in capsys.readouterr().err
