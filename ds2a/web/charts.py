"""Trend charts drawn on the server as SVG with matplotlib (no browser library, no CDN).

Class colours are the model's palette, the same the video's overlay paints (ds2a/inspect/overlay.py).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

UNITS: Tuple[Tuple[int, str], ...] = ((3600, "h"), (60, "min"), (1, "s"))


def class_colours(classes: Sequence[str], palette_bgr: Sequence[Sequence[int]]) -> Dict[str, str]:
    """'#rrggbb' per defect class (background left out) from the model's BGR palette."""
    return {str(name): "#{2:02x}{1:02x}{0:02x}".format(*(int(v) for v in palette_bgr[i]))
            for i, name in enumerate(classes) if 0 < i < len(palette_bgr)}


def _figure(title: str) -> Tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in a server thread

    fig = Figure(figsize=(6.4, 2.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _axis(trend: Dict[str, Any]) -> Tuple[List[float], float, str]:
    """Bucket starts in a readable unit since the run's first frame."""
    span = trend["interval_s"] * max(trend["n"], 1)
    scale, unit = next((s, u) for s, u in UNITS if span >= 3 * s or s == 1)
    return [i * trend["interval_s"] / scale for i in range(trend["n"])], trend["interval_s"] / scale, unit


def _svg(fig: Any) -> bytes:
    import io

    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ds2a"}):
        fig.tight_layout()
        FigureCanvasSVG(fig).print_svg(buf)
    return buf.getvalue()


def pass_rate_svg(trend: Dict[str, Any]) -> bytes:
    x, width, unit = _axis(trend)
    fig, ax = _figure(f"pass rate per {trend['interval_s']} s (%), parts per interval as bars")
    ax2 = ax.twinx()
    ax2.bar(x, trend["parts"], width=width * 0.8, align="edge", color="#c9d6e3", label="parts")
    ax2.set_ylabel("parts", fontsize=8)
    pts = [(xi + width / 2, 100.0 * r) for xi, r in zip(x, trend["pass_rate"]) if r is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="#1a7f37", ms=3)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_ylim(-2, 102)
    ax.set_ylabel("pass %", fontsize=8)
    ax.set_xlabel(f"time since the run's first frame ({unit})", fontsize=8)
    return _svg(fig)


def defects_svg(trend: Dict[str, Any], colours: Optional[Dict[str, str]] = None) -> bytes:
    x, width, unit = _axis(trend)
    fig, ax = _figure(f"defect regions per class per {trend['interval_s']} s")
    bottom = [0] * trend["n"]
    for name, counts in trend["defects"].items():
        ax.bar(x, counts, width=width * 0.8, align="edge", bottom=bottom, label=name,
               color=(colours or {}).get(name), edgecolor="#57606a", linewidth=0.4)
        bottom = [b + c for b, c in zip(bottom, counts)]
    if trend["defects"]:
        ax.legend(fontsize=7, loc="upper left", frameon=False)
    else:
        ax.text(0.5, 0.5, "no defects", transform=ax.transAxes, ha="center", color="#666")
    ax.set_ylabel("regions", fontsize=8)
    ax.set_xlabel(f"time since the run's first frame ({unit})", fontsize=8)
    return _svg(fig)
