"""Online updates through Kafka (tansu broker on 127.0.0.1): freshness and apply rate.

    .venv/bin/python benchmarks/bench_updates.py [--updates 200] [--batch 64] [--backlog 1000000] [--dim 16]

Writes report "distributed-cpu":

- section "update_freshness": seconds from `KafkaPublisher.publish` (+ flush) of one small batch
  until `HPS.lookup` returns the new rows (cache included), p50 / p99 over `--updates` updates,
  beside the raw Kafka round trip (a bare confluent-kafka producer → consumer, no hps);
- section "update_apply": keys/s applied from a backlog of `--backlog` keys into the hash_map
  volatile + rocks_db persistent tiers (two update sources, as HPS runs them), beside the raw
  consumer + HCTR decode rate (confluent-kafka consume + `decode_message`, nothing applied).

When `hps.HPS` cannot serve (not importable, or its apply path fails), the sources apply into the
tiers directly (`HashMapBackend` / `RocksDBBackend`) and the notes say so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import hps.storage  # noqa: E402,F401
from harness import VM_NOTE, percentile, write_results  # noqa: E402
from hps.config import HashMapConfig, KafkaConfig, RocksDBConfig  # noqa: E402
from hps.update.message import decode_message  # noqa: E402
from hps.update.publisher import KafkaPublisher  # noqa: E402
from hps.update.source import KafkaUpdateSource  # noqa: E402
from tests.kafka_fixture import TEST_CONSUMER_CONFIG, kafka_broker  # noqa: E402

MODEL, TABLE = "bench", "emb"
TAG = f"hps_et.{MODEL}.{TABLE}"
LOAD_NOTE = f"Broker = tansu (memory storage) on the same machine. {VM_NOTE}"


def ps_config(tmp: Path, brokers: str, dim: int, poll_timeout_ms: int) -> dict:
    from hps.model_format import write_sparse_model

    keys = np.arange(10000, dtype=np.int64)
    write_sparse_model(tmp / "emb.model", keys, np.zeros((len(keys), dim), np.float32))
    return {
        "supportlonglong": True,
        "volatile_db": {"type": "hash_map", "num_partitions": 4, "update_filters": [".+"]},
        "persistent_db": {"type": "rocks_db", "path": str(tmp / "rocksdb"), "update_filters": [".+"]},
        "update_source": {"type": "kafka_message_queue", "brokers": brokers, "poll_timeout_ms": poll_timeout_ms},
        "models": [{
            "model": MODEL, "sparse_files": [str(tmp / "emb.model")], "embedding_table_names": [TABLE],
            "embedding_vecsize_per_table": [dim], "maxnum_catfeature_query_per_table_per_sample": [1],
            "default_value_for_each_table": [0.0], "deployed_device_list": [0], "max_batch_size": 65536,
            "gpucacheper": 1.0, "gpucache": True, "hit_rate_threshold": 1.0,
        }],
    }


class Target:
    """What the updates go into: a real HPS, or (fallback) the two tiers directly."""

    def __init__(self, tmp: Path, brokers: str, dim: int, poll_timeout_ms: int) -> None:
        self.kind = "HPS"
        self.sources: list[KafkaUpdateSource] = []
        self.hps = None
        os.environ["HPS_KAFKA_CONSUMER_CONFIG"] = json.dumps(TEST_CONSUMER_CONFIG)
        try:
            import hps as hps_pkg

            self.hps = hps_pkg.HPS(ps_config(tmp, brokers, dim, poll_timeout_ms), show_progress=False)
            probe_keys = np.array([1, 2], np.int64)
            self.hps.lookup(probe_keys, MODEL, 0)
            self.hps.apply_update(TAG, probe_keys, np.zeros((2, dim), np.float32), tier="volatile")
            self.sources = list(self.hps._update_sources)
            self.lookup = lambda keys: self.hps.lookup(keys, MODEL, 0)
        except Exception as exc:  # fallback: measure against the tiers directly
            print(f"HPS not usable ({type(exc).__name__}: {exc}); measuring against the tiers directly")
            if self.hps is not None:
                self.hps.close()
            self.hps = None
            self.kind = f"tiers directly (HPS unusable: {type(exc).__name__})"
            from hps.storage.hash_map import HashMapBackend
            from hps.storage.rocksdb import RocksDBBackend

            self.volatile = HashMapBackend(HashMapConfig(num_partitions=4))
            self.persistent = RocksDBBackend(RocksDBConfig(path=str(tmp / "rocksdb-direct")))
            for b in (self.volatile, self.persistent):
                b.create_table(TAG, dim)
            config = KafkaConfig(brokers=brokers, poll_timeout_ms=poll_timeout_ms)
            for tier, backend in (("volatile", self.volatile), ("persistent", self.persistent)):
                self.sources.append(KafkaUpdateSource(
                    config, group_id=f"hps.{tier}.bench", update_filters=(".+",), tags=[TAG],
                    apply=lambda tag, k, v, b=backend: b.insert_or_assign(tag, k, v),
                    consumer_config=TEST_CONSUMER_CONFIG, name=tier).start())
            self.lookup = lambda keys: self.volatile.find(TAG, keys)[0]

    def close(self) -> None:
        if self.hps is not None:
            self.hps.close()
        else:
            for s in self.sources:
                s.close()
            self.volatile.close()
            self.persistent.close()


def raw_round_trip(brokers: str, n: int, payload: bytes) -> list[float]:
    """Baseline: a bare producer → assigned consumer round trip of one message, `n` times."""
    import confluent_kafka as ck

    topic = "raw_round_trip"
    with KafkaPublisher(brokers, num_key_groups=1) as pub:
        pub.partition_count(topic)
    producer = ck.Producer({"bootstrap.servers": brokers, "linger.ms": 0})
    consumer = ck.Consumer({"bootstrap.servers": brokers, "group.id": "raw", "fetch.wait.max.ms": 10,
                            "enable.auto.commit": False})
    consumer.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])  # fresh topic
    out = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        producer.produce(topic, value=payload, partition=0)
        producer.flush(10)
        while True:
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                break
        if i >= 3:
            out.append(time.perf_counter() - t0)
    consumer.close()
    return out


def freshness(target: Target, brokers: str, updates: int, batch: int, dim: int) -> list[float]:
    rng = np.random.default_rng(0)
    out = []
    with KafkaPublisher(brokers, linger_ms=0) as pub:
        for i in range(updates + 3):
            keys = rng.choice(10000, size=batch, replace=False).astype(np.int64)
            target.lookup(keys)  # the rows are cached before the update
            vectors = np.full((batch, dim), float(i + 1), np.float32)
            t0 = time.perf_counter()
            pub.publish(MODEL, TABLE, keys, vectors)
            pub.flush(10)
            deadline = t0 + 10
            while not np.array_equal(target.lookup(keys), vectors):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"update {i} not visible after 10 s")
                time.sleep(0.0005)
            if i >= 3:
                out.append(time.perf_counter() - t0)
    return out


def raw_decode_rate(brokers: str, total_pairs: int) -> tuple[float, float]:
    """Baseline: consume the backlog from the beginning of all 8 partitions (assigned: no group join)
    and decode every message; nothing is applied. Timed from the first message. Returns (seconds, pairs)."""
    import confluent_kafka as ck

    consumer = ck.Consumer({"bootstrap.servers": brokers, "group.id": "raw-decode", "enable.auto.commit": False})
    pairs = 0
    t0 = None
    consumer.assign([ck.TopicPartition(TAG, p, ck.OFFSET_BEGINNING) for p in range(8)])
    while pairs < total_pairs:
        for msg in consumer.consume(num_messages=256, timeout=0.05):
            if not msg.error():
                t0 = t0 or time.perf_counter()
                keys, _ = decode_message(msg.value())
                pairs += len(keys)
    elapsed = time.perf_counter() - t0
    consumer.close()
    return elapsed, pairs


def source_rate(brokers: str, name: str, apply, backlog: int, poll_timeout_ms: int) -> float:
    """Seconds for one standalone KafkaUpdateSource (fresh group) to apply the whole backlog with
    `apply`, from its first applied batch."""
    config = KafkaConfig(brokers=brokers, poll_timeout_ms=poll_timeout_ms)
    first: list[float] = []

    def timed(tag: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        if not first:
            first.append(time.perf_counter())
        apply(tag, keys, vectors)

    source = KafkaUpdateSource(config, group_id=f"bench-{name}", update_filters=(".+",), tags=[TAG], apply=timed,
                               consumer_config=TEST_CONSUMER_CONFIG, name=name).start()
    try:
        deadline = time.perf_counter() + 900
        while source.stats["pairs_applied"] < backlog:
            time.sleep(0.005)
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{name}: backlog not applied: {source.stats}")
        return time.perf_counter() - first[0]
    finally:
        source.close()


def publish_backlog(brokers: str, backlog: int, dim: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Publish `backlog` fresh keys (before any consumer exists). Returns keys, vectors, seconds."""
    keys = np.arange(10**7, 10**7 + backlog, dtype=np.int64)
    vectors = np.random.default_rng(1).standard_normal((backlog, dim)).astype(np.float32)
    t0 = time.perf_counter()
    with KafkaPublisher(brokers) as pub:
        for s in range(0, backlog, 65536):
            pub.publish(MODEL, TABLE, keys[s:s + 65536], vectors[s:s + 65536])
    return keys, vectors, time.perf_counter() - t0


def apply_seconds(target: Target, keys: np.ndarray, vectors: np.ndarray) -> float:
    """Seconds from the sources' first applied batch until both tiers hold the whole backlog."""
    backlog = len(keys)
    deadline = time.perf_counter() + 900
    while not any(s.stats["pairs_applied"] for s in target.sources):
        time.sleep(0.002)
        if time.perf_counter() > deadline:
            raise RuntimeError("nothing applied")
    t0 = time.perf_counter()
    while any(s.stats["pairs_applied"] < backlog for s in target.sources):
        time.sleep(0.005)
        if time.perf_counter() > deadline:
            raise RuntimeError(f"backlog not applied: {[s.stats for s in target.sources]}")
    elapsed = time.perf_counter() - t0
    step = max(1, backlog // 1000)
    assert np.array_equal(target.lookup(keys[::step]), vectors[::step])
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--poll-timeout-ms", type=int, default=10)
    args = ap.parse_args()

    with kafka_broker() as brokers, tempfile.TemporaryDirectory(prefix="bench-updates-") as tmp:
        keys, vectors, publish_s = publish_backlog(brokers, args.backlog, args.dim)
        target = Target(Path(tmp), brokers, args.dim, args.poll_timeout_ms)
        try:
            apply_s = apply_seconds(target, keys, vectors)
            raw_s, raw_pairs = raw_decode_rate(brokers, args.backlog)
            from hps.storage.hash_map import HashMapBackend
            from hps.storage.rocksdb import RocksDBBackend

            alone = {}
            hash_map = HashMapBackend(HashMapConfig(num_partitions=4))
            rocks = RocksDBBackend(RocksDBConfig(path=str(Path(tmp) / "rocksdb-alone")))
            try:
                for backend in (hash_map, rocks):
                    backend.create_table(TAG, args.dim)
                for what, name, apply in (("no-op apply", "noop", lambda t, k, v: None),
                                          ("hash_map only", "hash", hash_map.insert_or_assign),
                                          ("rocks_db only", "rocks", rocks.insert_or_assign)):
                    alone[what] = source_rate(brokers, name, apply, args.backlog, args.poll_timeout_ms)
            finally:
                hash_map.close()
                rocks.close()
            rows = [
                {"path": "raw consume + HCTR decode (confluent-kafka + decode_message, baseline)",
                 "keys": raw_pairs, "seconds": raw_s, "keys_per_s": raw_pairs / raw_s},
                *({"path": f"one KafkaUpdateSource, {what} (alone, after the HPS run)", "keys": args.backlog,
                   "seconds": sec, "keys_per_s": args.backlog / sec} for what, sec in alone.items()),
                {"path": f"hps: 2 update sources -> hash_map + rocks_db ({target.kind})",
                 "keys": args.backlog, "seconds": apply_s, "keys_per_s": args.backlog / apply_s},
                {"path": "publisher (KafkaPublisher.publish in 64 Ki-key calls + flush)",
                 "keys": args.backlog, "seconds": publish_s, "keys_per_s": args.backlog / publish_s},
            ]
            write_results("distributed-cpu", "update_apply", rows,
                          f"{LOAD_NOTE} Backlog of {args.backlog:,} new keys published before the HPS started, "
                          f"dim {args.dim} float32, 256 KiB messages, 8 key groups / partitions, poll_timeout_ms "
                          f"{args.poll_timeout_ms}, other KafkaConfig defaults (max_batch_size 8192, "
                          f"max_commit_interval 32). The 'alone' rows replay the same backlog with fresh groups "
                          f"into fresh tiers, to show where the time goes. Apply time runs from the first "
                          f"applied batch until both tiers' sources (consuming concurrently, each committing "
                          f"synchronously after each batch) applied every key. "
                          f"Command: .venv/bin/python benchmarks/bench_updates.py")

            for s in target.sources:
                s.wait_until_idle(30)
            payload = b"HCTR" + (4 * args.dim).to_bytes(4, "little") + bytes(args.batch * (8 + 4 * args.dim))
            raw = raw_round_trip(brokers, args.updates, payload)
            fresh = freshness(target, brokers, args.updates, args.batch, args.dim)
            rows = [
                {"path": "raw Kafka round trip (confluent-kafka produce+flush -> poll, baseline)",
                 "updates": len(raw), "keys/update": args.batch,
                 "p50_ms": percentile(raw, 50) * 1e3, "p99_ms": percentile(raw, 99) * 1e3},
                {"path": f"hps: publish+flush -> visible in lookup ({target.kind})",
                 "updates": len(fresh), "keys/update": args.batch,
                 "p50_ms": percentile(fresh, 50) * 1e3, "p99_ms": percentile(fresh, 99) * 1e3},
            ]
            rows.append({"path": "ratio hps / raw (p50)", "updates": "", "keys/update": "",
                         "p50_ms": rows[1]["p50_ms"] / rows[0]["p50_ms"], "p99_ms": ""})
            write_results("distributed-cpu", "update_freshness", rows,
                          f"{LOAD_NOTE} dim {args.dim} float32, poll_timeout_ms {args.poll_timeout_ms}, "
                          f"hash_map (4 partitions) + rocks_db tiers, CPU embedding cache holding the keys; "
                          f"target p50 <= 50 ms. Command: .venv/bin/python benchmarks/bench_updates.py")
        finally:
            target.close()


if __name__ == "__main__":
    main()
