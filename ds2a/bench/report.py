"""Bench results as JSON (everything, raw samples included), a markdown table, and one PNG plot.

A report is a dict: {"command", "created", "machine", "notes", "rows": [row, ...]}; a row
holds label, model, backend, precision, size_mb, input_size, batch, latency_ms (stats),
stages_ms, accuracy (miou / parity) and speedup, or `skipped` with the reason.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, Dict, List, Optional, Sequence

from ..outputs import atomic_path, atomic_write
from .machine import machine_info

ACCURACY_KEYS = ("miou", "parity")


def add_speedups(rows: Sequence[Dict[str, Any]]) -> None:
    """speedup = PyTorch median / row median, within each `group` (same model and size)."""
    base: Dict[Any, float] = {}
    for r in rows:
        med = (r.get("latency_ms") or {}).get("median")
        if r.get("backend") == "pytorch" and med and r.get("group") not in base:
            base[r.get("group")] = med
    for r in rows:
        med = (r.get("latency_ms") or {}).get("median")
        b = base.get(r.get("group"))
        r["speedup"] = round(b / med, 3) if (b and med) else None


def make_report(rows: List[Dict[str, Any]], command: str, title: str = "ds2a bench",
                notes: Optional[List[str]] = None) -> Dict[str, Any]:
    """The report dict of `rows`, with the machine they ran on and the command that reproduces them."""
    providers = sorted({p for r in rows for p in (r.get("device") or []) if isinstance(r.get("device"), list)})
    return {"title": title, "command": command,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(providers or None), "notes": list(notes or []), "rows": rows}


def summary_lines(rows: List[Dict[str, Any]]) -> List[str]:
    """The fixed-width table `ds2a bench` prints."""
    out = [f"{'model':<28}{'backend':<13}{'prec':<6}{'median':>9}{'p99':>9}{'FPS':>9}{'mIoU':>8}{'speedup':>9}"]
    for r in rows:
        s = r.get("latency_ms") or {}
        miou = f"{100 * r['miou']:.2f}" if r.get("miou") is not None else "-"
        spd = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        out.append(f"{os.path.basename(r['model'])[:27]:<28}{r['backend']:<13}{r['precision']:<6}"
                   f"{s.get('median', 0):>9.2f}{s.get('p99', 0):>9.2f}{s.get('throughput_fps', 0):>9.1f}"
                   f"{miou:>8}{spd:>9}")
    return out


def write_json(report: Dict[str, Any], path: str) -> None:
    with atomic_write(path, label="--json") as f:
        json.dump(report, f, indent=1, sort_keys=False, default=str)
        f.write("\n")


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _accuracy(row: Dict[str, Any]) -> str:
    if row.get("miou") is not None:
        return f"{100 * row['miou']:.2f}"
    if row.get("parity") is not None:
        err = row.get("logits_rel_err")
        text = f"parity {100 * row['parity']:.2f}%" + (f", logits err {err:.1e}" if err is not None else "")
        if row.get("reference_classes_seen") == 1:
            text += " (reference predicts one class)"
        return text
    return "-"


def to_markdown(report: Dict[str, Any]) -> str:
    """Summary table (Ultralytics-benchmark style), stage table, full stats, then machine and command."""
    rows: List[Dict[str, Any]] = report["rows"]
    lines = [f"# {report.get('title', 'ds2a bench')}", ""]
    e2e = [r for r in rows if r.get("mode") == "end-to-end"]
    what = ("Latency is end-to-end: capture to output of each frame through the inspection loop; throughput is "
            "frames output per second." if e2e else
            "Latency is host latency per inference (frames in host memory to class maps in host memory), "
            "model only; throughput in frames/s.")
    lines += [f"Created {report.get('created', '?')}. {what}", ""]
    lines += ["| model | backend | precision | input | batch | size (MB) | mIoU / parity | median ms | p99 ms "
              "| throughput FPS | speed-up vs PyTorch |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r.get("latency_ms") or {}
        size = "x".join(str(v) for v in r.get("input_size") or []) or "-"
        if r.get("skipped"):
            lines.append(f"| {r.get('label', '-')} | {r.get('backend', '-')} | {r.get('precision', '-')} | {size} "
                         f"| - | - | - | skipped: {r['skipped']} | | | |")
            continue
        spd = r.get("speedup")
        lines.append(
            f"| {r.get('label', '-')} | {r.get('backend')} | {r.get('precision')} | {size} | {r.get('batch')} "
            f"| {_fmt(r.get('size_mb'))} | {_accuracy(r)} | {_fmt(lat.get('median'))} | {_fmt(lat.get('p99'))} "
            f"| {_fmt(lat.get('throughput_fps'), 1)} | {_fmt(spd) + 'x' if spd else '-'} |")
    if e2e:
        lines += ["", "| model | source | frames | dropped | end-to-end FPS | model-only FPS |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r.get('model')} | {r.get('source')} | {r.get('frames')} | {r.get('dropped')} "
                  f"| {_fmt(r.get('e2e_fps'), 1)} | {_fmt(r.get('model_fps'), 1)} |" for r in e2e]
    timed = [r for r in rows if r.get("latency_ms")]
    if timed:
        lines += ["", "Full statistics (ms):", "",
                  "| model | backend | precision | count | min | mean | median | p90 | p95 | p99 | max | std |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in timed:
            s = r["latency_ms"]
            lines.append(f"| {r.get('label')} | {r.get('backend')} | {r.get('precision')} | {s.get('count')} | "
                         + " | ".join(_fmt(s.get(k)) for k in ("min", "mean", "median", "p90", "p95", "p99",
                                                                "max", "std")) + " |")
    staged = [r for r in rows if r.get("stages_ms")]
    if staged:
        lines += ["", "Stages measured by the backend (median / p99 ms):", ""]
        for r in staged:
            parts = [f"{k} {_fmt(v.get('median'), 3)} / {_fmt(v.get('p99'), 3)}" for k, v in r["stages_ms"].items()]
            lines.append(f"- {r.get('label')} {r.get('backend')} {r.get('precision')}: " + ", ".join(parts))
    lines += ["", "## Machine", ""] + _machine_lines(report.get("machine") or {})
    for note in report.get("notes") or []:
        lines.append(f"- note: {note}")
    lines += ["", "## Command", "", "```", str(report.get("command", "")), "```", ""]
    return "\n".join(lines)


def _machine_lines(m: Dict[str, Any]) -> List[str]:
    cpu, gpu, pk = m.get("cpu") or {}, m.get("gpu") or {}, m.get("packages") or {}
    out = [f"- CPU: {cpu.get('model')} ({cpu.get('usable_cores')} usable / {cpu.get('logical_cores')} logical cores"
           f"; load avg {cpu.get('load_avg_1_5_15')})"]
    gpu_line = f"- GPU: {gpu.get('name')}, driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}"
    out.append(gpu_line if gpu else "- GPU: none")
    if m.get("jetson"):
        j = m["jetson"]
        out.append(f"- Jetson: {j.get('model')}, power mode {j.get('power_mode', 'unknown')}")
    out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in pk.items() if v))
    out.append(f"- OS: {m.get('os')}, Python {m.get('python')}")
    out += [f"- warning: {w}" for w in m.get("warnings") or []]
    return out


def write_markdown(report: Dict[str, Any], path: str) -> None:
    with atomic_write(path, label="--markdown") as f:
        f.write(to_markdown(report))


def write_plot(report: Dict[str, Any], path: str) -> None:
    """Left: latency distribution per row (box plot). Right: accuracy against median latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    rows = [r for r in report["rows"] if r.get("samples_ms")]
    # mIoU when any row has it (parity is on another scale and stays in the table), else parity
    key = "miou" if any(r.get("miou") is not None for r in rows) else "parity"
    acc = [r for r in rows if r.get(key) is not None]
    ncols = 2 if acc else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7.5 * ncols, 0.4 * len(rows) + 2.5), squeeze=False)
    ax = axes[0][0]
    if rows:
        new_mpl = tuple(int(v) for v in matplotlib.__version__.split(".")[:2]) >= (3, 10)
        orient = {"orientation": "horizontal"} if new_mpl else {"vert": False}
        ax.boxplot([r["samples_ms"] for r in rows], showfliers=True, whis=(1, 99), **orient)
        ax.set_yticks(range(1, len(rows) + 1), [_row_name(r) for r in rows], fontsize=8)
    ax.set_xlabel("host latency per inference (ms, log; whiskers p1-p99)")
    ax.set_title("latency distribution")
    axs = [ax]
    if acc:
        ax2 = axes[0][1]
        for i, r in enumerate(acc):
            ax2.scatter(r["latency_ms"]["median"], 100 * r[key], marker="o", color=plt.cm.tab20(i % 20),
                        label=_row_name(r))
        ax2.set_xlabel("median latency (ms, log)")
        ax2.set_ylabel("mIoU %" if key == "miou" else "class-map parity with the reference %")
        ax2.set_title("accuracy vs latency")
        ax2.legend(fontsize=7, loc="best")
        axs.append(ax2)
    for a in axs:
        a.set_xscale("log")
        a.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        a.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        a.xaxis.set_minor_formatter(ticker.NullFormatter())
        a.grid(True, which="major", axis="x", alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path, label="--plot") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def _row_name(r: Dict[str, Any]) -> str:
    size = "x".join(str(v) for v in r.get("input_size") or [])
    return f"{r.get('label')} {size} {r.get('backend')} {r.get('precision')}"


def write_all(report: Dict[str, Any], json_path: Optional[str] = None, markdown_path: Optional[str] = None,
              plot_path: Optional[str] = None) -> None:
    if json_path:
        write_json(report, json_path)
    if markdown_path:
        write_markdown(report, markdown_path)
    if plot_path:
        write_plot(report, plot_path)
