"""The table in ds2a/runtime/options.py is what open_model enforces, from Python and from the CLI flags.

Every backend refuses an option it lacks before anything loads, with one message shape
("<option> only applies to X models; MODEL runs on Y: <fix>"); the table matches the
constructors' keyword-only signatures, so it cannot drift from what the backends take.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
from typing import Any, Dict, List

import numpy as np
import pytest

from ds2a.errors import UserError
from ds2a.runtime import BACKENDS, open_model
from ds2a.runtime.options import OPTIONS, TITLES, add_backend_arguments, check_options, option_names, options_from_args

MODELS = {"onnxruntime": "m.onnx", "tensorrt": "m.engine", "pytorch": "m.pt", "triton": "triton://127.0.0.1:1/ds2a"}
SHAPE = r"only applies to [A-Za-z ,]+ models; {model} runs on {title}: \S"


def _foreign_options() -> List[Any]:
    """(backend, an option some other backend takes and this one lacks) for every such pair."""
    pairs = []
    for backend in OPTIONS:
        for option in sorted({o for b in OPTIONS for o in option_names(b)} - set(option_names(backend))):
            pairs.append((backend, option))
    return pairs


def _join(names: List[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _parse(argv: List[str], **kw: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser, cuda_graph=True, size=True, **kw)
    return parser.parse_args(argv)


def test_the_table_covers_every_backend_and_matches_its_constructor() -> None:
    assert set(OPTIONS) == set(BACKENDS)
    for backend, (module_name, class_name) in BACKENDS.items():
        if backend == "onnxruntime":
            pytest.importorskip("onnxruntime")  # imported by its module; the others import theirs lazily
        cls = getattr(importlib.import_module(module_name), class_name)
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, path
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), backend  # no **kw, no positionals
        assert sorted(p.name for p in params) == sorted(option_names(backend)), backend


@pytest.mark.parametrize("backend, option", _foreign_options())
def test_open_model_refuses_an_option_the_backend_lacks_before_loading(tmp_path, backend, option) -> None:
    # the file need not exist: the option is refused before the file is looked at or a library imported
    model = MODELS[backend] if backend == "triton" else str(tmp_path / MODELS[backend])
    takers = [TITLES[b] for b in OPTIONS if option in option_names(b)]
    with pytest.raises(UserError) as exc:
        open_model(model, backend=backend, **{option: 1})
    text = str(exc.value)
    assert text.startswith(f"option '{option}' only applies to {_join(takers)} models; ")
    assert re.search(SHAPE.format(model=re.escape(model), title=TITLES[backend]), text), text


def test_none_means_the_default_and_known_options_pass_through() -> None:
    assert check_options("pytorch", {"device": None, "threads": 2}, "m.pt") == {"threads": 2}
    assert check_options("triton", {"device": None}, "triton://h/m") == {}  # a --device left unset is no device
    with pytest.raises(UserError, match="server chooses its device"):
        check_options("triton", {"device": "cuda"}, "triton://h/m")
    with pytest.raises(UserError, match=r"option 'intra_op_threads' .* runs on PyTorch: pass threads= instead"):
        check_options("pytorch", {"intra_op_threads": 2}, "m.pt")  # the same setting under the backend's name


@pytest.mark.parametrize("argv, backend, words", [
    (["--threads", "2"], "tensorrt", "--threads only applies to ONNX Runtime and PyTorch models"),
    (["--threads", "2"], "triton", "--threads only applies to ONNX Runtime and PyTorch models"),
    (["--cuda-graph"], "onnxruntime", "--cuda-graph only applies to TensorRT models"),
    (["--cuda-graph"], "pytorch", "--cuda-graph only applies to TensorRT models"),
    (["--size", "64x64"], "onnxruntime", "--size only applies to PyTorch models"),
    (["--size", "64x64"], "tensorrt", "--size only applies to PyTorch models"),
    (["--device", "cuda"], "triton", "--device only applies to ONNX Runtime, TensorRT and PyTorch models"),
])
def test_cli_flags_are_refused_with_the_same_message_shape(argv, backend, words) -> None:
    model = MODELS[backend]
    with pytest.raises(UserError) as flag_exc:
        options_from_args(_parse(argv), backend, model)
    assert str(flag_exc.value).startswith(words)
    assert re.search(SHAPE.format(model=re.escape(model), title=TITLES[backend]), str(flag_exc.value))


@pytest.mark.parametrize("backend, argv, expected", [
    ("onnxruntime", ["--threads", "2", "--device", "cuda"], {"intra_op_threads": 2, "device": "cuda"}),
    ("pytorch", ["--threads", "2", "--device", "CUDA:1", "--size", "64x96"],
     {"threads": 2, "device": "cuda:1", "input_size": (64, 96)}),  # PyTorch takes --threads (torch.set_num_threads)
    ("tensorrt", ["--cuda-graph", "--device", "1"], {"cuda_graph": True, "device": "1"}),
    ("triton", [], {}),
])
def test_cli_flags_map_onto_keywords_the_table_accepts(backend, argv, expected: Dict[str, Any]) -> None:
    options = options_from_args(_parse(argv), backend, MODELS[backend])
    assert options == expected
    assert check_options(backend, options, MODELS[backend]) == expected


def test_threads_zero_is_refused_unless_the_command_means_all_cores() -> None:
    with pytest.raises(UserError, match="--threads 0: give at least 1"):
        options_from_args(_parse(["--threads", "0"]), "onnxruntime", "m.onnx")
    assert options_from_args(_parse(["--threads", "0"], zero_threads_is_all=True), "tensorrt", "m.engine") == {}
    assert options_from_args(_parse([], zero_threads_is_all=True), "onnxruntime", "m.onnx") == {}


def test_bad_device_and_size_are_refused_with_the_fix() -> None:
    with pytest.raises(UserError, match="--device 'foo' is not a device; use cpu, cuda or cuda:N"):
        options_from_args(_parse(["--device", "foo"]), "pytorch", "m.pt")
    with pytest.raises(UserError, match="not HxW"):
        options_from_args(_parse(["--size", "big"]), "pytorch", "m.pt")


def test_a_namespace_without_the_flags_gives_no_options() -> None:
    assert options_from_args(argparse.Namespace(), "onnxruntime", "m.onnx") == {}


def test_options_from_the_cli_open_a_real_onnx_model(tiny_onnx_model) -> None:
    pytest.importorskip("onnxruntime")
    options = options_from_args(_parse(["--threads", "1", "--device", "cpu"]), "onnxruntime", str(tiny_onnx_model))
    with open_model(str(tiny_onnx_model), backend="onnxruntime", **options) as seg:
        assert seg.backend == "onnxruntime"
        assert seg.infer_batch(np.zeros((1, 32, 48, 3), np.uint8))[0].class_map.shape == (32, 48)
