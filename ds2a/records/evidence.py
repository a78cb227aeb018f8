"""Evidence for one part, from the records: a folder an auditor opens without ds2a (`ds2a evidence`).

What a run keeps per part (ds2a/records/database.py): the part's verdict and reasons, every frame's
verdict, defects (areas in px and mm^2) and timings, the run's model, source, classes, effective rules
and stats. From the start of a run the stats also hold `evidence` (`run_facts`: the recipe file, its
text and sha256, the model and engine sha256, the ds2a version, the --keep-raw policy) and the model's
self-test (ds2a/runtime/selftest.py). Pictures are kept by `ds2a inspect --save-fail DIR` for the frames
its --keep-raw policy names (ds2a/inspect/publish.py): the annotated frame, the raw frame (JPEG q95) and
the class map as a lossless PNG at frame size, beside the raw frame (`mask_path`; 255 = outside the region
the model looked at). A picture not kept, or gone since, is said so in the evidence, with why.

A folder holds index.html (static, no scripts), evidence.json, defects.csv, the pictures, the recipe,
manifest.json (every file's sha256) and SHA256SUMS (`sha256sum -c SHA256SUMS`). It is built in a hidden
folder and renamed into place; an existing folder is never written into (a second call makes a new one).
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import html
import io
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import uuid
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import UserError
from ..meta import file_sha256
from ..outputs import atomic_path, check_outputs, write_new
from .database import connect, run_status

FORMAT = "ds2a-evidence/1"
MASK_OUTSIDE = 255  # class-map mask value outside the region the model looked at
RAW_SUFFIX = "_raw.jpg"
MAX_RULES_BYTES = 1 << 20
INSPECTION_TABLES = ("runs", "frames", "defects", "verdicts", "timings")  # any other table may hold operator actions
MAX_PARTS = 1000  # one call writes at most this many folders unless told otherwise (--max-parts)
PALETTE = [(0, 0, 0), (60, 60, 230), (40, 200, 240), (230, 160, 40), (80, 200, 80), (200, 80, 200),
           (150, 150, 60), (60, 150, 150)]  # BGR for the coloured mask; class 0 (background) black


# --- written by `ds2a inspect` -------------------------------------------------------------------------

def mask_path(raw_path: str) -> str:
    """Where the class-map mask of a kept frame lies: beside its raw frame (…_raw.jpg -> …_mask.png)."""
    stem = raw_path[:-len(RAW_SUFFIX)] if raw_path.endswith(RAW_SUFFIX) else os.path.splitext(raw_path)[0]
    return stem + "_mask.png"


def frame_mask(res: Any) -> Optional[np.ndarray]:
    """The frame's class map at frame size (nearest neighbour), MASK_OUTSIDE outside its region; None when
    the frame was not inspected (no class map)."""
    if res.class_map is None or getattr(res.frame, "image", None) is None:
        return None
    h, w = res.frame.image.shape[:2]
    x, y, rw, rh = res.roi or (0, 0, w, h)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + rw), min(h, y + rh)
    canvas = np.full((h, w), MASK_OUTSIDE, np.uint8)
    if x1 > x0 and y1 > y0:
        full = cv2.resize(np.ascontiguousarray(res.class_map, np.uint8), (rw, rh), interpolation=cv2.INTER_NEAREST)
        canvas[y0:y1, x0:x1] = full[y0 - y:y1 - y, x0 - x:x1 - x]
    return canvas


def run_facts(options: Any, identity: Dict[str, str]) -> Dict[str, Any]:
    """What a run records for its evidence at its start: `identity` (recipe, model and engine sha256, ds2a
    version; ds2a/notify/opcua_server.py) with the rules file's text and the picture policy."""
    facts: Dict[str, Any] = dict(identity)
    rules = getattr(options, "rules", None)
    facts["rules_file"] = os.path.abspath(rules) if rules else None
    facts["rules_text"] = None
    if rules:
        try:
            with open(rules, "rb") as fh:
                data = fh.read(MAX_RULES_BYTES + 1)
            if len(data) <= MAX_RULES_BYTES:
                facts["rules_text"] = data.decode("utf-8", errors="replace")
        except OSError:
            pass
    save = getattr(options, "save_fail", None)
    facts["save_fail"] = os.path.abspath(save) if save else None
    facts["keep_raw"] = getattr(options, "keep_raw", "fail")
    return facts


# --- read by `ds2a evidence` ---------------------------------------------------------------------------

def parse_time(text: str, flag: str) -> float:
    """Seconds since the epoch from '2026-12-07T06:00:00' (local time unless it names an offset, e.g. +00:00
    or Z), '2026-12-07', or a number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise UserError(f"{flag} {text}: give a time such as 2026-12-07T06:00:00 (local), 2026-12-07T05:00:00Z "
                        "or seconds since 1970") from None
    return when.timestamp()


def _iso(t: Optional[float]) -> Optional[str]:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")


def _json(text: Optional[str], default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except (ValueError, TypeError):
        return default


def find_parts(con: sqlite3.Connection, part: Optional[str] = None, run: Optional[int] = None,
               t_from: Optional[float] = None, t_to: Optional[float] = None) -> List[sqlite3.Row]:
    """The verdict rows asked for (a part id may be judged in several runs: one row each), oldest first."""
    given = [(c, v) for c, v in (("part_id = ?", part), ("run_id = ?", run), ("t_end >= ?", t_from),
                                 ("t_end <= ?", t_to)) if v is not None]
    where, args = [c for c, _ in given], [v for _, v in given]
    sql = "SELECT * FROM verdicts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY t_end, id"
    return list(con.execute(sql, args))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._#-]", "_", name)[:80] or "part"


def _is_evidence(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as fh:
            return json.load(fh).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: str, db: str) -> str:
    """The --out folder (created when missing); UserError when it is a file, the database, or an evidence folder."""
    if not out or not out.strip():
        raise UserError("--out: empty path; give a folder for the evidence, e.g. --out evidence/")
    real = os.path.realpath(out)
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.lexists(db + suffix) and os.path.realpath(db + suffix) == real:
            raise UserError(f"--out {out} is the database {db}{suffix}, which is read: give a folder for the evidence")
    if os.path.lexists(real) and not os.path.isdir(real):
        raise UserError(f"--out {out} is a file; give a folder (new or existing) to hold the evidence folders")
    if _is_evidence(real):
        raise UserError(f"--out {out} is an evidence folder itself and is never written into; give the folder that "
                        "holds evidence folders (e.g. its parent) or a new one")
    return real


class Evidence:
    """Reads one database (read-only) and writes evidence folders for its part verdicts."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.con = connect(db, create=False, readonly=True)  # not ours, missing, damaged: one-line UserError
        self.con.row_factory = sqlite3.Row
        self._runs: Dict[int, sqlite3.Row] = {}

    def close(self) -> None:
        self.con.close()

    def parts(self, part: Optional[str] = None, run: Optional[int] = None, t_from: Optional[float] = None,
              t_to: Optional[float] = None) -> List[sqlite3.Row]:
        rows = find_parts(self.con, part, run, t_from, t_to)
        if not rows:
            n = self.con.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM verdicts").fetchone()
            asked = " and ".join(x for x in (f"part {part}" if part is not None else "",
                                             f"run {run}" if run is not None else "",
                                             "the time range" if t_from is not None or t_to is not None else "") if x)
            raise UserError(f"{asked or 'no part'}: not in the records of {self.db} ({n[0]} part verdict(s) in "
                            f"{n[1]} run(s)); `ds2a report {self.db} --csv parts.csv` lists them")
        return rows

    def _run(self, run_id: int) -> sqlite3.Row:
        if run_id not in self._runs:
            self._runs[run_id] = self.con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._runs[run_id]

    def frames(self, pv: sqlite3.Row) -> List[sqlite3.Row]:
        """The part's frames: its run's frames from first_seq to last_seq that carry its id (or none)."""
        rows = self.con.execute("SELECT * FROM frames WHERE run_id=? AND seq BETWEEN ? AND ? ORDER BY seq",
                                (pv["run_id"], pv["first_seq"], pv["last_seq"])).fetchall()
        return [r for r in rows if r["part_id"] is None or r["part_id"] == pv["part_id"]]

    def inputs(self, rows: Sequence[sqlite3.Row]) -> List[Tuple[str, str]]:
        """Every file the evidence reads: the database and the kept pictures (for the output checks)."""
        files = [("DB", self.db)] + [(f"DB{s}", self.db + s) for s in ("-wal", "-shm") if os.path.exists(self.db + s)]
        for pv in rows:
            for f in self.frames(pv):
                for p in (f["image_path"], f["raw_path"], mask_path(f["raw_path"]) if f["raw_path"] else None):
                    if p and os.path.isfile(p):
                        files.append(("a kept picture", p))
        return files

    def operator_actions(self, pv: sqlite3.Row) -> List[Dict[str, Any]]:
        """Rows of tables beyond the inspection tables (operator actions, overrides) that name this part."""
        found: List[Dict[str, Any]] = []
        tables = [r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            if table in INSPECTION_TABLES or table.startswith("sqlite_"):
                continue
            cols = [r[1] for r in self.con.execute(f'PRAGMA table_info("{table}")')]
            if "part_id" in cols:
                rows = self.con.execute(f'SELECT * FROM "{table}" WHERE part_id=?', (pv["part_id"],)).fetchall()
            else:  # a table without a part_id column (an audit log): rows whose text names the part
                cond = " OR ".join(f'instr(CAST("{c}" AS TEXT), ?) > 0' for c in cols) or "0"
                rows = self.con.execute(f'SELECT * FROM "{table}" WHERE {cond}', [pv["part_id"]] * len(cols)).fetchall()
            found += [{"table": table, **dict(r)} for r in rows]
        return found

    # --- one folder ---

    def facts(self, pv: sqlite3.Row) -> Dict[str, Any]:
        """Everything the records say about one part verdict, as plain JSON."""
        run = self._run(pv["run_id"])
        stats = _json(run["stats"], {})
        ev = stats.get("evidence") or {}
        rules = _json(run["rules"], {})
        reasons = _json(pv["reasons"], [])
        frames = []
        for f in self.frames(pv):
            defects = [dict(d) for d in self.con.execute(
                "SELECT class_id, class_name, area_px, area_mm2, x, y, w, h, cx, cy, confidence FROM defects "
                "WHERE frame_id=? ORDER BY id", (f["id"],))]
            timing = self.con.execute("SELECT * FROM timings WHERE frame_id=?", (f["id"],)).fetchone()
            frames.append({"frame_id": f["id"], "seq": f["seq"], "source_index": f["source_index"], "t": f["t"],
                           "time_utc": _iso(f["t"]), "part_id": f["part_id"], "name": f["name"],
                           "width": f["width"], "height": f["height"], "verdict": f["verdict"],
                           "reasons": _json(f["reasons"], []), "defects": defects,
                           "timings_ms": {k: timing[k] for k in timing.keys() if k.endswith("_ms")} if timing else {},
                           "image_path": f["image_path"], "raw_path": f["raw_path"]})
        named = sorted({r.split(":", 1)[0] for r in reasons if ":" in r})
        deciding = {c: rules.get("classes", {}).get(c) for c in named}
        actions = self.operator_actions(pv)
        return {
            "format": FORMAT,
            "part": {"part_id": pv["part_id"], "verdict": pv["verdict"], "level": pv["level"], "reasons": reasons,
                     "first_seq": pv["first_seq"], "last_seq": pv["last_seq"], "n_frames": pv["n_frames"],
                     "t_start": pv["t_start"], "t_end": pv["t_end"], "start_utc": _iso(pv["t_start"]),
                     "end_utc": _iso(pv["t_end"])},
            "decided_by": {"reasons": reasons, "rules_of_the_classes_named": deciding,
                           "explanation": _decision(pv["verdict"], reasons, rules)},
            "run": {"id": run["id"], "status": run_status(run["status"], run["stats"], run["started_at"]),
                    "started_utc": _iso(run["started_at"]), "ended_utc": _iso(run["ended_at"]),
                    "model": run["model"], "backend": run["backend"], "source": run["source"],
                    "classes": _json(run["classes"], []), "mm_per_pixel": run["mm_per_pixel"],
                    "effective_rules": rules},
            "recipe": {"name": ev.get("recipe"), "file": ev.get("rules_file"), "sha256": ev.get("recipe_sha256")},
            "model": {"name": ev.get("model"), "model_sha256": ev.get("model_sha256"),
                      "engine_sha256": ev.get("engine_sha256") or None, "backend": ev.get("backend") or run["backend"]},
            "selftest": stats.get("selftest") or "not recorded (run made before self-test results were recorded)",
            "ds2a_version_of_run": ev.get("version") or "not recorded (run made before ds2a recorded its version)",
            "keep_raw": ev.get("keep_raw") or "not recorded (fail: failing frames, when --save-fail was given)",
            "save_fail": ev.get("save_fail"),
            "operator_actions": actions or "none recorded",
            "frames": frames,
        }

    def write(self, pv: sqlite3.Row, out: str, make_zip: bool = False,
              audit: bool = True) -> Tuple[str, Optional[str]]:
        """One new folder under `out` (and a .zip beside it); returns their paths. Never writes into an
        existing folder: the folder is built hidden and renamed to a name not yet taken. `audit`: the export
        becomes a row of the database's audit trail (ds2a/records/audit.py)."""
        from .. import __version__

        facts = self.facts(pv)
        facts["written"] = {"utc": _iso(dt.datetime.now(dt.timezone.utc).timestamp()), "by": f"ds2a {__version__}",
                            "database": os.path.abspath(self.db)}
        stamp = dt.datetime.fromtimestamp(pv["t_end"] or 0, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        base = f"{_safe(pv['part_id'] or 'part')}_run{pv['run_id']}_{pv['verdict']}_{stamp}"
        tmp = os.path.join(out, f".{base}.{uuid.uuid4().hex[:8]}.tmp")
        os.makedirs(tmp)
        try:
            _fill(tmp, facts, self._run(pv["run_id"]))
            final = _free_name(out, base, "")
            os.rename(tmp, final)  # a folder that appeared meanwhile: rename onto a non-empty folder fails
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        archive = None
        if make_zip:
            archive = _free_name(out, os.path.basename(final), ".zip")
            check_outputs([("--zip", archive)], [("the evidence folder", final), ("DB", self.db)])
            with atomic_path(archive, "--zip") as part_file, zipfile.ZipFile(part_file, "w", zipfile.ZIP_DEFLATED) as z:
                for name in sorted(_listing(final)):
                    z.write(os.path.join(final, name), os.path.join(os.path.basename(final), name))
        if audit:
            self._audit_export(pv, final, archive)
        return final, archive

    def _audit_export(self, pv: sqlite3.Row, folder: str, archive: Optional[str]) -> None:
        """An evidence_export row (who, where, which part, the manifest's sha256). A database this user may
        not write (an auditor's copy) keeps the export going, with a warning that it was not audited."""
        from . import audit

        try:
            with open(os.path.join(folder, "manifest.json"), "rb") as fh:
                manifest = hashlib.sha256(fh.read()).hexdigest()
            con = connect(self.db, create=False)
            try:
                audit.append(con, "evidence_export", audit.local_user(), audit.local_origin(), run_id=pv["run_id"],
                             part_id=pv["part_id"], detail={"verdict_id": pv["id"], "folder": os.path.abspath(folder),
                                                            "zip": archive and os.path.abspath(archive),
                                                            "manifest_sha256": manifest})
            finally:
                con.close()
        except (UserError, OSError, sqlite3.Error) as exc:
            print(f"warning: evidence for part {pv['part_id']} written, but not recorded in the audit trail of "
                  f"{self.db}: {exc}", file=sys.stderr)


def evidence_zip(db: str, verdict_id: int) -> Tuple[bytes, str]:
    """The evidence of one part verdict (by its row id) as .zip bytes and a file name: what the operator's
    page serves (ds2a/web/server.py); built in a temporary folder that is removed afterwards."""
    ev = Evidence(db)
    try:
        pv = ev.con.execute("SELECT * FROM verdicts WHERE id=?", (verdict_id,)).fetchone()
        if pv is None:
            raise UserError(f"part verdict {verdict_id} is not in the records of {db}")
        with tempfile.TemporaryDirectory(prefix="ds2a-evidence-") as tmp:
            _, archive = ev.write(pv, tmp, make_zip=True, audit=False)  # the page stays read-only
            with open(str(archive), "rb") as fh:
                return fh.read(), os.path.basename(str(archive))
    finally:
        ev.close()


def _free_name(out: str, base: str, ext: str) -> str:
    for i in range(1, 1000):
        path = os.path.join(out, f"{base}{'' if i == 1 else f'-{i}'}{ext}")
        if not os.path.lexists(path):
            return path
    raise UserError(f"--out {out}: 999 evidence folders named {base} exist already; give another --out")


def _decision(verdict: str, reasons: List[str], rules: Dict[str, Any]) -> str:
    if verdict == "FAIL":
        return "FAIL: " + "; ".join(reasons) + " (limits per class in the recipe; a part fails when any frame fails)"
    if verdict == "NONE":
        return ("NONE: not every frame of the part could be judged (" + ("; ".join(reasons) or "no reason recorded")
                + "); a part that is not fully inspected never passes")
    return (f"PASS: every frame was inspected and no defect region of at least {rules.get('min_area_px', '?')} px "
            "broke a limit of the recipe")


def _listing(folder: str) -> List[str]:
    names = []
    for root, _, files in os.walk(folder):
        for n in files:
            names.append(os.path.relpath(os.path.join(root, n), folder).replace(os.sep, "/"))
    return names


def _put(folder: str, name: str, data: bytes) -> None:
    path = os.path.join(folder, *name.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_new(path, data)


def _colour(mask: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    for i in range(1, 255):
        lut[i] = PALETTE[i % len(PALETTE)] if i < len(PALETTE) else (255, 255, 255)
    lut[MASK_OUTSIDE] = (128, 128, 128)
    return lut[mask]


def _picture(folder: str, frame: Dict[str, Any], keep: str, save_fail: Optional[str]) -> Dict[str, Any]:
    """Copy one frame's kept pictures into `folder`; for each one missing, the reason."""
    stem = f"frames/{frame['seq']:06d}"
    raw = frame["raw_path"]
    wanted = {"annotated": (frame["image_path"], f"{stem}_annotated.jpg"), "raw": (raw, f"{stem}_raw.jpg"),
              "mask": (mask_path(raw) if raw else None, f"{stem}_mask.png")}
    got: Dict[str, Any] = {}
    for kind, (src, name) in wanted.items():
        if src and os.path.isfile(src):
            with open(src, "rb") as fh:
                _put(folder, name, fh.read())
            got[kind] = name
        elif src:
            got[kind] = None
            got[f"{kind}_missing"] = f"recorded at {src} but the file is gone (moved or deleted since the run)"
        else:
            got[kind] = None
            got[f"{kind}_missing"] = _why_not_kept(frame, keep, save_fail, kind, bool(raw))
    if got.get("mask"):
        mask = cv2.imread(os.path.join(folder, got["mask"]), cv2.IMREAD_UNCHANGED)
        if mask is not None and mask.ndim == 2:
            ok, buf = cv2.imencode(".png", _colour(mask))
            if ok:
                _put(folder, f"{stem}_mask_colour.png", buf.tobytes())
                got["mask_colour"] = f"{stem}_mask_colour.png"
    return got


def _why_not_kept(frame: Dict[str, Any], keep: str, save_fail: Optional[str], kind: str, raw: bool) -> str:
    if kind == "mask" and raw:
        return "not kept: the run kept no class-map mask (made by a ds2a before masks were kept)"
    if frame["verdict"] == "NONE":
        return "not kept: the frame was not inspected (NONE), so it has no judged picture"
    if not save_fail and keep.startswith("not recorded"):
        return "not kept: pictures are kept only with `ds2a inspect --save-fail DIR` (not recorded whether it was given)"
    if not save_fail:
        return "not kept: the run had no --save-fail folder, so no pictures were kept"
    if frame["verdict"] == "FAIL":
        return "not kept: writing it failed during the run (see the run's stats: fail_images_unsaved)"
    return f"not kept: the run's --keep-raw policy '{keep}' keeps no picture of this PASS frame"


def _fill(folder: str, facts: Dict[str, Any], run: sqlite3.Row) -> None:
    """Write every file of one evidence folder, then index.html, manifest.json and SHA256SUMS."""
    stats = _json(run["stats"], {})
    ev = stats.get("evidence") or {}
    keep = str(facts["keep_raw"])
    for frame in facts["frames"]:
        frame["files"] = _picture(folder, frame, keep, facts.get("save_fail"))
    recipe_files = {"effective_rules": "recipe/effective_rules.json"}
    _put(folder, recipe_files["effective_rules"], json.dumps(facts["run"]["effective_rules"], indent=2).encode())
    text = ev.get("rules_text")
    if text is not None:
        name = "recipe/" + _safe(os.path.basename(ev.get("rules_file") or "rules.yaml"))
        data = text.encode("utf-8")
        _put(folder, name, data)
        recipe_files["file"] = name
        copy_sha = hashlib.sha256(data).hexdigest()
        facts["recipe"]["copy_sha256"] = copy_sha
        facts["recipe"]["copy_matches"] = copy_sha == facts["recipe"].get("sha256")
    else:
        facts["recipe"]["file_copy"] = ("none: the run used the built-in rules (no rules file); the effective "
                                        "rules are in recipe/effective_rules.json") if ev else \
            "not recorded (run made before ds2a kept the rules file); the effective rules are in recipe/effective_rules.json"
    facts["recipe"]["files"] = recipe_files
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["seq", "time_utc", "frame_verdict", "class_id", "class_name", "area_px", "area_mm2", "x", "y", "w",
                "h", "cx", "cy", "confidence"])
    for f in facts["frames"]:
        for d in f["defects"]:
            w.writerow([f["seq"], f["time_utc"], f["verdict"], d["class_id"], d["class_name"], d["area_px"],
                        d["area_mm2"], d["x"], d["y"], d["w"], d["h"], d["cx"], d["cy"], d["confidence"]])
    _put(folder, "defects.csv", out.getvalue().encode("utf-8"))
    _put(folder, "evidence.json", json.dumps(facts, indent=2, default=str).encode("utf-8"))
    _put(folder, "index.html", _html(facts).encode("utf-8"))
    names = sorted(_listing(folder))
    files = {n: {"sha256": file_sha256(os.path.join(folder, n)), "bytes": os.path.getsize(os.path.join(folder, n))}
             for n in names}
    manifest = {"format": FORMAT, "part_id": facts["part"]["part_id"], "run_id": facts["run"]["id"],
                "verdict": facts["part"]["verdict"], "written": facts["written"], "files": files}
    _put(folder, "manifest.json", json.dumps(manifest, indent=2).encode("utf-8"))
    sums = "".join(f"{file_sha256(os.path.join(folder, n))}  {n}\n" for n in names + ["manifest.json"])
    _put(folder, "SHA256SUMS", sums.encode("utf-8"))


def verify(folder: str) -> List[str]:
    """Problems with an evidence folder: files whose sha256 differs from the manifest, missing or unlisted."""
    try:
        with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as fh:
            files = json.load(fh)["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"manifest.json unreadable: {exc}"]
    problems = []
    for name, entry in files.items():
        path = os.path.join(folder, *name.split("/"))
        if not os.path.isfile(path):
            problems.append(f"{name}: missing")
        elif file_sha256(path) != entry.get("sha256"):
            problems.append(f"{name}: sha256 differs from the manifest")
    extra = set(_listing(folder)) - set(files) - {"manifest.json", "SHA256SUMS"}
    problems += [f"{n}: not in the manifest" for n in sorted(extra)]
    return problems


# --- the page -----------------------------------------------------------------------------------------

_CSS = ("body{font-family:sans-serif;margin:1.5em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;vertical-align:top}"
        ".FAIL{color:#b00}.PASS{color:#070}.NONE{color:#a60}img{max-width:320px;border:1px solid #999}"
        ".miss{color:#a60;font-style:italic}code{font-size:90%}")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _a(name: str, label: Optional[str] = None) -> str:
    return f'<a href="{html.escape(name, quote=True)}">{_e(label or name)}</a>'


def _kv(rows: Sequence[Tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _legend(classes: Sequence[str]) -> str:
    lut = _colour(np.arange(256, dtype=np.uint8).reshape(1, -1))[0]
    items = [(str(name), lut[i]) for i, name in enumerate(classes)] + [("outside the region", lut[MASK_OUTSIDE])]
    return ", ".join(f"<span style='background:rgb({int(c[2])},{int(c[1])},{int(c[0])});padding:0 .6em'>&nbsp;</span> "
                     f"{i if n != 'outside the region' else MASK_OUTSIDE} {_e(n)}"
                     for i, (n, c) in enumerate(items))


def _html(facts: Dict[str, Any]) -> str:
    p, run, rec, mod = facts["part"], facts["run"], facts["recipe"], facts["model"]
    st = facts["selftest"]
    selftest = _e(st) if isinstance(st, str) else _e(
        f"{st.get('status')}: {st.get('frames', 0)} golden frame(s), pixel agreement {st.get('agreement')}, "
        f"defect agreement {st.get('defect_agreement')} (limits {st.get('min_agreement')} / "
        f"{st.get('min_defect_agreement')})")
    recipe_links = " ".join(_a(v) for v in rec["files"].values())
    actions = facts["operator_actions"]
    act = _e(actions) if isinstance(actions, str) else "<pre>" + _e(json.dumps(actions, indent=1, default=str)) + "</pre>"
    out = [f"<!doctype html><html><head><meta charset=utf-8><title>Evidence {_e(p['part_id'])}</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Part {_e(p['part_id'])}: <span class={_e(p['verdict'])}>{_e(p['verdict'])}</span></h1>",
           _kv([("decided by", _e(facts["decided_by"]["explanation"])),
                ("rules of the classes named", "<code>" + _e(json.dumps(facts["decided_by"]["rules_of_the_classes_named"]))
                 + "</code>"),
                ("part level / frames", _e(f"{p['level']}, {p['n_frames']} frame(s), seq {p['first_seq']}..{p['last_seq']}")),
                ("first / last frame (UTC)", _e(f"{p['start_utc']} / {p['end_utc']}")),
                ("run", _e(f"{run['id']} ({run['status']}), {run['started_utc']} to {run['ended_utc']}")),
                ("source", _e(run["source"])),
                ("recipe", _e(f"{rec.get('name')} sha256 {rec.get('sha256')}") + " " + recipe_links
                 + (f" <span class=miss>{_e(rec.get('file_copy'))}</span>" if rec.get("file_copy") else "")
                 + (f" (copy {'matches' if rec.get('copy_matches') else 'DIFFERS FROM'} the recorded sha256)"
                    if "copy_matches" in rec else "")),
                ("model", _e(f"{run['model']} ({mod.get('backend')}), model sha256 {mod.get('model_sha256')}")),
                ("engine sha256", _e(mod.get("engine_sha256") or "none (not a TensorRT engine, or not recorded)")),
                ("self-test at start", selftest),
                ("ds2a version of the run", _e(facts["ds2a_version_of_run"])),
                ("pictures kept (--keep-raw)", _e(facts["keep_raw"])),
                ("operator actions", act),
                ("evidence written", _e(f"{facts['written']['utc']} by {facts['written']['by']} from "
                                        f"{facts['written']['database']}"))]),
           "<h2>Frames</h2>"]
    for f in facts["frames"]:
        files = f["files"]
        pics = []
        for kind in ("annotated", "raw", "mask"):
            if files.get(kind):
                link = _a(files[kind], kind)
                if kind == "mask" and files.get("mask_colour"):
                    link += " (" + _a(files["mask_colour"], "coloured") + ")"
                img = files.get("mask_colour") if kind == "mask" else files[kind]
                pics.append(f'<td><img src="{html.escape(img or files[kind], quote=True)}" alt="{kind}"><br>{link}</td>')
            else:
                pics.append(f"<td class=miss>{_e(kind)}: {_e(files.get(kind + '_missing'))}</td>")
        defects = "".join(f"<tr><td>{_e(d['class_name'])}</td><td>{_e(d['area_px'])}</td>"
                          f"<td>{_e(d['area_mm2'] if d['area_mm2'] is not None else 'no scale given')}</td>"
                          f"<td>{_e((d['x'], d['y'], d['w'], d['h']))}</td><td>{_e(d['confidence'])}</td></tr>"
                          for d in f["defects"]) or "<tr><td colspan=5>no defect region</td></tr>"
        out += [f"<h3>Frame {f['seq']} <span class={_e(f['verdict'])}>{_e(f['verdict'])}</span> {_e(f['time_utc'])}</h3>",
                f"<p>{_e('; '.join(f['reasons']) or 'no reason')}</p><table><tr>{''.join(pics)}</tr></table>",
                "<table><tr><th>class</th><th>area px</th><th>area mm²</th><th>box x,y,w,h</th><th>confidence</th></tr>"
                f"{defects}</table>"]
    out += ["<h2>Files</h2><p>", " · ".join(_a(n) for n in ("evidence.json", "defects.csv", "manifest.json", "SHA256SUMS")),
            "</p><p>The mask PNGs hold the class id per pixel (255: outside the region the model looked at); the "
            f"coloured copies are for viewing: {_legend(run['classes'])}.</p><p>Every file's sha256 is in "
            "manifest.json; <code>sha256sum -c SHA256SUMS</code> checks them without ds2a.</p></body></html>\n"]
    return "\n".join(out)
