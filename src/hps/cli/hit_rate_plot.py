"""The PNG plot of `hps inspect --keys ... --plot out.png`: hit rate and cache memory per gpucacheper.

matplotlib (the `plot` extra) is imported here only, with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
import textwrap
from typing import Sequence

from hps.errors import MissingDependencyError, pip_install_hint
from hps.sizing import HitRate


def plot_hit_rates(points: Sequence[HitRate], path: str | os.PathLike[str], title: str) -> None:
    """Write a PNG to `path`: hit rate (left axis, with the no-eviction ceiling) and cache memory in
    MiB (right axis) against gpucacheper. Raises `MissingDependencyError` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(f"--plot needs matplotlib: {pip_install_hint('plot')}") from None
    pers = [p.gpucacheper for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    try:
        ax.plot(pers, [p.hit_rate for p in points], "o-", label="hit rate (replayed)")
        ax.axhline(points[0].ceiling, linestyle=":", color="gray", label="ceiling: every key after its first touch")
        ax.set_xlabel("gpucacheper (cache rows / table rows)")
        ax.set_ylabel("hit rate")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        mem = ax.twinx()
        mem.plot(pers, [p.cache_bytes / 2**20 for p in points], "s--", color="tab:orange", label="cache memory")
        mem.set_ylabel("cache memory (MiB, all replicas)")
        lines = ax.get_legend_handles_labels()
        more = mem.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
        ax.set_title(textwrap.fill(title, 80), fontsize=9)
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png")
    finally:
        plt.close(fig)
