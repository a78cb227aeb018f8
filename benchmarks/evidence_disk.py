"""Disk cost of `ds2a inspect --keep-raw` per 1,000 parts, on demo:// at its default size (1280x720).

    python benchmarks/evidence_disk.py [--frames 150] [--policies fail all sample:10] [--model M.onnx]

For each policy: one inspection of the same demo frames (demo:// is deterministic) with --save-fail
into a fresh folder and --db; prints the bytes the kept pictures take (annotated JPEG, raw JPEG q95,
class-map mask PNG; ds2a/inspect/publish.py) and the database, per part and per 1,000 parts.
Results: benchmarks/results/evidence.md.
"""
from __future__ import annotations

import argparse
import collections
import os
import sqlite3
import tempfile
from typing import Dict

from ds2a.inspect.run import InspectOptions, inspect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "ds2a", "assets", "demo", "ds2a_tiny_synth.int8.onnx")


def _sizes(folder: str) -> Dict[str, int]:
    by = collections.Counter()
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        kind = name.rsplit("_", 1)[-1].split(".")[0]  # annotated, raw, mask
        by[kind] += os.path.getsize(os.path.join(folder, name))
    return dict(by)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEMO)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--policies", nargs="+", default=["fail", "all", "sample:10"])
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = ap.parse_args()
    print(f"demo://?frames={args.frames} (1280x720), model {os.path.basename(args.model)}")
    print("| policy | parts (FAIL) | frames kept / judged | annotated | raw | mask | pictures per part | "
          "per 1,000 parts | database per 1,000 parts |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies:
            kept = os.path.join(tmp, policy.replace(":", "_"))
            db = kept + ".sqlite"
            options = InspectOptions(model=args.model, source=f"demo://?frames={args.frames}", headless=True, db=db,
                                     save_fail=kept, keep_raw=policy, drift="off",
                                     backend_options={"intra_op_threads": args.threads})
            with open(os.devnull, "w") as null:
                summary = inspect(options, out=null)
            con = sqlite3.connect(db)
            judged, n_kept = con.execute("SELECT SUM(verdict != 'NONE'), SUM(raw_path IS NOT NULL) FROM frames").fetchone()
            con.close()
            parts = len(summary.parts)
            failed = sum(p.verdict == "FAIL" for p in summary.parts)
            sizes = _sizes(kept)
            total = sum(sizes.values())
            db_bytes = sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s))
            mib = 2 ** 20
            print(f"| {policy} | {parts} ({failed}) | {n_kept} / {judged} | {sizes.get('annotated', 0) / mib:.2f} MiB | "
                  f"{sizes.get('raw', 0) / mib:.2f} MiB | {sizes.get('mask', 0) / mib:.3f} MiB | "
                  f"{total / max(parts, 1) / 1e3:.0f} kB | {total / max(parts, 1) * 1000 / 1e9:.2f} GB | "
                  f"{db_bytes / max(parts, 1) * 1000 / 1e6:.1f} MB |", flush=True)


if __name__ == "__main__":
    main()
