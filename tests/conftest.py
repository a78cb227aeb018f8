"""Fixtures shared by the test files: tiny models for each backend and a real Triton server.

Plain helpers (tiny ONNX graphs, the threshold Segmenter, reading a records database) are in
tests/fakes/. This file must import under Python 3.8 without torch (.ci/py38_tests.py runs the
device-side tests there): torch and the heavier helpers are imported inside the fixtures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest


@pytest.fixture
def tiny_onnx_model(tmp_path: Path) -> Path:
    """fakes/onnx_models.py's 1x1-conv ONNX (32x48, classes fakes.onnx_models.CLASSES, batch 1, with logits)."""
    from fakes.onnx_models import tiny_onnx

    return tiny_onnx(tmp_path / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ds2a_tiny checkpoint at 32x32 (skipped without torch, e.g. under Python 3.8)."""
    pytest.importorskip("torch", reason="a ds2a checkpoint needs torch (pip install -e '.[train]')")
    import torch

    from ds2a.model import build_model, save_checkpoint

    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    with torch.random.fork_rng():  # the same weights whichever test asks first: no test depends on the order
        torch.manual_seed(0)
        save_checkpoint(str(path), build_model("ds2a_tiny", input_size=(32, 32)))
    return path


@pytest.fixture
def trt_engine(tmp_path: Path) -> Tuple[Any, Any, str]:
    """(fake tensorrt, fake CUDA, engine path): a batch-1 FP16 8x8 engine built by the real builder code
    against a fake of the newest TensorRT 10 (tests/trt_stubs); its class map is blue // 64.
    Skipped where that release's binding wheel is unavailable."""
    from trt_stubs.helpers import NEWEST_10, build, fake_for
    from trt_stubs.onnx_models import make_onnx

    fake, cuda = fake_for(NEWEST_10)
    engine = str(tmp_path / "m.engine")
    build(fake, cuda, make_onnx(tmp_path / "m.onnx", "fp16"), engine, workspace_gib=1)
    return fake, cuda, engine


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real `ds2a serve` of the demo model with --max-batch 4 (tests/triton_server.py) for the whole
    session, or a skip saying what is missing. Starting one takes 5-20 s; test_triton_serving.py and
    test_backend_contract.py share it, so no test may stop or kill it."""
    from triton_server import ServeProcess, serve_skip_reason

    why = serve_skip_reason()
    if why:
        pytest.skip(why)
    proc = ServeProcess(tmp_path_factory.mktemp("serve") / "serve.log", extra=["--max-batch", "4"]).start()
    yield proc
    assert proc.stop() == 0, proc.log()  # SIGTERM: a clean stop


# --- every inspection test ends with `ds2a report DB --check` on the databases it wrote ---------------------
INSPECTION_TESTS = ("test_inspect_", "test_part_verdicts", "test_triton_station", "test_shadow", "test_recipes",
                    "test_review", "test_trigger")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "records_check_skip(reason): this test leaves a database that breaks an "
                                       "invariant on purpose; the end-of-test records check skips it")


@pytest.fixture(autouse=True)
def unsaved_rows_stay_in_the_test(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Rows a test's database refuses fall back to a temp folder, never to the home folder (~/.ds2a/unsaved)."""
    monkeypatch.setenv("DS2A_UNSAVED_DIR", str(tmp_path_factory.mktemp("unsaved")))


@pytest.fixture(autouse=True)
def records_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test of an inspection test file, every ds2a database (*.sqlite) written under its tmp_path
    must pass ds2a/records/check.py (`ds2a report DB --check`): one verdict per part, PASS only for fully
    inspected parts, truthful run records. Files that are not ds2a databases (tests of refusals) are skipped."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    if (not name.startswith(INSPECTION_TESTS) or "tmp_path" not in request.fixturenames
            or request.node.get_closest_marker("records_check_skip") is not None):
        yield
        return
    tmp_path: Path = request.getfixturevalue("tmp_path")  # now: torn down after this fixture
    yield
    from ds2a.errors import UserError
    from ds2a.records.check import check_database, format_check
    from ds2a.records.database import connect

    for db in sorted(tmp_path.rglob("*.sqlite")):
        try:
            con = connect(str(db), create=False, readonly=True)
        except UserError:
            continue  # not ours, empty or damaged on purpose: the test itself says what it expects
        try:
            runs, violations = check_database(con)
        finally:
            con.close()
        assert not violations, format_check(str(db), runs, violations)
