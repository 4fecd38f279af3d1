"""Subprocess helpers for the update tests (run as `python -m tests.update.consumer_proc <mode> ...`).

- `log <brokers> <group> <tag> <log_file>`: a KafkaUpdateSource whose tier is an append-only file:
  each applied batch is written as [int64 n, int64 dim, keys, vectors] and flushed before apply()
  returns (so before the commit). The parent SIGKILLs it mid-stream and replays the file.
- `hps <ps_json> <model> <keys.npy> <vectors.npy> <timeout_s>`: an HPS with an update source; prints
  "ready <JSON list of its consumer group ids>" once loaded, then polls HPS.lookup until it returns
  the expected vectors; prints the seconds it took and exits 0, or exits 1 on timeout.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def run_log(brokers: str, group: str, tag: str, path: str) -> None:
    from hps.config import KafkaConfig
    from hps.update.source import KafkaUpdateSource
    from tests.kafka_fixture import TEST_CONSUMER_CONFIG

    out = open(path, "ab")

    def apply(tag_: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        out.write(np.array([len(keys), vectors.shape[1]], np.int64).tobytes() + keys.tobytes() + vectors.tobytes())
        out.flush()
        time.sleep(0.05)  # a slow tier, so the parent can kill us mid-stream

    config = KafkaConfig(brokers=brokers, poll_timeout_ms=50, max_batch_size=200, max_commit_interval=4)
    source = KafkaUpdateSource(config, group_id=group, update_filters=(".+",), tags=[tag], apply=apply,
                               consumer_config=TEST_CONSUMER_CONFIG).start()
    print("ready", flush=True)
    while True:
        time.sleep(1)
        if not source.running:
            sys.exit(2)


def run_hps(ps_json: str, model: str, keys_npy: str, vectors_npy: str, timeout_s: str) -> None:
    import hps

    keys, expected = np.load(keys_npy), np.load(vectors_npy)
    with hps.HPS(ps_json, show_progress=False) as ps:
        before = ps.lookup(keys, model, 0)  # fills the cache with the old rows
        assert not np.array_equal(before, expected)
        groups = sorted(s.group_id for s in ps.update_sources)
        print("ready " + json.dumps(groups), flush=True)
        start = time.monotonic()
        while time.monotonic() - start < float(timeout_s):
            if np.array_equal(ps.lookup(keys, model, 0), expected):
                print(f"{time.monotonic() - start:.3f}", flush=True)
                return
            time.sleep(0.02)
    sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1] == "log":
        run_log(*sys.argv[2:6])
    elif sys.argv[1] == "hps":
        run_hps(*sys.argv[2:7])
    else:
        sys.exit(f"unknown mode {sys.argv[1]!r}")
