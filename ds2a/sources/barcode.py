"""Part identity from the part itself (`ds2a inspect --part-id barcode`): a QR or Data Matrix code on the part.

A source wrapper: each frame's `part_id` becomes the text of the code read on the part, so the inspection
loop, the part verdicts and the records use it unchanged. The code is searched in `--barcode-roi` (frame
pixels) when given, else in the part box of sources that locate the part (demo://) stretched up and down
by half its height (the part and its carrier's label), else in the whole frame.
When the wrapped source names parts (demo://'s photo-eye, one image per part, one frame per trigger), the
code is read once per named part (on its first frame) and every frame of that part keeps that id, so a
part is never split between ids; from a camera that names no parts, every frame is read and consecutive
frames with the same code are one part. A code met again on a later part (rework, a reused carrier) is
recorded as CODE#2, CODE#3..., so each part keeps its own verdict. A part whose code cannot be read (no code, blurred, covered, two
different codes) is `unread-<frame index>`: it still gets its verdict, and the run counts it. With
`--trigger`, a code that disagrees with the id the line sent raises an alarm (an ALARM log line, a JSON
event on --jsonl, the run's notes); the line's trigger is answered NONE (id_mismatch) under the line's id
(ds2a/notify/trigger_line.py).

Decoding and the demo's code printing use zxing-cpp (the `barcode` extra); without it `--part-id barcode`
and `demo://?codes=1` are refused at start with the install command. Torch-free, Python 3.8.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from .base import Frame, Source

logger = logging.getLogger(__name__)

Region = Tuple[int, int, int, int]
FORMATS = {"qr": "QRCode", "datamatrix": "DataMatrix"}  # --barcode-formats names -> zxing-cpp BarcodeFormat
PART_ID_MODES = ("source", "barcode")
MAX_CODE = 128  # longest code text used as a part id (the trigger's limit too: ds2a/notify/handshake.py)
UNREAD = "unread-"
INSTALL = "pip install 'ds2a-edge[barcode]' (zxing-cpp)"


def zxing() -> Any:
    """The zxingcpp module, or a UserError naming the extra that installs it."""
    try:
        import zxingcpp
    except ImportError:
        raise UserError(f"reading part codes needs zxing-cpp: {INSTALL}") from None
    return zxingcpp


def parse_formats(text: str) -> List[str]:
    """'qr,datamatrix' (the --barcode-formats flag) -> the checked names, in order, without repeats."""
    names = [n.strip().lower().replace(" ", "") for n in str(text).split(",") if n.strip()]
    bad = [n for n in names if n not in FORMATS]
    if not names or bad:
        raise UserError(f"--barcode-formats {text}: give one or more of {', '.join(FORMATS)} separated by commas, "
                        "for example --barcode-formats qr,datamatrix")
    return list(dict.fromkeys(names))


def parse_barcode_roi(text: str) -> Region:
    """'X,Y,W,H' in frame pixels (the --barcode-roi flag): where the code is searched."""
    try:
        roi = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        roi = ()
    if len(roi) != 4 or min(roi) < 0 or roi[2] < 8 or roi[3] < 8:
        raise UserError(f"--barcode-roi {text}: give X,Y,W,H in frame pixels, W and H at least 8, for example "
                        "--barcode-roi 0,0,200,200")
    return roi  # type: ignore[return-value]


def code_image(text: str, fmt: str = "qr", size: int = 96) -> np.ndarray:
    """A printable code (uint8 grey, black modules on white with a 2-module quiet zone) of about `size` pixels.

    zxing-cpp 2.3+ encodes with create_barcode/write_barcode_to_image (write_barcode is deprecated there);
    2.2 (the newest for Python 3.8) only has write_barcode, which at width 0 draws one pixel per module.
    """
    zx = zxing()
    kind = getattr(zx.BarcodeFormat, FORMATS[fmt])
    if hasattr(zx, "create_barcode") and hasattr(zx, "write_barcode_to_image"):
        modules = np.asarray(zx.write_barcode_to_image(zx.create_barcode(text, kind), scale=1, add_quiet_zones=False))
    else:
        modules = np.asarray(zx.write_barcode(kind, text, 0, 0, 0))
    modules = np.ascontiguousarray(modules.reshape(modules.shape[:2]), dtype=np.uint8)
    quiet = 2
    scale = max(1, int(size) // (max(modules.shape) + 2 * quiet))
    big = np.kron(modules, np.ones((scale, scale), np.uint8))
    return np.pad(big, quiet * scale, constant_values=255)


class CodeReader:
    """Reads the one part code in an image region: its text, or None with why (nothing, several, unusable)."""

    def __init__(self, formats: Sequence[str] = ("qr", "datamatrix")) -> None:
        zx = zxing()
        self._zx = zx
        self.formats = list(formats)
        wanted = [getattr(zx.BarcodeFormat, FORMATS[f]) for f in self.formats]
        self._wanted: Any = tuple(wanted)  # zxing-cpp 3 takes a tuple (`|` is deprecated there); 2.x needs `|`
        try:
            zx.read_barcodes(np.full((8, 8), 255, np.uint8), formats=self._wanted)
        except TypeError:
            self._wanted = wanted[0]
            for f in wanted[1:]:
                self._wanted = self._wanted | f

    def read(self, image: Optional[np.ndarray]) -> Tuple[Optional[str], str]:
        if image is None or not image.size:
            return None, "no picture"
        grey = image if image.ndim == 2 else image[..., :3].mean(axis=2).astype(np.uint8)
        found = self._zx.read_barcodes(np.ascontiguousarray(grey), formats=self._wanted)
        texts = list(dict.fromkeys(b.text for b in found if getattr(b, "valid", True) and b.text))
        if not texts:
            return None, "no readable code"
        if len(texts) > 1:
            return None, f"{len(texts)} different codes ({', '.join(repr(t[:40]) for t in texts[:3])})"
        text = texts[0].strip()
        if not text or len(text) > MAX_CODE or not text.isprintable():
            return None, f"the code's text is not a usable part id (1..{MAX_CODE} printable characters): {text[:40]!r}"
        return text, ""


class BarcodeSource(Source):
    """Wraps a source (or a TriggerSource); frames carry the part id read from the part's code.

    Also a Publisher observer: alarms found on the capture thread are written (JSON line, notes) on the
    output thread, between frames, so they never cut into another JSON line; `publish(None)` at the end
    writes the counts into the run's stats (records.extra["barcode"]).
    """

    gives_parts = True
    REMEMBER = 100000  # ids kept to make repeats unique (about 10 MB), as ds2a/sources/trigger.py

    def __init__(self, inner: Source, formats: Sequence[str] = ("qr", "datamatrix"), roi: Optional[Region] = None,
                 jsonl: Any = None, records: Any = None, notes: Optional[List[str]] = None) -> None:
        super().__init__(inner.uri)
        self.inner, self.roi = inner, roi
        self.reader = CodeReader(formats)
        self.live, self.gives_roi = inner.live, inner.gives_roi
        self.fps, self.frame_hw = inner.fps, inner.frame_hw
        self.stats = inner.stats  # the camera's reconnects and events reach the summary
        if getattr(inner, "gives_truth", False):  # demo://: the code is the cell's id, so its truth still applies
            self.gives_truth = True
            self.truth = inner.truth
        if roi is not None and inner.frame_hw is not None and (roi[0] >= inner.frame_hw[1] or roi[1] >= inner.frame_hw[0]):
            raise UserError(f"--barcode-roi {','.join(map(str, roi))} starts outside the {inner.frame_hw[1]}x"
                            f"{inner.frame_hw[0]} frame of {inner.uri}; give a window inside the frame")
        self.jsonl, self.records, self.notes = jsonl, records, notes
        self.counts = {"parts": 0, "read": 0, "unread": 0, "disagree": 0}
        self.ms: Deque[float] = collections.deque(maxlen=10000)
        self._pending: Deque[Dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._named: Optional[str] = None  # the wrapped source's id of the part being read
        self._code: Optional[str] = None  # the code read on it
        self._id: Optional[str] = None  # the id its frames get
        self._issued: "OrderedDict[str, None]" = OrderedDict()  # ids given in this run
        self._repeats: "OrderedDict[str, int]" = OrderedDict()  # base id -> the last #n given
        self.reads = 0  # decode attempts (a camera without part ids reads every frame)

    def where(self, frame: Frame) -> Tuple[Optional[np.ndarray], str]:
        """The region searched for the code: --barcode-roi (clipped), else the part box, else the whole frame."""
        image = frame.image
        if image is None:
            return None, "no picture"
        if self.roi is not None:
            x, y, w, h = self.roi
        elif frame.roi is not None:  # the part and its carrier: the box stretched up and down by half its height
            x, y, w, h = frame.roi
            y, h = y - h // 2, h * 2
        else:
            return image, "frame"
        crop = image[max(0, y):max(0, y + h), max(0, x):max(0, x + w)]
        return (crop, "roi") if crop.size else (None, "the barcode ROI is outside the frame")

    def read(self) -> Optional[Frame]:
        frame = self.inner.read()
        if frame is None:
            return None
        trigger = getattr(frame, "trigger", None)
        named = frame.part_id
        if named is None and trigger is None and self.inner.gives_parts:
            return frame  # no part in view (demo://'s photo-eye): a gap, not an unread part
        if named is not None and named == self._named and self.inner.gives_parts:
            frame.part_id = self._id  # the same part: the id read on its first frame
            return frame
        t0 = time.perf_counter()
        region, why = self.where(frame)
        code, why = self.reader.read(region) if region is not None else (None, why)
        self.ms.append((time.perf_counter() - t0) * 1e3)
        self.reads += 1
        if code is not None and code == self._code and not self.inner.gives_parts:
            frame.part_id = self._id  # a camera still looking at the same code: the same part
            return frame
        self.counts["parts"] += 1
        if code is None:
            self.counts["unread"] += 1
            base = f"{UNREAD}{frame.index}"
            self.stats.events.append(f"{time.strftime('%H:%M:%S')} part code unread at frame {frame.index}"
                                     f"{f' ({named})' if named else ''}: {why}")
        else:
            self.counts["read"] += 1
            base = code
            if trigger is not None and trigger.part_id is not None and code != trigger.part_id:
                self.counts["disagree"] += 1
                frame.id_conflict = f"the code on the part reads {code!r}, the line named {trigger.part_id!r}"
                self._alarm(frame, trigger, code)
            elif trigger is not None and named is not None:
                base = named  # agrees: keep the trigger's record id (ID#2 for a retried part)
        part_id = self._unique(base)
        self._named, self._code, self._id = named, code, part_id
        frame.part_id = part_id
        return frame

    def _unique(self, base: str) -> str:
        """`base`, or base#2, base#3... when a part with that id was already recorded in this run (the same
        code presented again, rework): each part keeps its own verdict (docs/ARCHITECTURE.md, invariant 1).
        Remembers the latest `REMEMBER` ids."""
        n = self._repeats.get(base, 1)
        part_id = base if n == 1 else f"{base}#{n}"
        while part_id in self._issued:
            n += 1
            part_id = f"{base}#{n}"
        self._repeats[base] = n
        self._issued[part_id] = None
        for d in (self._issued, self._repeats):
            while len(d) > self.REMEMBER:
                d.popitem(last=False)
        return part_id

    def _alarm(self, frame: Frame, trigger: Any, code: str) -> None:
        event = {"type": "alarm", "kind": "part_id", "state": "raised", "t": round(time.time(), 3),
                 "frame_index": frame.index, "trigger_seq": trigger.seq, "trigger_part_id": trigger.part_id,
                 "code": code}
        text = (f"{time.strftime('%H:%M:%S')} PART ID ALARM: trigger {trigger.seq} named {trigger.part_id!r} but "
                f"the code on the part reads {code!r}; recorded as {code!r}, answered NONE to the line "
                f"for {trigger.part_id!r}")
        logger.warning(f"ALARM   {text}")
        with self._lock:
            self._pending.append({**event, "text": text})

    def publish(self, res: Any, closed: List[Any]) -> None:
        """Publisher observer (output thread): writes the alarms raised since the last frame; the end writes stats."""
        with self._lock:
            pending, self._pending = list(self._pending), collections.deque()
        for event in pending:
            text = event.pop("text")
            if self.notes is not None:
                self.notes.append(text)
            if self.jsonl is not None:
                self.jsonl.write(json_line(event))
                self.jsonl.flush()
        if res is None or pending:
            self._store()
        if res is None:
            c = self.counts
            logger.info(f"part id barcode: {c['parts']} part(s), {c['read']} code(s) read, {c['unread']} unread"
                        + (f", {c['disagree']} disagreeing with the trigger" if c["disagree"] else ""))

    def summary(self) -> Dict[str, Any]:
        ms = sorted(self.ms)
        return {**self.counts, "reads": self.reads, "formats": self.reader.formats, "roi": list(self.roi) if self.roi else None,
                "ms_per_read_median": round(ms[len(ms) // 2], 3) if ms else None}

    def _store(self) -> None:
        if self.records is not None and hasattr(self.records, "extra"):
            self.records.extra["barcode"] = self.summary()

    def stop(self) -> None:
        super().stop()
        self.inner.stop()

    def close(self) -> None:
        self.inner.close()


def json_line(event: Dict[str, Any]) -> str:
    import json

    return json.dumps(event) + "\n"


def check_part_id_option(options: Any) -> Optional[Tuple[List[str], Optional[Region]]]:
    """`--part-id` and its flags checked before the model opens: (formats, roi), or None for ids from the source."""
    mode = getattr(options, "part_id", "source")
    if mode not in PART_ID_MODES:
        raise UserError(f"--part-id {mode}: choose one of {', '.join(PART_ID_MODES)}")
    roi = getattr(options, "barcode_roi", None)
    formats = parse_formats(getattr(options, "barcode_formats", "qr,datamatrix"))
    if roi is not None:
        roi = parse_barcode_roi(",".join(str(v) for v in roi))
    if mode != "barcode":
        if roi is not None:
            raise UserError("--barcode-roi needs --part-id barcode")
        return None
    zxing()
    return formats, roi
