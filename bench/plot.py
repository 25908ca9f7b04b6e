"""Optional PNG of latency distributions (needs matplotlib: ``pip install oxiserve[plot]``)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stats import RequestResult


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_latencies(results: Sequence[RequestResult], path: Path, title: str) -> Path:
    """Write cumulative distributions of TTFT, inter-token and end-to-end latency to ``path``."""
    importlib.import_module("matplotlib").use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    ok = [r for r in results if r.error is None]
    series = {
        "time to first token": [r.ttft * 1e3 for r in ok if r.ttft is not None],
        "inter-token latency": [gap * 1e3 for r in ok for gap in r.itl],
        "end-to-end latency": [(r.end - r.start) * 1e3 for r in ok],
    }
    shown = {name: sorted(values) for name, values in series.items() if values}
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(5 * max(1, len(shown)), 4))
    axes_list = list(axes) if len(shown) > 1 else [axes]
    for ax, (name, values) in zip(axes_list, shown.items(), strict=False):
        fractions = [(i + 1) / len(values) for i in range(len(values))]
        ax.plot(values, fractions)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of samples")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
