"""`ds2a review export`: the parts operators marked (ds2a/records/review.py) as a training set to correct.

For every frame of every selected marked part it writes the raw frame and the model's class map (the
pre-label a person corrects) cropped to the region the model looked at, in the folder layout `ds2a train`
and `ds2a eval` read (ds2a/data/datasets.py `FolderDataset`: images/NAME.png + masks/NAME.png with
classes.txt; 255 in a mask = ignore), a CVAT import file (cvat/annotations.zip, CVAT's "Segmentation mask
1.1" format: labelmap.txt, ImageSets/Segmentation/default.txt, SegmentationClass/NAME.png in the labelmap's
RGB colours) and manifest.json: each frame, its part, run, verdict, marks and who confirmed them, the crop
box, and every file's sha256. A frame whose raw picture or class map was not kept is listed under
`missing` with the reason and the fix (`ds2a inspect --save-fail DIR --keep-raw all`), never silently
skipped; marks left out (rejected, or not yet confirmed without --all-marks) are listed under `left_out`.

The export is built in a hidden folder beside --out and renamed into place; --out must be new or empty and
may not hold any input (the database, its -wal/-shm, the kept pictures: ds2a/outputs.py's rule that no
output replaces an input). The database is read read-only; the export is one `review_export` audit row.
Python 3.8 compatible, torch-free.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import UserError
from ..meta import file_sha256
from ..outputs import write_new
from . import audit, review
from .database import connect
from .evidence import MASK_OUTSIDE, Evidence, mask_path

FORMAT = "ds2a-review-export/1"
CVAT_FORMAT = "Segmentation mask 1.1"
FIX_KEEP = "keep every frame's raw picture and class map: `ds2a inspect ... --save-fail DIR --keep-raw all`"
logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    out: str
    frames: int = 0
    parts: int = 0
    missing: List[Dict[str, Any]] = field(default_factory=list)
    left_out: List[Dict[str, Any]] = field(default_factory=list)

    def message(self) -> str:
        text = f"{self.out}: {self.frames} frame(s) of {self.parts} marked part(s), manifest.json, cvat/annotations.zip"
        if self.missing:
            text += f"; {len(self.missing)} frame(s) without a kept picture listed under `missing` ({FIX_KEEP})"
        if self.left_out:
            text += f"; {len(self.left_out)} mark(s) left out (listed under `left_out`)"
        return text


def voc_colours(n: int) -> List[Tuple[int, int, int]]:
    """The Pascal VOC colour map (RGB), which CVAT's segmentation mask format uses by default."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._#-]", "_", name)[:80] or "part"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_out(out: str, inputs: Sequence[Tuple[str, str]]) -> str:
    """The resolved --out; UserError when it is empty, a file, holds an input, or already holds files."""
    if not out or not out.strip():
        raise UserError("--out: empty path; give a new folder for the export, e.g. --out review/2026-12-07")
    real = os.path.realpath(out)
    if os.path.lexists(real) and not os.path.isdir(real):
        raise UserError(f"--out {out} is a file; give a new (or empty) folder for the export")
    for label, path in inputs:
        if path and _inside(path, real):
            raise UserError(f"--out {out} holds {label} {path}, which the export reads: writing there could replace "
                            "an input; give a new folder outside it")
        if path and os.path.isdir(path) and _inside(real, path):
            raise UserError(f"--out {out} is inside {label} {path}, which is read: give a new folder outside it")
    if os.path.isdir(real) and os.listdir(real):
        raise UserError(f"--out {out} already holds files and an export never writes into them; give a new (or "
                        "empty) folder")
    return real


def _json(text: Optional[str], default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except (TypeError, ValueError):
        return default


def _why_missing(frame: sqlite3.Row, facts: Dict[str, Any]) -> str:
    raw = frame["raw_path"]
    if frame["verdict"] == "NONE":
        return "the frame was not inspected (NONE): there is no class map to start a label from"
    if raw and not os.path.isfile(raw):
        return f"the raw frame was recorded at {raw} but the file is gone (moved or deleted since the run)"
    if raw and not os.path.isfile(mask_path(raw)):
        return f"the raw frame is kept but not its class map ({mask_path(raw)}; a ds2a from before masks were kept)"
    if not facts.get("save_fail"):
        return "the run kept no pictures (no --save-fail folder)"
    return f"the run's --keep-raw policy '{facts.get('keep_raw', 'fail')}' kept no raw picture of this frame"


def _region(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """x, y, w, h of the pixels the model looked at (mask != 255); the whole frame when it looked at all."""
    ys, xs = np.nonzero(mask != MASK_OUTSIDE)
    if not len(xs):
        return 0, 0, 0, 0
    x0, y0 = int(xs.min()), int(ys.min())
    return x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise UserError("OpenCV could not encode a PNG; check the OpenCV install (`ds2a doctor`)")
    return buf.tobytes()


class _Writer:
    """Files of one export, written (never replaced) into the hidden build folder, with their sha256."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.files: Dict[str, Dict[str, Any]] = {}

    def put(self, name: str, data: bytes) -> str:
        path = os.path.join(self.folder, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_new(path, data)
        self.files[name] = {"sha256": _sha256(data), "bytes": len(data)}
        return self.files[name]["sha256"]


def _cvat_zip(names: List[str], masks: Dict[str, np.ndarray], classes: List[str]) -> bytes:
    """CVAT "Segmentation mask 1.1": labelmap.txt (label:R,G,B::), the image list, one RGB class mask per image.
    Ignore pixels (255) are written as background: CVAT refuses colours its labelmap does not declare."""
    colours = voc_colours(len(classes))
    lut = np.zeros((256, 3), np.uint8)
    for i, (r, g, b) in enumerate(colours):
        lut[i] = (b, g, r)  # OpenCV writes BGR
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("labelmap.txt", "# label:color_rgb:parts:actions\n"
                   + "".join(f"{c}:{r},{g},{b}::\n" for c, (r, g, b) in zip(classes, colours)))
        z.writestr("ImageSets/Segmentation/default.txt", "".join(f"{n}\n" for n in names))
        for n in names:
            m = masks[n]
            z.writestr(f"SegmentationClass/{n}.png", _png(lut[np.where(m < len(classes), m, 0)]))
    return buf.getvalue()


def export(db: str, out: str, confirmed_only: bool = True, run_id: Optional[int] = None) -> ExportResult:
    """Write the export of `db`'s marks (confirmed ones, or also open ones) into the new folder `out`."""
    ev = Evidence(db)  # read-only; missing, empty or not ours: one-line UserError
    try:
        all_marks = review.marks(ev.con, run_id)
        chosen = [m for m in all_marks if m["status"] == "confirmed" or (m["status"] == "open" and not confirmed_only)]
        left = [{"mark_id": m["id"], "part_id": m["part_id"], "run_id": m["run_id"], "status": m["status"],
                 "reason": "rejected by " + str(m["answered_by"]) if m["status"] == "rejected" else
                 "not confirmed yet (`ds2a review confirm`, or export with --all-marks)"}
                for m in all_marks if m not in chosen]
        if not chosen:
            where = f" of run {run_id}" if run_id is not None else ""
            raise UserError(f"{db}: no {'confirmed ' if confirmed_only else ''}marks{where} to export ({len(all_marks)} "
                            f"mark(s) in all); confirm marks with `ds2a review confirm {db} --mark N`"
                            + (" or pass --all-marks" if confirmed_only else ""))
        by_verdict: Dict[int, List[Dict[str, Any]]] = {}
        for m in chosen:
            by_verdict.setdefault(m["verdict_id"], []).append(m)
        pvs = [ev.con.execute("SELECT * FROM verdicts WHERE id=?", (vid,)).fetchone() for vid in by_verdict]
        inputs = ev.inputs(pvs)
        out_real = check_out(out, inputs)
        classes = _classes(ev, pvs)
        parent = os.path.dirname(out_real)
        os.makedirs(parent, exist_ok=True)
        build = os.path.join(parent, f".{os.path.basename(out_real)}.partial-{uuid.uuid4().hex[:8]}")
        os.makedirs(build)
        try:
            result, manifest = _fill(ev, pvs, by_verdict, classes, _Writer(build), out_real, db, confirmed_only)
            result.left_out = left
            manifest["left_out"] = left
            data = json.dumps(manifest, indent=2, default=str).encode("utf-8")
            write_new(os.path.join(build, "manifest.json"), data)
            if os.path.isdir(out_real):
                os.rmdir(out_real)  # empty (checked): the finished export takes its place
            os.rename(build, out_real)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    finally:
        ev.close()
    _audit(db, out_real, result, _sha256(data), run_id)
    return result


def _classes(ev: Evidence, pvs: Sequence[sqlite3.Row]) -> List[str]:
    seen: Dict[str, List[int]] = {}
    for pv in pvs:
        run = ev.con.execute("SELECT classes FROM runs WHERE id=?", (pv["run_id"],)).fetchone()
        seen.setdefault(json.dumps(_json(run[0] if run else None, [])), []).append(pv["run_id"])
    if len(seen) > 1:
        runs = "; ".join(f"run(s) {', '.join(map(str, sorted(set(r))))}: {c}" for c, r in seen.items())
        raise UserError(f"the marked parts come from runs with different classes ({runs}); export one run at a time "
                        "with --run N")
    classes = json.loads(next(iter(seen)))
    if len(classes) < 2:
        raise UserError("the marked parts' run records no class names; a training set needs them")
    return [str(c) for c in classes]


def _fill(ev: Evidence, pvs: Sequence[sqlite3.Row], by_verdict: Dict[int, List[Dict[str, Any]]],
          classes: List[str], w: _Writer, out: str, db: str, confirmed_only: bool) -> Tuple[ExportResult, Dict[str, Any]]:
    result = ExportResult(out)
    frames_out: List[Dict[str, Any]] = []
    masks: Dict[str, np.ndarray] = {}
    for pv in pvs:
        run = ev.con.execute("SELECT * FROM runs WHERE id=?", (pv["run_id"],)).fetchone()
        facts = _json(run["stats"], {}).get("evidence") or {}
        mark_info = [{"mark_id": m["id"], "kind": m["kind"], "note": m["note"], "marked_by": m["user"],
                      "marked_role": m["role"], "marked_t": m["t"], "status": m["status"],
                      "confirmed_by": m["answered_by"], "confirmed_role": m["answer_role"],
                      "confirm_note": m["answer_note"], "confirmed_t": m["answered_t"]} for m in by_verdict[pv["id"]]]
        part = {"part_id": pv["part_id"], "run_id": pv["run_id"], "verdict_id": pv["id"], "verdict": pv["verdict"],
                "reasons": _json(pv["reasons"], []), "model": run["model"], "marks": mark_info}
        result.parts += 1
        for f in ev.frames(pv):
            raw = f["raw_path"]
            image = cv2.imread(raw, cv2.IMREAD_COLOR) if raw and os.path.isfile(raw) else None
            mask = cv2.imread(mask_path(raw), cv2.IMREAD_UNCHANGED) if raw and os.path.isfile(mask_path(raw)) else None
            why = ""
            if f["verdict"] == "NONE" or image is None or mask is None:
                why = _why_missing(f, facts)
            elif mask.ndim != 2 or mask.shape != image.shape[:2]:
                why = f"the class map {mask_path(raw)} does not match its raw frame's size (damaged)"
            elif not _region(mask)[2]:
                why = "the model looked at no pixel of this frame (its class map is all 255)"
            if why:
                result.missing.append({**part, "frame_seq": f["seq"], "frame_verdict": f["verdict"],
                                       "reason": why, "fix": FIX_KEEP})
                continue
            x, y, cw, ch = _region(mask)
            name = f"run{pv['run_id']}_{_safe(str(pv['part_id']))}_{int(f['seq']):06d}"
            crop_m = np.ascontiguousarray(mask[y:y + ch, x:x + cw])
            sha_i = w.put(f"images/{name}.png", _png(np.ascontiguousarray(image[y:y + ch, x:x + cw])))
            sha_m = w.put(f"masks/{name}.png", _png(crop_m))
            masks[name] = crop_m
            raw_sha = file_sha256(raw)
            frames_out.append({"name": name, "image": f"images/{name}.png", "mask": f"masks/{name}.png",
                               "image_sha256": sha_i, "mask_sha256": sha_m, **part, "frame_id": f["id"],
                               "frame_seq": f["seq"], "frame_verdict": f["verdict"],
                               "crop_xywh": [x, y, cw, ch], "raw_path": raw, "raw_sha256": raw_sha})
            result.frames += 1
    w.put("classes.txt", "".join(f"{c}\n" for c in classes).encode("utf-8"))
    names = [fr["name"] for fr in frames_out]
    if names:
        w.put("cvat/annotations.zip", _cvat_zip(names, masks, classes))
    manifest = {
        "format": FORMAT, "database": os.path.abspath(db), "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                       time.gmtime()),
        "written_by": audit.local_user(), "selection": "confirmed marks" if confirmed_only else "confirmed and open marks",
        "classes": classes, "layout": "images/NAME.png + masks/NAME.png + classes.txt (ds2a train --data / --extra-data)",
        "masks_are": "the model's class map (pre-labels: correct them before training); 255 = ignore",
        "cvat": {"file": "cvat/annotations.zip" if names else None, "format": CVAT_FORMAT,
                 "labelmap_rgb": dict(zip(classes, voc_colours(len(classes))))},
        "frames": frames_out, "missing": result.missing, "files": w.files}
    return result, manifest


def _audit(db: str, out: str, result: ExportResult, manifest_sha: str, run_id: Optional[int]) -> None:
    """The export's audit row; a database that refuses it leaves the export in place, with a warning."""
    try:
        con = connect(db, create=False)
        try:
            audit.append(con, "review_export", audit.local_user(), audit.local_origin(), run_id=run_id,
                         detail={"folder": out, "frames": result.frames, "parts": result.parts,
                                 "missing": len(result.missing), "manifest_sha256": manifest_sha})
        finally:
            con.close()
    except (UserError, OSError, sqlite3.Error) as exc:
        logger.warning(f"warning: export written to {out}, but not recorded in the audit trail of {db}: {exc}")


# --- the way back: corrected labels from CVAT into a new training folder ---------------------------------------

def _labelmap(text: str, classes: List[str], where: str) -> Dict[Tuple[int, int, int], int]:
    """RGB colour -> class id from a CVAT labelmap.txt (`name:R,G,B:parts:actions`); names must be classes."""
    colours: Dict[Tuple[int, int, int], int] = {}
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        try:
            rgb = tuple(int(v) for v in fields[1].split(","))
        except (IndexError, ValueError):
            rgb = ()
        if len(rgb) != 3:
            raise UserError(f"{where} labelmap.txt line {no}: write name:R,G,B:: (got {line[:80]!r})")
        if fields[0] not in classes:
            raise UserError(f"{where} labelmap.txt line {no}: label {fields[0][:64]!r} is not one of the export's "
                            f"classes ({', '.join(classes)}); give the CVAT task the labels of classes.txt")
        colours[rgb] = classes.index(fields[0])  # type: ignore[index]
    return colours


def _to_ids(rgb: np.ndarray, colours: Dict[Tuple[int, int, int], int], name: str) -> np.ndarray:
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    out = np.full(key.shape, 255, np.uint8)
    for (r, g, b), cid in colours.items():
        out[key == (r << 16 | g << 8 | b)] = cid
    if (out == 255).any():
        odd = sorted({tuple(int(v) for v in p) for p in rgb[out == 255][:1000]})[:5]
        raise UserError(f"SegmentationClass/{name}.png has {int((out == 255).sum())} pixel(s) in colours its "
                        f"labelmap.txt does not declare (RGB {odd}); export the task again from CVAT")
    return out


def import_cvat(export_dir: str, cvat_zip: str, out: str) -> Tuple[str, int]:
    """A new training folder: the export's images with the labels corrected in CVAT (its "Segmentation mask 1.1"
    export of the task) as masks/, classes.txt and a manifest (the export's, plus each frame's changed pixels
    and the zip's sha256). The export folder is read only. (folder, frames)."""
    try:
        with open(os.path.join(export_dir, "manifest.json"), encoding="utf-8") as fh:
            manifest = json.load(fh)
        assert manifest.get("format") == FORMAT
    except (OSError, ValueError, AssertionError, AttributeError):
        raise UserError(f"{export_dir} is not a `ds2a review export` folder (no manifest.json of format {FORMAT})") \
            from None
    classes = [str(c) for c in manifest["classes"]]
    out_real = check_out(out, [("the export", export_dir), ("--cvat", cvat_zip)])
    try:
        z = zipfile.ZipFile(cvat_zip)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"--cvat {cvat_zip}: not a readable .zip ({exc}); export the CVAT task as "
                        f"\"{CVAT_FORMAT}\"") from None
    with z:
        zip_sha = file_sha256(cvat_zip)
        names = set(z.namelist())
        if "labelmap.txt" not in names:
            raise UserError(f"--cvat {cvat_zip} has no labelmap.txt: export the CVAT task as \"{CVAT_FORMAT}\"")
        colours = _labelmap(z.read("labelmap.txt").decode("utf-8", "replace"), classes, f"--cvat {cvat_zip}")
        absent = [f["name"] for f in manifest["frames"] if f"SegmentationClass/{f['name']}.png" not in names]
        if absent:
            raise UserError(f"--cvat {cvat_zip} has no SegmentationClass/ mask for {len(absent)} frame(s) of the "
                            f"export ({', '.join(absent[:3])}); label every image of the task and export it again")
        build = os.path.join(os.path.dirname(out_real), f".{os.path.basename(out_real)}.partial-{uuid.uuid4().hex[:8]}")
        os.makedirs(build)
        try:
            w = _Writer(build)
            for f in manifest["frames"]:
                rgb = cv2.imdecode(np.frombuffer(z.read(f"SegmentationClass/{f['name']}.png"), np.uint8),
                                   cv2.IMREAD_COLOR)
                with open(os.path.join(export_dir, f["image"]), "rb") as img:
                    data = img.read()
                before = cv2.imread(os.path.join(export_dir, f["mask"]), cv2.IMREAD_UNCHANGED)
                if rgb is None or before is None or rgb.shape[:2] != before.shape:
                    raise UserError(f"SegmentationClass/{f['name']}.png in {cvat_zip} is unreadable or not the size "
                                    "of its image; export the CVAT task again")
                ids = _to_ids(rgb[..., ::-1], colours, f["name"])
                f["image_sha256"], f["mask_sha256"] = w.put(f["image"], data), w.put(f["mask"], _png(ids))
                f["labels_changed_px"] = int((ids != np.where(before < len(classes), before, 0)).sum())
            w.put("classes.txt", "".join(f"{c}\n" for c in classes).encode("utf-8"))
            manifest.update({"labels": {"from": os.path.abspath(cvat_zip), "sha256": zip_sha, "format": CVAT_FORMAT,
                                        "export": os.path.abspath(export_dir)},
                             "masks_are": "corrected labels (CVAT); 255 = ignore", "files": w.files,
                             "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            manifest["cvat"] = {"file": None, "format": CVAT_FORMAT}
            write_new(os.path.join(build, "manifest.json"), json.dumps(manifest, indent=2, default=str).encode())
            if os.path.isdir(out_real):
                os.rmdir(out_real)
            os.rename(build, out_real)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    return out_real, len(manifest["frames"])
