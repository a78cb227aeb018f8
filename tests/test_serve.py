"""`ds2a serve` refuses bad input before any server starts, and fixes the libpython trap for the user."""
from __future__ import annotations

import os
import socket
import sysconfig

import pytest

pytest.importorskip("pytriton", reason="ds2a serve needs nvidia-pytriton (pip install -e '.[serve]')")

from triton_server import DEMO_MODEL, free_ports

from ds2a.cli import main
from ds2a.serve import server


def _serve(capsys, *args: str):
    http, grpc, metrics = free_ports(3)
    argv = ["serve", *args]
    for opt, port in (("--http-port", http), ("--grpc-port", grpc), ("--metrics-port", metrics)):
        if opt not in args:
            argv += [opt, str(port)]
    code = main(argv + ["--host", "127.0.0.1"])
    return code, capsys.readouterr().err


def test_a_port_in_use_is_refused_naming_the_option(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, err = _serve(capsys, str(DEMO_MODEL), "--grpc-port", str(port))
    assert code == 2
    assert f"--grpc-port {port}: cannot listen on 127.0.0.1:{port}" in err and "pick a free port" in err


def test_the_same_port_twice_is_refused(capsys):
    port = str(free_ports(1)[0])
    code, err = _serve(capsys, str(DEMO_MODEL), "--http-port", port, "--metrics-port", port)
    assert code == 2 and f"--metrics-port {port} is also --http-port" in err


def test_a_model_that_does_not_load_is_refused(capsys, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    code, err = _serve(capsys, str(bad))
    assert code == 2 and "broken.onnx is not a loadable ONNX model" in err
    code, err = _serve(capsys, str(tmp_path / "missing.onnx"))
    assert code == 2 and "missing.onnx does not exist" in err
    code, err = _serve(capsys, "triton://127.0.0.1:1/ds2a")
    assert code == 2 and "hosts a model file" in err


def test_unknown_options_and_bad_values_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(DEMO_MODEL), "--max-batchsize", "4"])
    assert exc.value.code == 2 and "unrecognized arguments: --max-batchsize" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(DEMO_MODEL), "--instances", "0"])
    code, err = _serve(capsys, str(DEMO_MODEL), "--name", "bad/name")
    assert code == 2 and "--name 'bad/name'" in err
    code, err = _serve(capsys, str(DEMO_MODEL), "--grpc-port", "70000")
    assert code == 2 and "--grpc-port 70000 is not a TCP port" in err


def test_libpython_dir_goes_first_once(monkeypatch):
    libdir = sysconfig.get_config_var("LIBDIR")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/opt/a:{libdir}:/opt/b")
    server.libpython_first()
    assert os.environ["LD_LIBRARY_PATH"] == f"{libdir}:/opt/a:/opt/b"
    monkeypatch.delenv("LD_LIBRARY_PATH")
    server.libpython_first()
    assert os.environ["LD_LIBRARY_PATH"] == libdir


def test_max_batch_defaults_to_the_models_own_batch(tmp_path):
    """A fixed-batch model gets Triton batches of its size (so every instance takes requests); a dynamic one 8."""
    from test_triton_repository import tiny_onnx

    opts = server.ServeOptions(host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0)
    for model, expected in ((DEMO_MODEL, 1), (tiny_onnx(tmp_path / "dyn.onnx"), server.DYNAMIC_MAX_BATCH)):
        http, grpc, metrics = free_ports(3)
        opts.http_port, opts.grpc_port, opts.metrics_port = http, grpc, metrics
        s = server.Server(str(model), opts)
        try:
            assert s.max_batch == expected
        finally:
            s.stop()
    opts.max_batch = 3
    s = server.Server(str(DEMO_MODEL), opts)
    assert s.max_batch == 3
    s.stop()


def test_numpy_2_is_refused_before_the_server_starts(monkeypatch):
    """PyTriton's stub returns empty outputs under NumPy 2; serving them would be silent garbage."""
    from importlib.metadata import requires

    if not any("numpy" in r and "<2" in r for r in requires("nvidia-pytriton") or []):
        pytest.skip("this PyTriton does not pin NumPy 1")
    monkeypatch.setattr(server.np, "__version__", "2.1.0")
    with pytest.raises(server.UserError, match="PyTriton needs NumPy 1"):
        server.check_numpy()
    monkeypatch.setattr(server.np, "__version__", "1.26.4")
    server.check_numpy()


def test_backend_options_follow_the_one_table(tmp_path):
    """--threads is refused for an engine with the table's message, before the engine is looked at;
    ONNX Runtime takes it as its intra-op threads (ds2a/runtime/options.py)."""
    from ds2a.errors import UserError

    with pytest.raises(UserError, match="--threads only applies to ONNX Runtime and PyTorch models"):
        server.load_instances(str(tmp_path / "absent.engine"), server.ServeOptions(threads=2))
    models = server.load_instances(DEMO_MODEL, server.ServeOptions(threads=1, instances=1))
    try:
        assert models[0].session.get_session_options().intra_op_num_threads == 1
    finally:
        for m in models:
            m.close()
