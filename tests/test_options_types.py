"""Options dataclasses check their own field types (ds2a/options_check.py): a Python caller's wrong type is
one clear UserError naming the class and field, never a string iterated letter by letter or a raw TypeError."""
from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path

import pytest

from ds2a.errors import UserError
from ds2a.inspect.run import InspectOptions

OPTIONS = [("ds2a.inspect.run", "InspectOptions"), ("ds2a.eval.runner", "EvalOptions"),
           ("ds2a.bench.runner", "BenchOptions"), ("ds2a.bench.matrix", "MatrixOptions"),
           ("ds2a.web.station", "StationOptions"), ("ds2a.data.synth", "SynthOptions"),
           ("ds2a.serve.server", "ServeOptions"), ("ds2a.engine.builder", "BuildOptions"),
           ("ds2a.export.onnx_export", "ExportOptions"), ("ds2a.precision.pipeline", "CalibrationOptions"),
           ("ds2a.engine.verify", "VerifyOptions")]


@pytest.mark.parametrize("field, value, words", [
    ("outputs", "out.mp4", "InspectOptions.outputs is 'out.mp4' (str); it must be a list of text; for one item "
                           "give a list: outputs=['out.mp4']"),
    ("max_frames", "5", "InspectOptions.max_frames is '5' (str); it must be a whole number or None"),
    ("duration", "10", "InspectOptions.duration is '10' (str); it must be a number or None"),
    ("save_fail", 5, "InspectOptions.save_fail is 5 (int); it must be text or None"),
    ("max_frames", 2.5, "max_frames is 2.5 (float)"),
    ("headless", "yes", "headless is 'yes' (str); it must be True or False"),
    ("roi", (1, 2, 3), "roi is (1, 2, 3) (tuple); it must be a tuple of 4 whole numbers or None"),
    ("backend_options", ["x"], "backend_options is ['x'] (list); it must be a dict"),
    ("station", {"web": "127.0.0.1:8080"}, "station is {'web': '127.0.0.1:8080'} (dict); it must be a StationOptions"),
    ("outputs", ["a.mp4", 3], "outputs is ['a.mp4', 3] (list)"),
])
def test_inspect_options_refuse_a_wrong_type_naming_the_field(field, value, words):
    with pytest.raises(UserError) as exc:
        InspectOptions(model="m.onnx", **{field: value})
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_inspect_options_take_right_types_and_paths():
    opts = InspectOptions(model=Path("m.onnx"), outputs=[Path("out.mp4"), "display://0"], max_frames=5, duration=10,
                          save_fail=Path("fail"), roi=[0, 0, 64, 64], fps=30)
    assert opts.model == "m.onnx" and opts.outputs == ["out.mp4", "display://0"] and opts.save_fail == "fail"
    assert InspectOptions(model="m.onnx").outputs == []


def test_a_wrong_type_never_reaches_the_run(tmp_path):
    from ds2a.inspect.run import inspect

    with pytest.raises(UserError, match="InspectOptions.outputs"):
        inspect(InspectOptions(model=str(tmp_path / "m.onnx"), outputs=str(tmp_path / "out.mp4")))  # type: ignore
    assert list(tmp_path.iterdir()) == []  # no o/, u/, t/ folders


def _wrong_value(tp):
    """A value that does not fit annotation `tp`, or None when there is no obvious one."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _wrong_value(inner[0]) if inner else None
    if tp is int or tp is float:
        return "5"
    if tp is bool:
        return "yes"
    if tp is str:
        return 5
    if origin in (list, tuple, dict):
        return 3.5
    return None


@pytest.mark.parametrize("module, name", OPTIONS)
def test_every_options_dataclass_checks_its_fields(module, name):
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as exc:  # torch / onnx where they are not installed
        pytest.skip(f"{module}: {exc}")
    hints = typing.get_type_hints(cls)
    required = {f.name: _sample(hints[f.name]) for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    cls(**required)  # right types: accepted
    checked = 0
    for f in dataclasses.fields(cls):
        bad = _wrong_value(hints[f.name])
        if bad is None:
            continue
        with pytest.raises(UserError, match=rf"^{name}\.{f.name} is "):
            cls(**{**required, f.name: bad})
        checked += 1
    assert checked >= 2


def _sample(tp):
    return {str: "x", int: 1, float: 1.0, bool: False}.get(tp, "x")
