"""`hps inspect`: what a ps.json will take, per table and tier, in all and against this machine's RAM;
with `--keys`, the hit rate a sample of the user's own keys gets at each `gpucacheper`; with
`--measure-load`, the peak and steady memory of a real load of the config, measured in a child process."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from typing import Any

from hps.cli.text_output import Output, human_bytes
from hps.errors import HpsError, KeyInputError

EXAMPLE = """examples:
  hps inspect hps-demo/ps.json
  hps inspect ps.json --json > sizes.json
  hps inspect ps.json --model dlrm --table 0 --keys keys.npy --plot hit_rate.png
  hps inspect ps.json --measure-load

Memory figures are estimates from each structure's layout (hps.sizing), not measurements;
--measure-load also loads the config in a child process and reports its measured peak and
steady resident memory beside them (a real start: every tier the config names is filled).
--keys replays the sample through hps's CPU cache (set-associative LRU): see its help."""

POLICY_NOTE = ("replayed through hps's CPU cache (CpuEmbeddingCache: sets of {ways} slots, exact LRU within a set; a "
               "whole-table hash that never evicts where gpucacheper x rows >= rows), cold at the start, the misses "
               "of each lookup inserted after it. hps's GPU cache has sets of 7 slots and an approximate LRU, "
               "HugeCTR's sets of 64 (--ways 7, --ways 64: on Zipf traffic the set size moved the hit rate "
               "by under half a point, benchmarks/results/cache_sizing.md).")


def register(sub: Any) -> None:
    """Add the `inspect` subcommand to `sub` (argparse subparsers)."""
    p = sub.add_parser("inspect", help="models, tables, rows, dims and the memory each tier and cache will take",
                       description="Models, tables, rows and dims of a ps.json, the memory each tier and cache "
                                   "will take (host, GPU, Redis, disk), the host peak while loading, and this "
                                   "machine's RAM; with --keys, the cache hit rate of your own key sample at "
                                   "each gpucacheper.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the ps.json to size (its sparse files give the row counts)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--keys", metavar="SAMPLE.npy",
                   help="a sample of your lookup keys (.npy of int64, 1-D or 2-D read row-major, in the order "
                        "they were looked up): replay it through the cache of one table (--model, --table) "
                        "and report the hit rate and memory at each --gpucacheper")
    p.add_argument("--model", help="with --keys: the model (optional when the ps.json has one)")
    p.add_argument("--table", default="0", help="with --keys: table id or name (default 0)")
    p.add_argument("--gpucacheper", default="0.05,0.1,0.2,0.5,1.0", metavar="LIST",
                   help="with --keys: comma-separated cache sizes as fractions of the table's rows "
                        "(default 0.05,0.1,0.2,0.5,1.0)")
    p.add_argument("--batch", type=int, metavar="KEYS",
                   help="with --keys: keys per lookup in the replay (default: the model's max_batch_size x "
                        "maxnum_catfeature_query_per_table_per_sample of the table)")
    p.add_argument("--ways", type=int, metavar="N",
                   help="with --keys: slots per cache set in the replay (default 16, hps's CPU cache)")
    p.add_argument("--plot", metavar="OUT.png",
                   help="with --keys: also write a PNG of hit rate and memory against gpucacheper "
                        "(needs matplotlib: the 'plot' extra)")
    p.add_argument("--measure-load", action="store_true",
                   help="also load the config in a child process (as HPS(ps.json) would: every tier it names "
                        "is filled, RocksDB and Redis included; no update source is started) and report the "
                        "measured peak and steady resident memory (RSS) beside the estimates")
    p.set_defaults(run=run, flags={"model_name": "--model", "table_id": "--table", "batch_keys": "--batch",
                                   "gpucacheper": "--gpucacheper"})


def run(args: argparse.Namespace) -> int:
    """Print the sizes (and the replay's hit rates) as tables, or as one JSON object with `--json`."""
    from hps.cache.factory import cuda_available
    from hps.config import load_config
    from hps.lookup.row_home import with_row_home
    from hps.sizing import estimate_memory, memory_totals

    if not args.keys:
        for flag in ("plot", "batch", "ways", "model"):
            if getattr(args, flag) is not None:
                raise KeyInputError(f"--{flag} works with --keys SAMPLE.npy (the hit rate replay)")
    config = with_row_home(load_config(args.config))
    estimates = estimate_memory(config)
    totals = memory_totals(config, estimates, gpu=cuda_available())
    replay = _replay(args, config) if args.keys else None
    measured = measure_load(args.config) if args.measure_load else None
    out = Output()
    if args.json:
        doc: dict[str, Any] = {
            "config": str(args.config), "key_type": str(config.key_dtype),
            "tiers": _tiers(config), "tables": [asdict(e) for e in estimates], "memory": asdict(totals)}
        if replay is not None:
            doc["hit_rates"] = replay["doc"]
        if measured is not None:
            doc["measured_load"] = measured
        out.stream.write(json.dumps(doc) + "\n")
        return 0
    out.line(f"{args.config}: key type {config.key_dtype}; " + ", ".join(f"{k} {v}" for k, v in _tiers(config).items()))
    models = {m.name: m for m in config.models}
    for name in models:
        rows = [e for e in estimates if e.model == name]
        m = models[name]
        where = "host" if m.cache_type == "uvm" or totals.caches_on == "host" else "GPU"
        cache = f"{rows[0].cache_kind} cache ({where})" if m.gpucache else "no cache"
        out.table(f"model {name}: {cache}, devices {list(m.deployed_device_list)}",
                  [("table", "left"), ("rows", "right"), ("dim", "right"), ("cache", "right"),
                   ("volatile", "right"), ("persistent", "right")],
                  [[e.table, f"{e.rows:,}", str(e.dim), human_bytes(e.cache_bytes), human_bytes(e.volatile_bytes),
                    human_bytes(e.persistent_bytes)] for e in rows])
    _print_totals(out, totals)
    if measured is not None:
        _print_measured(out, measured, totals)
    if replay is not None:
        _print_replay(out, replay)
    return 0


def _tiers(config: Any) -> dict[str, str]:
    return {"volatile": config.volatile_db.type if config.volatile_db else "disabled",
            "persistent": config.persistent_db.type if config.persistent_db else "disabled",
            "updates": config.update_source.type if config.update_source else "none"}


def _print_totals(out: Output, t: Any) -> None:
    lines = [("host memory, loaded", human_bytes(t.host_bytes),
              "in-process volatile tier" + ("" if t.caches_on == "device" else " and caches (no GPU here)")),
             ("host memory, loading peak", human_bytes(t.peak_host_bytes), "estimate: " + t.peak_formula),
             ("device memory", human_bytes(t.device_bytes),
              "caches, all GPUs" if t.caches_on == "device" else "none: no GPU here, caches in host memory")]
    if t.redis_bytes:
        lines.append(("Redis Cluster nodes", human_bytes(t.redis_bytes), "memory over all nodes"))
    if t.disk_bytes:
        lines.append(("disk (RocksDB)", human_bytes(t.disk_bytes), "before compression"))
    if t.ram_total_bytes:
        share = t.peak_host_bytes / t.ram_available_bytes if t.ram_available_bytes else float("inf")
        short = human_bytes(t.peak_host_bytes - t.ram_available_bytes)
        verdict = (f"the loading peak is {share:.0%} of the available RAM" if share <= 1 else
                   f"the loading peak exceeds the available RAM by {short}")
        lines.append(("this machine's RAM", f"{human_bytes(t.ram_total_bytes)}",
                      f"{human_bytes(t.ram_available_bytes)} available: {verdict}"))
    out.table("memory (estimates)", [("where", "left"), ("bytes", "right"), ("what", "left")],
              [list(line) for line in lines])


def measure_load(config_path: str) -> dict[str, Any]:
    """Load `config_path` in a child Python process and return what it measured (see `_measure_here`):
    `{"rss_before_bytes", "peak_rss_bytes", "steady_rss_bytes", "seconds", "peak_over_steady", "peak_source",
    "models"}`. The child's progress bar goes to this terminal's stderr. A failed load raises the child's
    `HpsError` subclass with its message (`HpsError` naming the exit status for anything else)."""
    code = "import sys; from hps.cli.inspect import _measure_child; sys.exit(_measure_child(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(config_path)], stdout=subprocess.PIPE,
                          stderr=None if sys.stderr.isatty() else subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    try:
        doc = json.loads(lines[-1]) if lines else None
    except ValueError:
        doc = None
    if proc.returncode == 0 and isinstance(doc, dict) and "peak_rss_bytes" in doc:
        return doc
    if isinstance(doc, dict) and "error" in doc:
        import hps.errors

        cls = getattr(hps.errors, str(doc["error"]), None)
        cls = cls if isinstance(cls, type) and issubclass(cls, HpsError) else HpsError
        raise cls(f"--measure-load: loading {config_path} in a child process failed: {doc.get('message')}")
    tail = (proc.stderr or "").strip().splitlines()[-5:]
    raise HpsError(f"--measure-load: the child process loading {config_path} exited with status {proc.returncode}"
                   + (": " + " / ".join(tail) if tail else ""))


def _measure_child(config_path: str) -> int:
    """The child of `measure_load`: load, measure, print one JSON line on stdout; 0, or 2 with
    `{"error", "message"}` on an `HpsError`."""
    try:
        doc = _measure_here(config_path)
    except HpsError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        return 2
    print(json.dumps(doc), flush=True)
    return 0


def _measure_here(config_path: str) -> dict[str, Any]:
    """Load `config_path` in this process (meant to be a fresh one) with no update source and measure it:
    RSS before the load (Python, hps and its imports), the peak during it (the kernel's high-water mark,
    reset just before the load, where /proc allows; else the loader's sampled peak) and the steady RSS
    once loaded, then close it."""
    import dataclasses
    import gc
    import time

    from hps import HPS
    from hps.config import load_config
    from hps.lookup.loading import rss_bytes

    config = load_config(config_path)
    if config.update_source is not None:  # measure the load, do not join the consumer group
        config = dataclasses.replace(config, update_source=None)
    gc.collect()
    before = rss_bytes()
    hwm_reset = _reset_peak_rss()
    started = time.perf_counter()
    hps = HPS(config, show_progress=sys.stderr.isatty())
    try:
        seconds = time.perf_counter() - started
        loads = hps.stats().get("load", {})
        gc.collect()
        steady = rss_bytes()
        sampled = max([before, steady] + [int(r.get("peak_rss_bytes") or 0) for r in loads.values()])
        hwm = _peak_rss() if hwm_reset else 0
        peak = max(hwm, sampled)
    finally:
        hps.close()
    return {"rss_before_bytes": before, "peak_rss_bytes": peak, "steady_rss_bytes": steady, "seconds": seconds,
            "peak_over_steady": peak / steady if steady else None,
            "peak_source": "kernel high-water mark (VmHWM)" if hwm_reset else "sampled by the loader",
            "models": loads}


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux: `5` into /proc/self/clear_refs); False where it can't."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return _peak_rss() > 0
    except OSError:
        return False


def _peak_rss() -> int:
    """This process's RSS high-water mark in bytes (VmHWM of /proc/self/status; 0 where unreadable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _print_measured(out: Output, m: dict[str, Any], t: Any) -> None:
    before = m["rss_before_bytes"]
    ratio = m["peak_over_steady"]
    lines = [("RSS before loading", human_bytes(before), "Python, hps and its imports"),
             ("host memory, loaded", human_bytes(m["steady_rss_bytes"] - before),
              f"steady RSS {human_bytes(m['steady_rss_bytes'])} less the above; estimate "
              f"{human_bytes(t.host_bytes)}"),
             ("host memory, loading peak", human_bytes(m["peak_rss_bytes"] - before),
              f"peak RSS {human_bytes(m['peak_rss_bytes'])} less the above; estimate "
              f"{human_bytes(t.peak_host_bytes)}"),
             ("peak / steady RSS", "-" if ratio is None else f"{ratio:.2f}x", f"load took {m['seconds']:.1f} s")]
    out.table(f"memory (measured: a load in a child process; peak from the {m['peak_source']})",
              [("where", "left"), ("bytes", "right"), ("what", "left")], [list(line) for line in lines])


def _replay(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    from hps.cli.selection import pick_model, pick_table
    from hps.model_format import SparseModel
    from hps.sizing import check_replay_inputs, load_key_sample, replay_hit_rates

    try:
        pers = [float(x) for x in args.gpucacheper.split(",") if x.strip()]
    except ValueError:
        raise KeyInputError(f"--gpucacheper {args.gpucacheper!r}: expected numbers like 0.05,0.1,0.2") from None
    if not pers:
        raise KeyInputError("--gpucacheper: give at least one size, e.g. 0.2")
    if args.batch is not None and args.batch < 1:
        raise KeyInputError(f"--batch {args.batch}: must be at least 1")
    if args.ways is not None and args.ways < 1:
        raise KeyInputError(f"--ways {args.ways}: must be at least 1")
    model = pick_model(config, args.model, args.config)
    table = pick_table(model, args.table, args.config)
    rows = SparseModel(table.sparse_file, table.dim).num_rows
    keys = load_key_sample(args.keys)
    check_replay_inputs(keys, rows)
    batch = args.batch or model.max_keys_per_call(table.table_id)
    points = replay_hit_rates(keys, model, rows, table.dim, pers, batch_keys=batch, ways=args.ways)
    from hps.cache.cpu import DEFAULT_WAYS

    policy = POLICY_NOTE.format(ways=args.ways or DEFAULT_WAYS)
    title = (f"hit rate of {args.keys} ({keys.shape[0]:,} keys, {batch:,} per lookup) on {model.name} table "
             f"{table.name} ({rows:,} rows, dim {table.dim})")
    if args.plot:
        from hps.cli.hit_rate_plot import plot_hit_rates

        plot_hit_rates(points, args.plot, title)
    doc = {"keys": str(args.keys), "num_keys": int(keys.shape[0]), "batch_keys": batch, "model": model.name,
           "table": table.name, "rows": rows, "policy": policy, "plot": args.plot,
           "points": [{**asdict(p), "hit_rate": p.hit_rate} for p in points]}
    return {"title": title, "points": points, "policy": policy, "plot": args.plot, "doc": doc}


def _print_replay(out: Output, replay: dict[str, Any]) -> None:
    points = replay["points"]
    out.table(replay["title"],
              [("gpucacheper", "right"), ("cache rows", "right"), ("hit rate", "right"), ("memory", "right"),
               ("policy", "left")],
              [[f"{p.gpucacheper:g}", f"{p.capacity_rows:,}", f"{p.hit_rate:.1%}", human_bytes(p.cache_bytes),
                p.policy] for p in points])
    out.line(f"ceiling: {points[0].ceiling:.1%} (a cache that never evicts: every key after the first lookup "
             "that touched it)")
    out.line("policy: " + replay["policy"])
    if replay["plot"]:
        out.line(f"plot: {replay['plot']}")
