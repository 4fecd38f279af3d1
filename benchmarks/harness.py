"""Shared benchmark plumbing: timing, machine description, and result files.

Each benchmark script measures ours beside a baseline in the same run and calls
`write_results(report, section, rows, notes)`; sections of one report (e.g. "cpu")
are merged into `benchmarks/results/<report>.json` and `<report>.md`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

RESULTS = Path(__file__).resolve().parent / "results"
#: What every report says of its figures: the 2-core VMs these run on differ in speed between machines
#: and, on some, between runs (baselines moved up to 2x minutes apart on an AMD EPYC VM in 2026-11).
VM_NOTE = "Figures move between machines and runs of these 2-core VMs: compare ours with the baseline of the same run."


def machine() -> str:
    """One line naming the machine the figures were taken on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible{gpu}, Python {platform.python_version()}, {platform.system()}"


def time_calls(fn: Callable[[], Any], repeat: int = 20, warmup: int = 2, min_seconds: float = 0.0) -> list[float]:
    """Wall-clock seconds of `repeat` calls of `fn` after `warmup` calls (host-synchronous work)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start_all < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def closed_loop(call: Callable[[int], Any], concurrency: int, seconds: float, *, min_calls: int = 0,
                pause_s: float = 0.0,
                context: Callable[[], AbstractContextManager] = nullcontext) -> tuple[list[float], float]:
    """`concurrency` threads each calling `call(i)` back to back for `seconds` (and at least `min_calls`
    times; i starts at the thread's index and counts up), each inside its own `context()` (e.g. a CUDA
    stream); with `pause_s`, a thread sleeps that long before every call, untimed. Returns the seconds of
    every call and the wall seconds of the whole run."""

    def worker(w: int) -> list[float]:
        times, i = [], w
        t_end = time.perf_counter() + seconds
        with context():
            while time.perf_counter() < t_end or len(times) < min_calls:
                if pause_s:
                    time.sleep(pause_s)
                t0 = time.perf_counter()
                call(i)
                times.append(time.perf_counter() - t0)
                i += 1
        return times

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        times = [t for ts in pool.map(worker, range(concurrency)) for t in ts]
    return times, time.perf_counter() - start


def threads_at_once(worker: Callable[[int, threading.Barrier], Any], threads: int) -> float:
    """Wall seconds of `threads` threads running `worker(t, barrier)`, timed from the moment all of them
    have called `barrier.wait()` (each after its own set-up) until the last returns."""
    barrier = threading.Barrier(threads + 1)
    pool = [threading.Thread(target=worker, args=(t, barrier)) for t in range(threads)]
    for th in pool:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in pool:
        th.join()
    return time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(report: str, section: str, rows: list[dict[str, Any]], notes: str = "",
                  machine_line: str | None = None) -> None:
    """Merge `rows` (one dict per measured line, same keys) as `section` of `report`, then rewrite
    `results/<report>.json` and `results/<report>.md`, and print the section's table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{report}.json"
    data: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    data[section] = {"machine": machine_line or machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "notes": notes, "rows": rows}
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md = [f"# Benchmarks: {report}", "", "Generated by the scripts in `benchmarks/`; every figure was measured "
          "beside its baseline in the same run.", ""]
    for name, sec in data.items():
        md += [f"## {name}", "", f"Machine: {sec['machine']}  ", f"Date: {sec['date']}", ""]
        if sec["notes"]:
            md += [sec["notes"], ""]
        md += _table(sec["rows"]) + [""]
    (RESULTS / f"{report}.md").write_text("\n".join(md))
    print("\n".join(_table(rows)))


def plot(report: str, name: str, x: Sequence[float], series: dict[str, Sequence[float]], xlabel: str, ylabel: str,
         title: str = "", logx: bool = False, logy: bool = False) -> Path | None:
    """Draw `series` (label → y values over `x`) as lines into `results/<report>_<name>.png`, for the
    markdown beside it to link (`![...](<report>_<name>.png)`). Returns the path, or None when
    matplotlib is not installed (the 'plot' extra): the tables are written anyway."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(no plot {report}_{name}.png: matplotlib is not installed; pip install matplotlib)")
        return None
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{report}_{name}.png"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    try:
        for label, ys in series.items():
            ax.plot(list(x), list(ys), "o-", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(title or f"{report}: {name}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    cols = list(rows[0])
    fmt = lambda v: f"{v:,.3g}" if isinstance(v, float) and abs(v) < 1000 else (f"{v:,.0f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return lines
