"""Calibration image selection: deterministic, class-stratified, robust to bad files (torch-free)."""
import cv2
import numpy as np
import pytest

from ds2a.cli import main
from ds2a.data.calibration import select_calibration_set
from ds2a.errors import UserError
from ds2a.precision.calib_data import FrameReader

SIZE = (32, 32)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    assert main(["synth", str(root), "--train", "16", "--test", "4", "--size", "64x64", "--seed", "0"]) == 0
    return root


def image_folder(tmp_path, n_good=4, n_bad=0):
    rng = np.random.default_rng(0)
    for i in range(n_good):
        cv2.imwrite(str(tmp_path / f"good_{i}.png"), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    for i in range(n_bad):
        (tmp_path / f"bad_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return tmp_path


def test_selection_is_deterministic_per_seed(synth):
    a = select_calibration_set(str(synth), SIZE, num_images=6, seed=1)
    b = select_calibration_set(str(synth), SIZE, num_images=6, seed=1)
    c = select_calibration_set(str(synth), SIZE, num_images=6, seed=2)
    assert a.names == b.names and a.fingerprint() == b.fingerprint()
    assert a.names != c.names
    assert a.frames.shape == (6, 32, 32, 3) and a.frames.dtype == np.uint8


def test_every_defect_class_is_represented_even_with_few_images(synth):
    calib = select_calibration_set(str(synth), SIZE, num_images=3, seed=0, num_classes=4)
    assert all(calib.class_counts.get(k, 0) >= 1 for k in (1, 2, 3)), calib.class_counts


def test_test_split_can_be_chosen(synth):
    calib = select_calibration_set(str(synth), SIZE, num_images=50, seed=0, split="test", min_images=1)
    assert len(calib.names) == 4 and all(n.startswith("test/") for n in calib.names)


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    folder = image_folder(tmp_path, n_good=4, n_bad=3)
    calib = select_calibration_set(str(folder), SIZE, num_images=10, seed=0, min_images=2)
    assert len(calib.names) == 4 and len(calib.skipped) == 3
    assert all("bad_" in name for name, _ in calib.skipped)


def test_too_few_readable_images_fail_with_counts(tmp_path):
    folder = image_folder(tmp_path, n_good=1, n_bad=2)
    with pytest.raises(UserError, match="only 1 readable.*2 unreadable"):
        select_calibration_set(str(folder), SIZE, num_images=8, seed=0)


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(UserError, match="no images"):
        select_calibration_set(str(tmp_path), SIZE)


def test_missing_source_and_single_image_are_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        select_calibration_set(str(tmp_path / "nope"), SIZE)
    image_folder(tmp_path, n_good=1)
    with pytest.raises(UserError, match="single image"):
        select_calibration_set(str(tmp_path / "good_0.png"), SIZE)


def test_manifest_paths_are_relative_to_the_manifest(tmp_path):
    (tmp_path / "imgs").mkdir()
    image_folder(tmp_path / "imgs", n_good=3)
    manifest = tmp_path / "calib.txt"
    manifest.write_text("# calibration set\nimgs/good_0.png\nimgs/good_2.png  # comment\n\n")
    calib = select_calibration_set(str(manifest), SIZE, num_images=5, seed=0, min_images=1)
    assert sorted(n.split("/")[-1] for n in calib.names) == ["good_0.png", "good_2.png"]


def test_empty_manifest_is_refused(tmp_path):
    manifest = tmp_path / "calib.txt"
    manifest.write_text("# nothing\n")
    with pytest.raises(UserError, match="no image paths"):
        select_calibration_set(str(manifest), SIZE)


def test_reader_batches_uint8_or_normalised_float(synth):
    calib = select_calibration_set(str(synth), SIZE, num_images=5, seed=0)
    r8 = FrameReader(calib, "images", batch=2, float_input=False, mean=(0, 0, 0), std=(1, 1, 1))
    batches = list(iter(r8.get_next, None))
    assert len(batches) == 2 == len(r8) and batches[0]["images"].shape == (2, 32, 32, 3)
    rf = FrameReader(calib, "images", batch=1, float_input=True, mean=(0, 0, 0), std=(1, 1, 1))
    x = rf.get_next()["images"]
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert np.allclose(x[0, 0], calib.frames[0][..., 2])  # channel 0 is R (BGR -> RGB)


def test_reader_serves_a_range_of_batches_for_stepwise_collection(synth):
    calib = select_calibration_set(str(synth), (32, 32), 6, seed=0)
    reader = FrameReader(calib, "images", 2, False, (0, 0, 0), (1, 1, 1))
    reader.set_range(1, 3)
    got = list(iter(reader.get_next, None))
    assert len(got) == 2 and np.array_equal(got[0]["images"], calib.frames[2:4])
    reader.set_range(0, 1)
    assert np.array_equal(reader.get_next()["images"], calib.frames[0:2]) and reader.get_next() is None


def test_calibration_steps_fit_the_memory_budget():
    from ds2a.precision.int8 import calibration_stride

    assert calibration_stride(64, 63 * 2**20) == 32  # the demo model: two steps of 32 images under 2 GiB
    assert calibration_stride(64, 10 * 2**20) == 64  # small tensors: one step, as before
    assert calibration_stride(64, 5 * 2**30) == 1  # one image over budget: one at a time, never all 64
    assert calibration_stride(61, 100 * 2**20) == 1  # prime count: steps must divide it
    assert calibration_stride(60, 100 * 2**20) == 20


def test_ort_calibration_never_holds_all_images_when_they_exceed_the_budget(synth, tmp_path, monkeypatch):
    """ORT's calibrator keeps every batch's tensors until collect_data returns: it must get bounded steps."""
    import onnx
    from fakes.onnx_models import toy_model
    from onnxruntime.quantization import calibrate as ort_calibrate

    import ds2a.precision.int8 as int8

    onnx.save(toy_model(), str(tmp_path / "toy.onnx"))
    per_batch = int8.calibrated_bytes_per_batch(toy_model(), ["Conv"])
    assert per_batch > 32 * 32 * 16 * 4  # at least the 16-channel conv output of one 32x32 frame
    monkeypatch.setattr(int8, "CALIB_BUDGET_BYTES", 2 * per_batch)
    steps = []
    real = ort_calibrate.HistogramCalibrater.collect_data

    def counting(self, reader):
        n = len(reader) if reader._range[1] is None else reader._range[1] - reader._range[0]
        steps.append(n)
        return real(self, reader)

    monkeypatch.setattr(ort_calibrate.HistogramCalibrater, "collect_data", counting)
    assert main(["calibrate", str(tmp_path / "toy.onnx"), "--data", str(synth), "--num-images", "6", "--precision",
                 "int8", "--target", "onnxruntime", "--no-cache", "--out", str(tmp_path / "t.onnx")]) == 0
    assert steps == [2, 2, 2]
