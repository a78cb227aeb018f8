"""Dataset readers: layouts, class handling, the fixed split rule, every bad input, and the torch-free import."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from ds2a.cli import main as cli_main
from ds2a.data import (
    Crack500Dataset,
    FolderDataset,
    MBSDDataset,
    detect_layout,
    open_dataset,
    read_image,
    split_names,
    write_dataset,
)
from ds2a.errors import UserError
from ds2a.meta import MBSD_CLASSES, MBSD_PALETTE

# Real images (CrackForest, Magnetic-Tile subsets) are never distributed with ds2a (non-commercial terms):
# the environment variable DS2A_REAL_DATA alone names the folder; the tests skip, saying why, without it.
REAL_ENV = "DS2A_REAL_DATA"


def real_subset(name: str) -> Path:
    """The folder of one real subset under $DS2A_REAL_DATA, or skip the test with the reason."""
    root = os.environ.get(REAL_ENV, "")
    if not root:
        pytest.skip(f"{REAL_ENV} is not set: point it at the folder holding the real subsets ({name}/)")
    folder = Path(root) / name
    if not folder.is_dir():
        pytest.skip(f"{REAL_ENV}={root} has no {name}/ folder")
    return folder


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def _pair(root: Path, name: str, label: int = 1, hw=(16, 20), gray: bool = False,
          image_dir: str = "images", mask_dir: str = "masks", ext: str = ".png") -> None:
    rng = np.random.default_rng(list(name.encode()))
    shape = hw if gray else (*hw, 3)
    _write(root / image_dir / f"{name}{ext}", rng.integers(0, 256, shape, dtype=np.uint8))
    mask = np.zeros(hw, np.uint8)
    mask[2:6, 3:9] = label
    _write(root / mask_dir / f"{name}.png", mask)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for i in range(10):
        _pair(tmp_path, f"img{i:02d}", label=1 + i % 2)
    return tmp_path


# ---------------------------------------------------------------- layouts


def test_mbsd_layout_reads_synthetic_dataset_exactly(tmp_path: Path) -> None:
    write_dataset(tmp_path, n_train=3, n_test=2, size_hw=(64, 64), seed=1)
    assert detect_layout(tmp_path) == "mbsd"
    train, test = open_dataset(tmp_path, "train"), open_dataset(tmp_path, "test")
    assert isinstance(train, MBSDDataset) and (len(train), len(test)) == (3, 2)
    assert train.classes == list(MBSD_CLASSES) and train.palette == list(MBSD_PALETTE)
    s = train[1]
    assert s.name == train.names[1] and s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    on_disk = cv2.imread(str(tmp_path / "ann_dir" / "train" / f"{s.name}.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(s.mask, on_disk)
    assert np.array_equal(s.image, cv2.imread(str(tmp_path / "img_dir" / "train" / f"{s.name}.jpg")))


def test_crack500_split_folders_map_255_to_crack(tmp_path: Path) -> None:
    for split, n in (("traincrop", 3), ("testcrop", 2)):
        for i in range(n):
            _write(tmp_path / split / f"c{i}.jpg", np.full((8, 10, 3), 90, np.uint8))
            m = np.zeros((8, 10), np.uint8)
            m[3, :] = 255
            _write(tmp_path / split / f"c{i}_mask.png", m)
    assert detect_layout(tmp_path) == "crack500"
    ds = open_dataset(tmp_path, "train")
    assert isinstance(ds, Crack500Dataset) and len(ds) == 3 and ds.classes == ["background", "crack"]
    assert set(np.unique(ds[0].mask)) == {0, 1} and ds[0].mask[3].all() and ds[0].name == "c0"
    assert len(open_dataset(tmp_path, "test")) == 2


def test_crack500_masks_with_grey_edges_or_stored_as_0_1(tmp_path: Path) -> None:
    _write(tmp_path / "a.jpg", np.zeros((4, 4, 3), np.uint8))
    _write(tmp_path / "a_mask.png", np.array([[0, 100, 128, 255]] * 4, np.uint8))
    _write(tmp_path / "b.jpg", np.zeros((4, 4, 3), np.uint8))
    _write(tmp_path / "b_mask.png", np.array([[0, 1, 1, 0]] * 4, np.uint8))
    ds = Crack500Dataset(tmp_path, "all")
    assert ds[0].mask[0].tolist() == [0, 0, 1, 1] and ds[1].mask[0].tolist() == [0, 1, 1, 0]


def test_crack500_flat_folder_uses_split_rule(tmp_path: Path) -> None:
    for i in range(10):
        _write(tmp_path / f"c{i}.jpg", np.full((8, 10, 3), 90, np.uint8))
        _write(tmp_path / f"c{i}_mask.png", np.zeros((8, 10), np.uint8))
    train, test = Crack500Dataset(tmp_path, "train"), Crack500Dataset(tmp_path, "test")
    val = Crack500Dataset(tmp_path, "val")
    assert test.names == ["c4", "c9"] and val.names == ["c3"] and len(train) == 7


def test_folder_dataset_gray_images_become_bgr_and_classes_inferred(tmp_path: Path) -> None:
    for i in range(5):
        _pair(tmp_path, f"g{i}", label=i % 3 + 1, gray=True, ext=".bmp")
    ds = open_dataset(tmp_path, "all")
    assert isinstance(ds, FolderDataset)
    assert ds.classes == ["background", "class_1", "class_2", "class_3"]
    img = ds[0].image
    assert img.shape == (16, 20, 3) and np.array_equal(img[..., 0], img[..., 2])


def test_folder_classes_from_classes_txt_and_explicit_argument(folder: Path) -> None:
    (folder / "classes.txt").write_text("bg\nscratch\npit\n")
    assert open_dataset(folder).classes == ["bg", "scratch", "pit"]
    assert open_dataset(folder, classes=["a", "b", "c", "d"]).classes == ["a", "b", "c", "d"]


def test_folder_split_subfolders_are_used_as_given(tmp_path: Path) -> None:
    _pair(tmp_path / "train", "a")
    _pair(tmp_path / "train", "b")
    _pair(tmp_path / "test", "c")
    assert open_dataset(tmp_path, "train").names == ["a", "b"]
    assert open_dataset(tmp_path, "test").names == ["c"]


def test_split_rule_every_fifth_sorted_name_is_test() -> None:
    names = [f"n{i:03d}" for i in range(23)]
    shuffled = list(np.random.default_rng(0).permutation(names))
    test = split_names(shuffled, "test")
    train = split_names(shuffled, "train")
    val = split_names(shuffled, "val")
    assert test == ["n004", "n009", "n014", "n019"]
    assert val == ["n003", "n013"]  # every other 4th: disjoint from test, so selection never sees test
    assert sorted(train + val + test) == names
    assert not set(train) & set(test) and not set(val) & set(test) and not set(train) & set(val)
    assert split_names(names, "all") == names
    assert split_names(names, "test", test_every=10) == ["n009", "n019"]
    with pytest.raises(UserError, match="unknown split"):
        split_names(names, "validation")


# ---------------------------------------------------------------- real data (DS2A_REAL_DATA, outside the repository)


def test_crackforest_loads_with_fixed_split() -> None:
    crackforest = real_subset("crackforest")
    train = open_dataset(crackforest, "train")
    test = open_dataset(crackforest, "test")
    val = open_dataset(crackforest, "val")
    assert (len(train), len(val), len(test)) == (67, 10, 19)
    assert not set(train.names) & set(test.names) and not set(val.names) & (set(test.names) | set(train.names))
    assert train.classes == ["background", "crack"]
    s = test[0]
    assert s.name == "cfd_005" and s.image.shape == (320, 480, 3) and set(np.unique(s.mask)) == {0, 1}


def test_magnetic_tile_gray_images_and_class_table() -> None:
    ds = open_dataset(real_subset("magnetic_tile"), "all")
    assert len(ds) == 110
    assert ds.classes == ["background", "blowhole", "break", "crack", "fray", "uneven"]
    i = ds.names.index("fray_exp0_num_797")
    s = ds[i]
    assert s.image.ndim == 3 and np.array_equal(s.image[..., 0], s.image[..., 1])
    assert set(np.unique(s.mask)) == {0, 4}


# ---------------------------------------------------------------- bad input


def test_image_without_mask_names_the_files(folder: Path) -> None:
    _write(folder / "images" / "lonely.png", np.zeros((16, 20, 3), np.uint8))
    with pytest.raises(UserError, match=r"have no mask.*lonely\.png"):
        open_dataset(folder, "all")


def test_mask_without_image_names_the_files(folder: Path) -> None:
    _write(folder / "masks" / "orphan.png", np.zeros((16, 20), np.uint8))
    with pytest.raises(UserError, match=r"have no image.*orphan\.png"):
        open_dataset(folder, "all")


def test_unpaired_files_left_out_with_warning_in_skip_mode(folder: Path, caplog) -> None:
    _write(folder / "masks" / "orphan.png", np.zeros((16, 20), np.uint8))
    ds = open_dataset(folder, "all", on_error="skip")
    assert len(ds) == 10 and "orphan" not in ds.names
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "orphan" in caplog.text


def test_size_mismatch_is_reported_with_both_files(folder: Path) -> None:
    _write(folder / "masks" / "img03.png", np.zeros((10, 20), np.uint8))
    ds = open_dataset(folder, "all")
    with pytest.raises(UserError, match=r"img03\.png' is 16x20 but its mask .*10x20"):
        ds[3]


def test_corrupt_image_is_reported(folder: Path) -> None:
    (folder / "images" / "img02.png").write_bytes(b"not an image at all")
    with pytest.raises(UserError, match=r"img02\.png' is not a readable image"):
        open_dataset(folder, "all")[2]


def test_truncated_jpeg_is_reported(tmp_path: Path) -> None:
    _, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(UserError, match="truncated JPEG"):
        read_image(path)
    path.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        read_image(path)
    path.write_bytes(buf.tobytes() + b"camera trailer" * 8)  # data after the end marker is fine
    assert read_image(path).shape == (64, 64, 3)


def test_labels_outside_class_range_are_reported_but_255_is_ignore(folder: Path) -> None:
    mask = np.zeros((16, 20), np.uint8)
    mask[0, 0] = 255
    _write(folder / "masks" / "img00.png", mask)
    ds = open_dataset(folder, "all", classes=["bg", "a", "b"])
    assert ds[0].mask[0, 0] == 255
    mask[1, 1] = 7
    _write(folder / "masks" / "img01.png", mask)
    with pytest.raises(UserError, match=r"img01\.png' has labels \[7\] outside 0\.\.2"):
        ds[1]


def test_colour_mask_is_rejected(folder: Path) -> None:
    colour = np.zeros((16, 20, 3), np.uint8)
    colour[..., 2] = 200
    _write(folder / "masks" / "img04.png", colour)
    with pytest.raises(UserError, match="colour mask"):
        open_dataset(folder, "all", classes=["a", "b", "c"])[4]


def test_skip_mode_skips_and_counts_bad_samples(folder: Path, caplog) -> None:
    (folder / "images" / "img02.png").write_bytes(b"garbage")
    _write(folder / "masks" / "img05.png", np.zeros((3, 3), np.uint8))
    ds = open_dataset(folder, "all", classes=["a", "b", "c"], on_error="skip")
    names = [s.name for s in ds]
    assert len(names) == 8 and "img02" not in names and "img05" not in names
    assert sorted(ds.skipped) == ["img02", "img05"] and "skipped 2 of 10" in ds.summary()
    assert len(caplog.records) == 3 and "skipped 2 of 10" in caplog.messages[-1]  # each skip, then the summary
    caplog.clear()
    assert ds[2].name == "img03"
    assert not caplog.records  # already counted: no new warning, next good sample returned


def test_empty_split_missing_folder_and_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "img_dir" / "train").mkdir(parents=True)
    (tmp_path / "ann_dir" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="no image/mask pairs"):
        open_dataset(tmp_path, "train")
    with pytest.raises(UserError, match=r"img_dir/test' does not exist; splits present: train"):
        open_dataset(tmp_path, "test")
    with pytest.raises(UserError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="cannot tell the layout"):
        open_dataset(tmp_path / "other")
    (tmp_path / "half" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match=r"half/masks' does not exist"):
        open_dataset(tmp_path / "half")


def test_on_error_value_is_checked(folder: Path) -> None:
    with pytest.raises(UserError, match="on_error"):
        open_dataset(folder, "all", on_error="ignore")


# ---------------------------------------------------------------- boundary and CLI


def test_data_package_imports_without_torch() -> None:
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        import ds2a.data
        from ds2a.cli import synth  # noqa: F401
        from ds2a.data import transforms  # noqa: F401
        img, mask = ds2a.data.render_cell(np.random.default_rng(0), (64, 64))
        print("ok", img.shape, "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "ok (64, 64, 3) False" in out.stdout


def test_synth_command_writes_dataset_and_refuses_non_empty_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    assert cli_main(["synth", str(out), "--train", "2", "--test", "1", "--size", "64x96", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "dust" in text and "%" in text
    ds = open_dataset(out, "train")
    assert len(ds) == 2 and ds[0].image.shape == (64, 96, 3) and ds.classes == list(MBSD_CLASSES)
    assert cli_main(["synth", str(out), "--train", "1", "--test", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(["synth", str(out), "--train", "1", "--test", "1", "--size", "64", "--force"]) == 0
    assert len(open_dataset(out, "train")) == 1
