"""Benchmark statistics, reports and CI gates, proven with a fake backend of known latencies
(a fake clock advanced by each call, so the numbers are exact and the tests take no time)."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
import pytest
from fakes.onnx_models import CLASSES, reference_logits, tiny_onnx

import ds2a.bench.runner as bench_runner
import ds2a.runtime
from ds2a.bench import latency_stats, measure
from ds2a.bench.machine import machine_info
from ds2a.bench.report import add_speedups, to_markdown
from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.meta import ModelMeta
from ds2a.runtime.base import Segmenter, make_results


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeSegmenter(Segmenter):
    """Each call takes the next latency from `latencies_ms` (cycling) on a fake clock."""

    backend = "onnxruntime"

    def __init__(self, clock: FakeClock, latencies_ms: List[float], stages: Optional[Dict[str, float]] = None,
                 batch: Optional[int] = None) -> None:
        super().__init__(ModelMeta(arch="fake", classes=CLASSES, input_size=(8, 8)))
        self.clock, self.lat, self.calls, self.stages, self._batch = clock, latencies_ms, 0, stages, batch
        self.closed = False

    @property
    def batch_size(self) -> Optional[int]:
        return self._batch

    def infer_batch(self, frames):
        frames = self.prepare_batch(frames)
        self.clock.t += self.lat[self.calls % len(self.lat)] / 1e3
        if self.stages:
            self.last_timings = {k: v * (1 + self.calls) for k, v in self.stages.items()}
        self.calls += 1
        return make_results(np.zeros((len(frames), 8, 8), np.uint8), None, len(frames))

    def close(self) -> None:
        self.closed = True


def test_iterations_give_exact_trtexec_statistics() -> None:
    clock = FakeClock()
    lat = list(np.random.default_rng(0).gamma(4.0, 2.0, 200))
    seg = FakeSegmenter(clock, lat)
    res = measure(seg, warmup_s=0, iterations=200, clock=clock)
    np.testing.assert_allclose(res.samples_ms, lat, rtol=1e-9)
    s = res.latency
    assert s["count"] == 200
    for key, q in (("median", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert s[key] == pytest.approx(np.percentile(lat, q), rel=1e-6)
    assert s["min"] == pytest.approx(min(lat)) and s["max"] == pytest.approx(max(lat))
    assert s["mean"] == pytest.approx(np.mean(lat)) and s["std"] == pytest.approx(np.std(lat))
    assert s["throughput_qps"] == pytest.approx(200 / (sum(lat) / 1e3), rel=1e-6)


def test_warmup_is_by_time_and_excluded_from_statistics() -> None:
    clock = FakeClock()
    # five slow 100 ms calls (first-run allocation) then steady 2 ms
    seg = FakeSegmenter(clock, [100.0] * 5 + [2.0] * 1000)
    res = measure(seg, warmup_s=0.45, iterations=50, clock=clock)
    assert res.warmup_iterations == 5 and res.warmup_s == pytest.approx(0.5)
    assert res.samples_ms == pytest.approx([2.0] * 50)
    assert res.latency["max"] == pytest.approx(2.0)


def test_throughput_counts_frames_of_a_batch() -> None:
    clock = FakeClock()
    res = measure(FakeSegmenter(clock, [10.0]), batch=4, warmup_s=0, iterations=20, clock=clock)
    assert res.latency["throughput_qps"] == pytest.approx(100.0)
    assert res.latency["throughput_fps"] == pytest.approx(400.0)
    assert latency_stats([10.0] * 4, batch=2, wall_s=0.08)["throughput_fps"] == pytest.approx(100.0)


def test_duration_mode_runs_until_time_and_at_least_ten_iterations() -> None:
    clock = FakeClock()
    # 1/128 s per call: binary-exact, so 0.125 s is exactly 16 calls
    res = measure(FakeSegmenter(clock, [1000 / 128]), warmup_s=0, duration_s=0.125, clock=clock)
    assert len(res.samples_ms) == 16 and res.wall_s == pytest.approx(0.125)
    res = measure(FakeSegmenter(clock, [50.0]), warmup_s=0, duration_s=0.01, clock=clock)
    assert len(res.samples_ms) == 10


def test_backend_stage_timings_are_collected_per_iteration() -> None:
    clock = FakeClock()
    seg = FakeSegmenter(clock, [3.0], stages={"h2d_ms": 0.5, "compute_ms": 2.0})
    res = measure(seg, warmup_s=0, iterations=4, clock=clock)
    assert res.stages_ms["h2d_ms"] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert res.stages()["compute_ms"]["median"] == pytest.approx(5.0)


def test_bad_measure_arguments_and_fixed_batch_mismatch() -> None:
    clock = FakeClock()
    with pytest.raises(UserError, match="--iterations"):
        measure(FakeSegmenter(clock, [1.0]), iterations=0, clock=clock)
    with pytest.raises(UserError, match="built for batch 2; run with --batch 2"):
        measure(FakeSegmenter(clock, [1.0], batch=2), batch=1, clock=clock)


def test_speedup_is_relative_to_pytorch_in_the_same_group() -> None:
    rows = [{"backend": "pytorch", "group": "a", "latency_ms": {"median": 30.0}},
            {"backend": "onnxruntime", "group": "a", "latency_ms": {"median": 10.0}},
            {"backend": "onnxruntime", "group": "b", "latency_ms": {"median": 10.0}}]
    add_speedups(rows)
    assert [r["speedup"] for r in rows] == [1.0, 3.0, None]


def test_machine_info_has_versions_and_cores() -> None:
    info = machine_info()
    assert info["cpu"]["logical_cores"] >= 1 and info["packages"]["onnxruntime"]
    assert isinstance(info["warnings"], list)


# --- the command, with the fake backend ----------------------------------------------------------
@pytest.fixture
def fake_open(monkeypatch, tmp_path: Path):
    """`ds2a bench` opening FakeSegmenters (median 10 ms) on a fake clock."""
    clock = FakeClock()
    opened: List[FakeSegmenter] = []

    def open_model(path, backend=None, **options):
        opened.append(FakeSegmenter(clock, [8.0, 10.0, 12.0]))
        return opened[-1]

    monkeypatch.setattr(ds2a.runtime, "open_model", open_model)
    monkeypatch.setattr(bench_runner, "measure", functools.partial(measure, clock=clock))
    for name in ("a.onnx", "b.onnx"):
        (tmp_path / name).write_bytes(b"0" * 1024)
    return opened


@pytest.mark.parametrize("limit,code", [(11.0, 0), (9.0, 1)])
def test_max_latency_gate_sets_exit_code(fake_open, tmp_path: Path, limit: float, code: int, capsys) -> None:
    rc = main(["bench", "--model", str(tmp_path / "a.onnx"), "--iterations", "30", "--warmup-s", "0",
               "--max-latency-ms", str(limit), "--json", str(tmp_path / "r.json")])
    assert rc == code
    assert all(s.closed for s in fake_open)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rows"][0]["latency_ms"]["median"] == pytest.approx(10.0)
    assert "--max-latency-ms" in report["command"] and report["machine"]["cpu"]["logical_cores"] >= 1
    assert ("GATE FAILED" in capsys.readouterr().err) == bool(code)


def test_p99_gate_is_selectable(fake_open, tmp_path: Path) -> None:
    args = ["bench", "--model", str(tmp_path / "a.onnx"), "--iterations", "30", "--warmup-s", "0",
            "--max-latency-ms", "11"]
    assert main(args) == 0 and main(args + ["--gate-stat", "p99"]) == 1


def test_min_miou_needs_data_and_cuda_graph_needs_tensorrt(tmp_path: Path, capsys) -> None:
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    assert main(["bench", "--model", str(onnx_path), "--min-miou", "0.5"]) == 2
    assert "--min-miou needs --data" in capsys.readouterr().err
    assert main(["bench", "--model", str(onnx_path), "--cuda-graph", "--iterations", "1"]) == 2
    assert "--cuda-graph only applies to TensorRT" in capsys.readouterr().err


def test_unknown_suffix_lists_what_works(tmp_path: Path, capsys) -> None:
    (tmp_path / "m.xyz").write_bytes(b"x")
    assert main(["bench", "--model", str(tmp_path / "m.xyz"), "--iterations", "1"]) == 2
    assert ".onnx" in capsys.readouterr().err


# --- real ONNX Runtime run, mIoU and the reports --------------------------------------------------
def write_dataset(root: Path, frames: np.ndarray, corrupt: bool = False) -> Path:
    """M-BSD layout whose masks are exactly what the tiny model predicts (or deliberately wrong)."""
    (root / "img_dir" / "test").mkdir(parents=True)
    (root / "ann_dir" / "test").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    masks = reference_logits(frames).argmax(1).astype(np.uint8)
    for i, (img, mask) in enumerate(zip(frames, masks)):
        if corrupt:
            mask = (mask + 1) % len(CLASSES)
        cv2.imwrite(str(root / "img_dir" / "test" / f"{i}.png"), img)
        cv2.imwrite(str(root / "ann_dir" / "test" / f"{i}.png"), mask)
    return root


@pytest.mark.parametrize("corrupt,code", [(False, 0), (True, 1)])
def test_min_miou_gate_on_a_real_onnx(tmp_path: Path, corrupt: bool, code: int) -> None:
    frames = np.random.default_rng(3).integers(0, 256, (4, 32, 48, 3), dtype=np.uint8)
    data = write_dataset(tmp_path / "data", frames, corrupt)
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    rc = main(["bench", "--model", str(onnx_path), "--iterations", "5", "--warmup-s", "0", "--data", str(data),
               "--min-miou", "0.99", "--json", str(tmp_path / "r.json"), "--quiet"])
    assert rc == code
    miou = json.loads((tmp_path / "r.json").read_text())["rows"][0]["miou"]
    assert (miou > 0.99) if not corrupt else (miou < 0.01)


def test_reports_written_for_several_models(tmp_path: Path) -> None:
    a = tiny_onnx(tmp_path / "m.onnx", batch="batch")
    b = tiny_onnx(tmp_path / "m.int8.onnx", batch="batch")
    out = {k: tmp_path / f"r.{k}" for k in ("json", "md", "png")}
    rc = main(["bench", "--model", str(a), "--model", str(b), "--batch", "2", "--iterations", "12",
               "--warmup-s", "0.05", "--threads", "1", "--json", str(out["json"]), "--markdown", str(out["md"]),
               "--plot", str(out["png"]), "--quiet"])
    assert rc == 0
    rep = json.loads(out["json"].read_text())
    assert [r["precision"] for r in rep["rows"]] == ["fp32", "int8"]
    assert all(len(r["samples_ms"]) == 12 and r["batch"] == 2 and r["warmup"]["iterations"] >= 1
               for r in rep["rows"])
    md = out["md"].read_text()
    assert "| tiny_test | onnxruntime | int8 | 32x48 | 2 |" in md and "## Machine" in md and "--batch 2" in md
    assert cv2.imread(str(out["png"])) is not None


def test_markdown_shows_skipped_rows_with_reason() -> None:
    rep = {"rows": [{"label": "ds2a_tiny", "backend": "tensorrt", "precision": "int8", "input_size": [256, 256],
                     "skipped": "TensorRT not installed"}], "machine": {}, "command": "x"}
    assert "skipped: TensorRT not installed" in to_markdown(rep)


def test_end_to_end_mode_runs_the_inspection_loop(tmp_path: Path) -> None:
    pytest.importorskip("ds2a.inspect.loop")
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    rc = main(["bench", "--model", str(onnx_path), "--source", "demo://?frames=12", "--max-frames", "12",
               "--warmup-s", "0", "--json", str(tmp_path / "e.json"), "--markdown", str(tmp_path / "e.md")])
    assert rc == 0
    row = json.loads((tmp_path / "e.json").read_text())["rows"][0]
    assert row["mode"] == "end-to-end" and row["frames"] == 12 and row["dropped"] == 0
    assert row["e2e_fps"] > 0 and row["model_fps"] > 0
    # latency counts only the frames the model ran on (demo frames without a part in view are not)
    assert 0 < len(row["samples_ms"]) == row["inferred"] == row["stages_ms"]["infer"]["count"] <= 12
    assert {"capture", "infer", "latency"} <= set(row["stages_ms"])
    assert "end-to-end FPS" in (tmp_path / "e.md").read_text()


# --- the matrix's bookkeeping -----------------------------------------------------------------------
def _row(group, backend, precision, median, fps=None, label="ds2a_tiny (demo)", miou=None):
    return {"group": group, "backend": backend, "precision": precision, "label": label, "input_size": [256, 256],
            "miou": miou, "latency_ms": {"median": median, "throughput_fps": fps or 1000.0 / median}}


def test_matrix_targets_state_ratios_and_best_configuration() -> None:
    from ds2a.bench.matrix import target_notes

    rows = [_row("t@256", "pytorch", "fp32", 100.0), _row("t@256", "onnxruntime", "fp32", 25.0, miou=0.8),
            _row("t@256", "onnxruntime", "int8-ort", 50.0, miou=0.79),
            _row("r@256", "pytorch", "fp32", 10.0, label="ds2a_r18 (random)"),
            _row("r@256", "onnxruntime", "fp32", 20.0, label="ds2a_r18 (random)")]
    notes = "\n".join(target_notes(rows))
    assert "t@256: ORT FP32 vs PyTorch eager: 4.00x (faster" in notes
    assert "t@256: ORT INT8 (onnxruntime placement) vs ORT FP32: 0.50x (NOT faster" in notes
    assert "r@256: ORT FP32 vs PyTorch eager: 0.50x (NOT faster" in notes
    assert "best CPU configuration for the demo model: onnxruntime fp32 at 256x256: 40.0 FPS" in notes
    assert "mIoU 80.00" in notes


def test_matrix_merge_replaces_only_remeasured_groups() -> None:
    from ds2a.bench.matrix import merge_rows

    old = [_row("a", "pytorch", "fp32", 1.0), _row("b", "pytorch", "fp32", 2.0)]
    new = [_row("b", "pytorch", "fp32", 3.0)]
    merged = merge_rows(old, new)
    assert [(r["group"], r["latency_ms"]["median"]) for r in merged] == [("a", 1.0), ("b", 3.0)]


def test_matrix_step_failure_becomes_a_reason_and_is_not_repeated(tmp_path: Path) -> None:
    from ds2a.bench.matrix import cached_step, run_step

    def broken() -> None:
        raise UserError("calibration set is empty\nadd images to --data")

    assert run_step("export", lambda: None) is None
    assert run_step("export", broken) == "`ds2a export` failed: add images to --data"
    out = str(tmp_path / "m.int8.onnx")
    calls = []
    reason = cached_step(out, "calibrate", lambda: calls.append(broken()), False)
    assert reason == "`ds2a calibrate` failed: add images to --data"
    again = cached_step(out, "calibrate", lambda: calls.append(1), False)
    assert again == reason + " (earlier run; --rebuild retries)" and calls == []
    assert cached_step(out, "calibrate", lambda: calls.append(1), True) is None
    assert calls == [1] and not Path(out + ".failed").exists()


def _die() -> None:
    os._exit(9)  # a process killed during the step (out of memory)


def test_matrix_remembers_a_step_that_killed_the_process(tmp_path: Path) -> None:
    import multiprocessing

    from ds2a.bench.matrix import cached_step

    out = str(tmp_path / "m.fp16.onnx")
    child = multiprocessing.get_context("fork").Process(target=cached_step,
                                                        args=(out, "calibrate", _die, False))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    reason = cached_step(out, "calibrate", lambda: None, False)
    assert reason and "did not finish: the process died" in reason
    with pytest.raises(KeyboardInterrupt):  # stopped by the user: not remembered as a failure
        cached_step(out, "calibrate", lambda: (_ for _ in ()).throw(KeyboardInterrupt()), True)
    assert not Path(out + ".failed").exists()


def test_bench_options_map_onto_each_backends_keywords() -> None:
    from ds2a.bench import BenchOptions

    assert BenchOptions(cuda_graph=True).model_options("tensorrt", "m.engine") == {"cuda_graph": True}
    opts = BenchOptions(threads=2, device="cpu", size=(512, 512))
    assert opts.model_options("pytorch", "m.pt") == {"threads": 2, "device": "cpu", "input_size": (512, 512)}
    assert BenchOptions().model_options("onnxruntime", "m.onnx") == {}  # threads 0 = the backend's default
    with pytest.raises(UserError, match="--threads only applies"):
        opts.model_options("tensorrt", "m.engine")
    with pytest.raises(UserError, match="--size only applies to PyTorch"):
        BenchOptions(size=(512, 512)).model_options("onnxruntime", "m.onnx")
