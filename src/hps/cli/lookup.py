"""`hps lookup`: print the vectors of a few keys of one table.

By default the keys are found in the table's sparse files directly: the `key` file (raw int64) is
memory-mapped and scanned in chunks for the keys asked, stopping once all are found, and only their
rows of `emb_vector` are read, so two keys of a 20M-row table cost a scan of 160 MB of keys and two
row reads, not a start-up. `--through-hps` starts an `HPS` from the ps.json instead (every tier
loaded, as a server would) and answers as it would: with updates applied since (RocksDB, Kafka) and
`hit_rate_threshold`'s default values.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from hps.cli.selection import pick_model, pick_table
from hps.cli.text_output import Output
from hps.config.schema import TableConfig
from hps.model_format import SparseModel

#: Keys read from the `key` file per step of the scan (8 MiB).
SCAN_CHUNK_ROWS = 1 << 20

EXAMPLE = """examples:
  hps lookup hps-demo/ps.json 3 17 1000000            # the only model's table 0, from the sparse files
  hps lookup ps.json --model dlrm --table 2 --json 5 6
  hps lookup ps.json --through-hps 3 17               # as a server answers (tiers, updates applied)

output: one line per key: the key, 'found' or 'default' (the key is in no file / tier and gets
default_value_for_each_table), then the vector's values separated by spaces."""


def register(sub: Any) -> None:
    """Add the `lookup` subcommand to `sub` (argparse subparsers)."""
    p = sub.add_parser("lookup", help="print the vectors of keys of one table (read from its sparse files)",
                       description="Print the vectors of keys of one table. By default they are read from the "
                                   "table's sparse files: the int64 'key' file is memory-mapped and searched, then "
                                   "only those rows of 'emb_vector' are read (no HPS, no tiers, seconds for any "
                                   "table size). --through-hps answers as a server would instead.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the ps.json naming the model and its sparse files")
    p.add_argument("keys", nargs="+", type=int, metavar="KEY", help="int64 keys to look up")
    p.add_argument("--model", help="model name in the ps.json (optional when it has one model)")
    p.add_argument("--table", default="0", help="table id (0, 1, ...) or name in embedding_table_names (default 0)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: model, table, dim, source and per key its vector and 'default'")
    p.add_argument("--through-hps", action="store_true",
                   help="start an HPS from the ps.json (loads every tier: slow and memory-hungry for a large "
                        "table) and answer as a server does, with updates applied since the files were written; "
                        "default: read only the keys' rows from the sparse files (no HPS, no tiers)")
    p.set_defaults(run=run, flags={"model_name": "--model", "table_id": "--table"})


def run(args: argparse.Namespace) -> int:
    """Look the keys up and print them (text or `--json`)."""
    from hps.config import load_config

    config = load_config(args.config)
    model = pick_model(config, args.model, args.config)
    table = pick_table(model, args.table, args.config)
    keys = np.array(args.keys, dtype=np.int64)
    if args.through_hps:
        vectors, default = _through_hps(args.config, model.name, table, keys)
        source = "hps"
    else:
        vectors, found = read_rows(SparseModel(table.sparse_file, table.dim), keys)
        default = ~found
        vectors[default] = table.default_value
        source = "sparse files"
    out = Output()
    if args.json:
        doc = {"model": model.name, "table": table.name, "table_id": table.table_id, "dim": table.dim,
               "source": source,
               "keys": [{"key": int(k), "default": bool(d), "vector": [float(x) for x in v]}
                        for k, d, v in zip(keys, default, vectors)]}
        out.stream.write(json.dumps(doc) + "\n")
        return 0
    for key, is_default, vector in zip(keys, default, vectors):
        out.stream.write(f"{key}\t{'default' if is_default else 'found'}\t{' '.join(map(str, vector))}\n")
    return 0


def find_rows(sparse: SparseModel, keys: np.ndarray) -> np.ndarray:
    """Row numbers in `sparse` of `keys: (n,) int64`, `(n,) int64`, -1 for keys not in the table.

    Scans the memory-mapped `key` file `SCAN_CHUNK_ROWS` keys at a time against the sorted distinct
    keys asked (binary search), and stops once every key is found (keys are unique in a table)."""
    wanted = np.unique(keys)
    rows_of_wanted = np.full(wanted.shape[0], -1, dtype=np.int64)
    if wanted.shape[0] == 0:
        return np.full(keys.shape[0], -1, dtype=np.int64)
    file_keys = sparse.keys
    missing = wanted.shape[0]
    for start in range(0, sparse.num_rows, SCAN_CHUNK_ROWS):
        chunk = np.asarray(file_keys[start:start + SCAN_CHUNK_ROWS], dtype=np.int64)
        pos = np.searchsorted(wanted, chunk)
        np.minimum(pos, wanted.shape[0] - 1, out=pos)
        hit = np.flatnonzero(wanted[pos] == chunk)
        if hit.shape[0]:
            rows_of_wanted[pos[hit]] = start + hit
            missing = int(np.count_nonzero(rows_of_wanted < 0))
            if missing == 0:
                break
    return rows_of_wanted[np.searchsorted(wanted, keys)]


def read_rows(sparse: SparseModel, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(vectors: (n, dim) float32, found: (n,) bool)` for `keys: (n,) int64` from the sparse files;
    rows of keys not found are zero. A local table reads only the keys' rows of `emb_vector`; a
    remote one (s3://, ...) is streamed chunk by chunk (bounded memory, the whole table transferred)."""
    if sparse.is_remote:
        wanted = np.unique(keys)
        wanted_vectors = np.zeros((wanted.shape[0], sparse.dim), dtype=np.float32)
        got = np.zeros(wanted.shape[0], dtype=np.bool_)
        for chunk_keys, chunk_vectors in sparse.iter_chunks():
            pos = np.searchsorted(wanted, chunk_keys)
            np.minimum(pos, wanted.shape[0] - 1, out=pos)
            hit = np.flatnonzero(wanted[pos] == chunk_keys)
            wanted_vectors[pos[hit]] = chunk_vectors[hit]
            got[pos[hit]] = True
            if got.all():
                break
        at = np.searchsorted(wanted, keys)
        return wanted_vectors[at], got[at]
    vectors = np.zeros((keys.shape[0], sparse.dim), dtype=np.float32)
    rows = find_rows(sparse, keys)
    found = rows >= 0
    if found.any():
        vectors[found] = np.asarray(sparse.vectors[rows[found]], dtype=np.float32)
    return vectors, found


def _through_hps(config_path: str, model_name: str, table: TableConfig,
                 keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(vectors: (n, dim) float32, default: (n,) bool)` as an `HPS` started from the ps.json answers.

    Which keys got the default value comes from the table's per-level counters, so each distinct key
    is looked up on its own, once (a key answered with the default value is cached with it: asking
    again would count a cache hit). A command-line lookup of a few keys; not a serving path."""
    import hps

    distinct, inverse = np.unique(keys, return_inverse=True)
    vectors = np.zeros((distinct.shape[0], table.dim), dtype=np.float32)
    default = np.zeros(distinct.shape[0], dtype=np.bool_)
    with hps.HPS(config_path, show_progress=False) as ps:
        def defaults_so_far() -> int:
            return ps.stats()["models"][model_name][table.name]["hits"]["default"]

        for i in range(distinct.shape[0]):
            before = defaults_so_far()
            vectors[i] = np.asarray(ps.lookup(distinct[i:i + 1], model_name, table.table_id))[0]
            default[i] = defaults_so_far() > before
    return vectors[inverse], default[inverse]
