"""Model metadata whose class list is a string or names a class twice is refused where the model opens,
naming the file, instead of being read as one-letter classes or merging two classes in every report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ds2a.errors import UserError
from ds2a.meta import ModelMeta

pytest.importorskip("onnx")
from fakes.onnx_models import threshold_onnx  # noqa: E402


@pytest.mark.parametrize("classes, words", [
    ("background", "'classes' must be a list of class names such as [\"background\", \"damage\"], not str "
                   "'background'"),
    (["background", "damage", "damage"], "class name 'damage' appears twice"),
    (["background", ""], "non-empty names"),
    (["background", 3], "non-empty names; found '3'"),
    ({"background": 0}, "not dict"),
    (4, "not int"),
])
def test_a_bad_class_list_is_refused(classes, words):
    with pytest.raises(ValueError) as exc:
        ModelMeta(arch="x", classes=classes)
    assert words in str(exc.value)
    with pytest.raises(ValueError, match="classes"):
        ModelMeta.from_json(json.dumps({"arch": "x", "classes": classes}))


def test_a_good_class_list_is_kept_in_order():
    assert ModelMeta(arch="x", classes=("background", "damage")).classes == ["background", "damage"]


def _with_classes(path: Path, classes) -> Path:
    import onnx

    threshold_onnx(path)
    model = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in model.metadata_props}["ds2a"])
    meta["classes"] = classes
    for p in model.metadata_props:
        if p.key == "ds2a":
            p.value = json.dumps(meta)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("classes, words", [("background", "must be a list of class names"),
                                            (["background", "dust", "dust"], "'dust' appears twice")])
def test_an_onnx_with_such_metadata_is_refused_when_it_opens(tmp_path, classes, words):
    from ds2a.runtime import open_model

    path = _with_classes(tmp_path / "m.onnx", classes)
    with pytest.raises(UserError) as exc:
        open_model(str(path))
    assert str(path) in str(exc.value) and words in str(exc.value) and "\n" not in str(exc.value)
