"""`hps inspect`: what a ps.json will take, per table and tier, in all and against this machine's RAM;
with `--keys`, the hit rate a sample of the user's own keys gets at each `gpucacheper`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from hps.cli.text_output import Output, human_bytes
from hps.errors import KeyInputError

EXAMPLE = """examples:
  hps inspect hps-demo/ps.json
  hps inspect ps.json --json > sizes.json
  hps inspect ps.json --model dlrm --table 0 --keys keys.npy --plot hit_rate.png

Memory figures are estimates from each structure's layout (hps.sizing), not measurements.
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
    out = Output()
    if args.json:
        doc: dict[str, Any] = {
            "config": str(args.config), "key_type": str(config.key_dtype),
            "tiers": _tiers(config), "tables": [asdict(e) for e in estimates], "memory": asdict(totals)}
        if replay is not None:
            doc["hit_rates"] = replay["doc"]
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
