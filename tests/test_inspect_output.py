"""Drawing (overlay / mask / side by side, legend, verdict) and sinks by URI."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ds2a.errors import UserError
from ds2a.inspect.overlay import Renderer
from ds2a.inspect.quantify import quantify
from ds2a.inspect.sinks import ImageFolderSink, NullSink, VideoSink, open_sink
from ds2a.meta import MBSD_CLASSES, MBSD_PALETTE


def _scene():
    frame = np.full((360, 640, 3), 120, np.uint8)
    cm = np.zeros((90, 160), np.uint8)
    cm[60:80, 100:140] = 2  # smudge, bottom right, away from legend and verdict text
    return frame, cm


def test_overlay_blends_defect_pixels_and_leaves_background_untouched():
    frame, cm = _scene()
    out = Renderer(MBSD_CLASSES, MBSD_PALETTE, "overlay", alpha=0.5).render(frame, cm, False, ["smudge: x"])
    assert out.shape == frame.shape
    inside = out[260:300, 420:540]  # frame coordinates of the smudge (4x scale), inside its box
    expected = (0.5 * 120 + 0.5 * np.array(MBSD_PALETTE[2])).round()
    assert np.abs(inside.reshape(-1, 3).mean(0) - expected).max() < 2
    assert np.array_equal(out[150:200, 200:300], frame[150:200, 200:300])  # background stays as captured


def test_verdict_banner_and_legend_are_drawn():
    frame, cm = _scene()
    r = Renderer(MBSD_CLASSES, MBSD_PALETTE)
    passed, failed = r.render(frame, cm, True, []), r.render(frame, cm, False, ["r"])
    top_right = (slice(8, 40), slice(560, 630))
    assert not np.array_equal(passed[top_right], failed[top_right])  # green PASS vs red FAIL
    # the legend's first swatch has the 'damage' colour
    assert tuple(int(v) for v in passed[14, 12]) == MBSD_PALETTE[1]


def test_mask_and_side_modes_and_defect_boxes():
    frame, cm = _scene()
    mask = Renderer(MBSD_CLASSES, MBSD_PALETTE, "mask").render(frame, cm, True, [])
    assert tuple(int(v) for v in mask[280, 480]) == MBSD_PALETTE[2] and mask[200, 250].max() == 0
    side = Renderer(MBSD_CLASSES, MBSD_PALETTE, "side").render(frame, cm, True, [])
    assert side.shape == (360, 1280, 3) and np.array_equal(side[:, :640], frame)
    defects = quantify(cm, MBSD_CLASSES, (360, 640))
    boxed = Renderer(MBSD_CLASSES, MBSD_PALETTE, "overlay", alpha=0.0).render(frame, cm, True, [], defects)
    x, y, w, _h = defects[0].bbox
    assert tuple(int(v) for v in boxed[y, x + w // 2]) == MBSD_PALETTE[2]  # top edge of the box


def test_region_of_interest_is_painted_in_place_and_outlined():
    frame = np.full((360, 640, 3), 120, np.uint8)
    cm = np.full((32, 32), 1, np.uint8)  # everything in the window is damage
    out = Renderer(MBSD_CLASSES, MBSD_PALETTE, "mask").render(frame, cm, False, [], roi=(300, 150, 200, 100))
    assert tuple(int(v) for v in out[200, 400]) == MBSD_PALETTE[1]
    assert out[300, 100].max() == 0  # outside the window: nothing painted in mask mode
    assert tuple(int(v) for v in out[150, 400]) == (200, 200, 200)  # outline


def test_a_frame_that_was_not_inspected_says_so():
    frame, _ = _scene()
    r = Renderer(MBSD_CLASSES, MBSD_PALETTE)
    none, passed = r.render(frame, None, True, []), r.render(frame, np.zeros((90, 160), np.uint8), True, [])
    banner = (slice(12, 36), slice(500, 630))
    assert not np.array_equal(none[banner], passed[banner])
    assert np.array_equal(none[150:300, 100:400], frame[150:300, 100:400])


def test_sinks_by_uri(tmp_path):
    assert isinstance(open_sink("none"), NullSink)
    assert isinstance(open_sink(str(tmp_path / "v.mp4")), VideoSink)
    assert isinstance(open_sink(f"file://{tmp_path / 'v.avi'}"), VideoSink)
    assert isinstance(open_sink(str(tmp_path / "imgs")), ImageFolderSink)
    with pytest.raises(UserError, match="unknown video type"):
        open_sink(str(tmp_path / "x.gif"))


def test_video_sink_keeps_the_first_size_and_image_folder_numbers_files(tmp_path):
    v = VideoSink(str(tmp_path / "out.mp4"), fps=5)
    v.write(np.zeros((48, 64, 3), np.uint8))
    v.write(np.zeros((100, 100, 3), np.uint8))  # resized to the first frame's size
    v.close()
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 64
    cap.release()
    first = ImageFolderSink(str(tmp_path / "imgs"))
    for _ in range(3):
        first.write(np.zeros((8, 8, 3), np.uint8))
    names = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert names == [f"{first.run_tag}_{i:06d}.jpg" for i in range(3)]
    second = ImageFolderSink(str(tmp_path / "imgs"))  # a second run into the same folder
    second.run_tag = first.run_tag  # even with the same tag (same second, same random) nothing is replaced
    before = (tmp_path / "imgs" / names[0]).read_bytes()
    with pytest.raises(UserError, match="cannot write"):
        second.write(np.full((8, 8, 3), 255, np.uint8))
    assert (tmp_path / "imgs" / names[0]).read_bytes() == before


def test_run_outputs_are_checked_against_the_inputs_before_the_run(tmp_path):
    from ds2a.inspect.sinks import check_run_outputs

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"video")
    # folders, displays and none are not files: nothing to compare; a new video and db are fine
    check_run_outputs(["display://0", "none", str(tmp_path / "frames"), str(tmp_path / "out.mp4")],
                      str(tmp_path / "r.sqlite"), [("--source", str(clip)), ("--rules", None)])
    with pytest.raises(UserError, match="output video --output .* same file as the input --source"):
        check_run_outputs([f"file://{clip}"], None, [("--source", f"file://{clip}")])
    with pytest.raises(UserError, match="--db .* same file as the input --model"):
        check_run_outputs([], str(clip), [("--model", str(clip))])
    assert clip.read_bytes() == b"video"


_FULL_DISK = """
import logging, resource, signal, sys
import numpy as np
from ds2a.inspect.sinks import VideoSink
logging.basicConfig(level=logging.WARNING, format="%(message)s")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
sink = VideoSink(sys.argv[1], fps=10)
rng = np.random.default_rng(0)
for _ in range(20):
    sink.write(rng.integers(0, 256, (120, 160, 3), np.uint8))
sink.close()
"""


@pytest.mark.parametrize("limit, warned", [(30_000, True), (2**40, False)])
def test_a_video_left_unplayable_by_a_full_disk_is_warned_about(tmp_path, limit, warned):
    """OpenCV's VideoWriter never reports a failed write: an mp4 whose writes fail (a file-size limit
    stands in for a full disk) ends without its index. The sink reads it back and warns."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "out.mp4"
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(out), str(limit)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ("cannot be read back after 20 frame(s)" in proc.stderr) == warned, proc.stderr
