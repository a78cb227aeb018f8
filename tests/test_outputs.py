"""Output paths: refused when they are an input (also a hard link or symlink of it), checked for
writability before the work, and written atomically (a failure leaves the old file as it was)."""
from __future__ import annotations

import os
import stat
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ds2a.errors import UserError
from ds2a.outputs import atomic_path, atomic_write, check_outputs, write_new


def test_output_that_is_an_input_is_refused_also_as_hard_link_or_symlink(tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"model")
    os.link(src, tmp_path / "hard.onnx")
    os.symlink(src, tmp_path / "soft.onnx")
    for out in (src, tmp_path / "hard.onnx", tmp_path / "soft.onnx", tmp_path / "." / "model.onnx"):
        with pytest.raises(UserError, match="same file as the input --model"):
            check_outputs([("--out", str(out))], [("--model", str(src))])
    assert src.read_bytes() == b"model"
    assert check_outputs([("--out", str(tmp_path / "new.onnx"))], [("--model", str(src))]) == [
        os.path.realpath(tmp_path / "new.onnx")]


def test_the_same_output_given_twice_is_refused(tmp_path):
    with pytest.raises(UserError, match="--markdown .* same file as --json"):
        check_outputs([("--json", str(tmp_path / "r.txt")), ("--markdown", str(tmp_path / "sub" / ".." / "r.txt"))])


def test_folders_and_unwritable_places_are_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        check_outputs([("--json", str(tmp_path))])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write --.* folder"):
        check_outputs([("--json", str(blocker / "out.json"))])
    with pytest.raises(UserError, match="empty path"):
        check_outputs([("--csv", "")])
    # a missing folder is created (as the writers used to do), and nothing else is left there
    assert check_outputs([("--json", str(tmp_path / "a" / "b" / "o.json"))])
    assert os.listdir(tmp_path / "a" / "b") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(UserError, match="cannot write --.* folder"):
            check_outputs([("--csv", str(ro / "x.csv"))])
    finally:
        ro.chmod(0o755)


def test_atomic_write_replaces_only_on_success(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(str(out)) as fh:
            fh.write("half")
            raise RuntimeError("crash in the middle")
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]
    with atomic_write(str(out)) as fh:
        fh.write("new")
    assert out.read_text() == "new" and os.listdir(tmp_path) == ["r.json"]


def test_atomic_path_keeps_the_extension_follows_symlinks_and_writes_devices_in_place(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    os.symlink(target, link)
    with atomic_path(str(link)) as tmp:
        assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as fh:
            fh.write(b"new")
    assert os.path.islink(link) and target.read_bytes() == b"new"
    with atomic_write(os.devnull) as fh:  # /dev/null is written, never replaced by a regular file
        fh.write("x")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_full_disk_during_the_write_is_a_user_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    out.write_text("old")

    def full(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device"):
        with atomic_write(str(out)) as fh:
            fh.write("new")
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["r.csv"]


def test_write_new_never_replaces(tmp_path):
    p = tmp_path / "a.jpg"
    write_new(str(p), b"1")
    with pytest.raises(FileExistsError):
        write_new(str(p), b"2")
    assert p.read_bytes() == b"1"


# -- property: any combination of outputs and inputs is a clear UserError or a well-formed result --

NAMES = ["a", "b", "sub/a", "sub", "lnk", "hard", "ro/x", "file/x", "", "./a", "sub/../a"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(outs=st.lists(st.sampled_from(NAMES + [None]), min_size=1, max_size=4),
       ins=st.lists(st.sampled_from(NAMES + [None]), max_size=3))
def test_property_outputs_are_checked_or_refused(outs, ins):
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "sub"))
        for name in ("a", "sub/a", "file"):
            with open(os.path.join(d, name), "w") as fh:
                fh.write(name)
        os.link(os.path.join(d, "a"), os.path.join(d, "hard"))
        os.symlink(os.path.join(d, "sub", "a"), os.path.join(d, "lnk"))
        before = {n: open(os.path.join(d, n)).read() for n in ("a", "sub/a", "file")}

        def path(n):
            return None if n is None else n if n == "" else os.path.join(d, n)

        outputs = [(f"--out{i}", path(n)) for i, n in enumerate(outs)]
        inputs = [(f"--in{i}", path(n)) for i, n in enumerate(ins)]
        try:
            result = check_outputs(outputs, inputs)
        except UserError as exc:
            assert str(exc) and "\n" not in str(exc) and "--" in str(exc)
        else:
            given_outs = [p for _, p in outputs if p is not None]
            assert len(result) == len(given_outs) == len(set(result))
            for r in result:
                assert os.path.isabs(r) and not os.path.isdir(r) and os.access(os.path.dirname(r), os.W_OK)
                for _, p in inputs:
                    if p is not None and os.path.exists(p) and os.path.exists(r):
                        assert not os.path.samefile(r, p)
        assert before == {n: open(os.path.join(d, n)).read() for n in ("a", "sub/a", "file")}


# -- every command checks its outputs before its work ------------------------------------------------

@pytest.fixture()
def files(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really a model: the checks run before it is opened")
    os.link(model, tmp_path / "hard.onnx")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"video")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is expected")
    return tmp_path, model, clip, blocker


def _refused(argv, words, capsys):
    from ds2a.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_commands_refuse_an_output_that_is_an_input(files, capsys):
    d, model, clip, _ = files
    hard, before = str(d / "hard.onnx"), model.read_bytes()
    _refused(["eval", "--model", str(model), "--data", str(d), "--json", hard], "same file as the input --model",
             capsys)
    _refused(["bench", "--model", str(model), "--plot", hard], "same file as the input --model", capsys)
    _refused(["bench", "--model", str(model), "--json", str(d / "r"), "--markdown", str(d / "r")],
             "same file as --json", capsys)
    _refused(["calibrate", str(model), "--data", str(d), "--precision", "int8", "--out", hard],
             "same file as the input MODEL", capsys)
    _refused(["calibrate", str(model), "--data", str(d), "--precision", "int8", "--out", str(d / "o.onnx"),
              "--cache", hard], "--cache", capsys)
    _refused(["build-engine", str(model), "--out", hard], "same file as the input ONNX", capsys)
    _refused(["inspect", "--model", str(model), "--db", hard, "--headless"], "same file as the input --model",
             capsys)
    _refused(["inspect", "--model", str(model), "--source", f"file://{clip}", "--output", str(clip), "--headless"],
             "same file as the input --source", capsys)
    _refused(["inspect", "--model", str(model), "--db", str(d / "x.mp4"), "--output", str(d / "x.mp4"),
              "--headless"], "same file as --db", capsys)
    assert model.read_bytes() == before and clip.read_bytes() == b"video"


def test_training_side_commands_refuse_an_output_that_is_an_input(tmp_path, capsys):
    pytest.importorskip("torch")
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"checkpoint")
    os.link(ckpt, tmp_path / "ckpt.onnx")
    _refused(["export", str(ckpt), "--out", str(tmp_path / "ckpt.onnx")], "same file as the input CHECKPOINT",
             capsys)
    _refused(["convert-official", str(ckpt), str(tmp_path / "ckpt.onnx"), "--arch", "r18"],
             "same file as the input INPUT", capsys)
    assert ckpt.read_bytes() == b"checkpoint"


def test_unwritable_outputs_are_found_before_the_model_is_opened(files, capsys):
    d, _, _, blocker = files
    missing = str(d / "missing.onnx")  # opening it would fail: the output error must come first
    bad = str(blocker / "out.json")
    _refused(["eval", "--model", missing, "--data", str(d), "--json", bad], "--json", capsys)
    _refused(["bench", "--model", missing, "--markdown", bad], "--markdown", capsys)
    _refused(["calibrate", missing, "--data", str(d), "--precision", "fp16", "--out", bad], "--out", capsys)
    _refused(["build-engine", missing, "--out", bad], "--out", capsys)
    _refused(["inspect", "--model", missing, "--output", str(blocker / "v.mp4"), "--headless"], "--output", capsys)
    _refused(["report", missing, "--csv", bad], "--csv", capsys)


# -- folder and glob inputs stand for every file in them ------------------------------------------------------

@pytest.fixture()
def dataset(tmp_path):
    data = tmp_path / "data"
    for sub in ("images/val", "masks/val"):
        (data / sub).mkdir(parents=True)
    (data / "classes.txt").write_text("background\ndamage\n")
    (data / "images" / "val" / "a.png").write_bytes(b"image")
    (data / "masks" / "val" / "a.png").write_bytes(b"mask")
    return data


@pytest.mark.parametrize("inside", ["classes.txt", "images/val/a.png", "masks/val/a.png"])
def test_eval_json_onto_a_file_inside_data_is_refused(tmp_path, dataset, capsys, inside):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"never opened")
    target = dataset / inside
    before = target.read_bytes()
    _refused(["eval", "--model", str(model), "--data", str(dataset), "--json", str(target)],
             "is a file inside the input --data", capsys)
    assert target.read_bytes() == before


@pytest.mark.parametrize("source", ["{d}", "{d}/*.mp4", "file://{d}"])
def test_inspect_output_onto_a_video_of_a_folder_or_glob_source_is_refused(tmp_path, capsys, source):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"never opened")
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "line.mp4").write_bytes(b"video")
    words = "same file as the input --source"
    _refused(["inspect", "--model", str(model), "--source", source.format(d=clips), "--output",
              str(clips / "line.mp4"), "--headless"], words, capsys)
    assert (clips / "line.mp4").read_bytes() == b"video"


def test_a_folder_source_counts_only_the_files_it_reads(tmp_path, capsys):
    """An existing database beside the photos is not read by the folder source: a second run may append to it."""
    import cv2
    import numpy as np
    from fakes.onnx_models import threshold_onnx

    from ds2a.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.full((16, 16, 3), 200, np.uint8))
    model = threshold_onnx(tmp_path / "thr.onnx")
    db = photos / "inspect.sqlite"
    for _ in range(2):
        assert main(["inspect", "--model", str(model), "--source", str(photos), "--db", str(db), "--headless"]) == 0
    capsys.readouterr()


def test_folder_inputs_refuse_existing_files_and_hard_links_but_allow_new_files(tmp_path, dataset):
    os.link(dataset / "classes.txt", tmp_path / "linked.txt")
    with pytest.raises(UserError, match=r"same file as .*classes.txt in the input --data \(a hard link\)"):
        check_outputs([("--json", str(tmp_path / "linked.txt"))], [("--data", str(dataset))])
    new = dataset / "report.json"  # a new file cannot be an input of this command
    assert check_outputs([("--json", str(new))], [("--data", str(dataset))]) == [os.path.realpath(new)]
    (tmp_path / "old.json").write_text("{}")  # an existing file outside every input folder
    assert check_outputs([("--json", str(tmp_path / "old.json"))], [("--data", str(dataset)),
                                                                    ("--source", "demo://?frames=3")])
    with pytest.raises(UserError, match="same file as the input --data"):
        check_outputs([("--json", str(dataset / "images" / "val" / "a.png"))], [("--data", f"{dataset}/*/val/*.png")])
