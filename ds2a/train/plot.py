"""A small PNG of a run's training curve (loss and selection-split mIoU against iterations) for model cards."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional


def _read(path: Path) -> List[Dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_run(run_dir: str, out_png: str, title: Optional[str] = None) -> str:
    """train.csv + eval.csv of `run_dir` -> a two-axis plot at `out_png` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    train, evals = _read(run / "train.csv"), _read(run / "eval.csv")
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if train:
        ax.plot([int(r["iter"]) for r in train], [float(r["loss"]) for r in train], color="tab:gray", lw=0.8,
                label="train loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (all heads)")
    ax2 = ax.twinx()
    if evals:
        ax2.plot([int(r["iter"]) for r in evals], [float(r["mIoU"]) for r in evals], "o-", color="tab:blue",
                 label="eval-split mIoU (selects best.pt)")
        for key in [k for k in evals[0] if k.startswith("IoU.") and k != "IoU.background"]:
            vals = [float(r[key]) if r[key] not in ("", "None") else float("nan") for r in evals]
            ax2.plot([int(r["iter"]) for r in evals], vals, "--", lw=0.8, label=key)
    ax2.set_ylabel("IoU")
    ax2.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax2.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="center right")
    ax.set_title(title or run.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
