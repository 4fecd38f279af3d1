"""RedisClusterBackend.find vs hand-written redis-py on the same HugeCTR layout, local 3-master cluster.

    .venv/bin/python benchmarks/bench_redis.py [--rows 200000] [--queries 100000] [--dim 16]

Writes report "distributed-cpu", section "redis_find". The client is pinned to core 0 and the
three redis-server processes to core 1 when the machine has at least 2 cores, so "keys/s" is
per client core; client CPU seconds per call are reported too. Needs redis-server on PATH.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import VM_NOTE, percentile, time_calls, write_results  # noqa: E402
from hps.config.schema import RedisClusterConfig  # noqa: E402
from hps.storage.partition import partition_of  # noqa: E402
from hps.storage.redis_cluster import RedisClusterBackend, hash_key  # noqa: E402
from tests.redis_cluster_fixture import redis_cluster  # noqa: E402

TAG = "hps_et.bench.table0"


class RawRedisPy:
    """The best plain redis-py code for the same hashes: group by partition and node with numpy,
    one `pipeline(transaction=False)` of HMGETs per node (fields from `view('V8').tolist()`),
    optionally the node pipelines in threads, then scatter back with numpy."""

    def __init__(self, address: str, num_partitions: int, dim: int, batch: int, threads: bool) -> None:
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, int(p)) for h, p in (a.split(":") for a in address.split(","))]
        self.rc = RedisCluster(startup_nodes=nodes, protocol=2)
        self.p, self.dim, self.batch = num_partitions, dim, batch
        self.hv = [hash_key(TAG, i, "v") for i in range(num_partitions)]
        self.node_of = [self.rc.nodes_manager.get_node_from_slot(self.rc.keyslot(h)) for h in self.hv]
        self.pool = ThreadPoolExecutor(3) if threads else None

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = keys.shape[0]
        parts = partition_of(keys, self.p)
        order = np.argsort(parts, kind="stable")
        ends = np.cumsum(np.bincount(parts, minlength=self.p)).tolist()
        fields = keys[order].view("V8").tolist()
        per_node: dict[str, tuple] = {}
        start = 0
        for p, end in enumerate(ends):
            node = self.node_of[p]
            entry = per_node.setdefault(node.name, (node, []))
            for a in range(start, end, self.batch):
                entry[1].append((a, self.hv[p], fields[a:min(a + self.batch, end)]))
            start = end

        def run(entry):
            node, cmds = entry
            pipe = node.redis_connection.pipeline(transaction=False)
            for _, h, f in cmds:
                pipe.execute_command("HMGET", h, *f)
            return list(zip((a for a, _, _ in cmds), pipe.execute()))

        if self.pool is not None:
            results = [r for rs in self.pool.map(run, per_node.values()) for r in rs]
        else:
            results = [r for e in per_node.values() for r in run(e)]
        results.sort(key=lambda x: x[0])
        vals = [v for _, r in results for v in r]
        hit = np.fromiter(map(bool, vals), dtype=np.bool_, count=n)
        hits = list(filter(None, vals))
        out = np.empty((n, self.dim), np.float32)
        found = np.zeros(n, np.bool_)
        rows = order[hit]
        out[rows] = np.frombuffer(b"".join(hits), np.float32).reshape(-1, self.dim)
        found[rows] = True
        return out, found

    def insert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """HSET field/value pairs per partition, one pipeline per node (values as row bytes)."""
        parts = partition_of(keys, self.p)
        order = np.argsort(parts, kind="stable")
        ends = np.cumsum(np.bincount(parts, minlength=self.p)).tolist()
        fields = keys[order].view("V8").tolist()
        values = np.ascontiguousarray(vectors[order]).view(f"V{4 * self.dim}").ravel().tolist()
        pipes: dict[str, object] = {}
        start = 0
        for p, end in enumerate(ends):
            node = self.node_of[p]
            pipe = pipes.setdefault(node.name, node.redis_connection.pipeline(transaction=False))
            for a in range(start, end, self.batch):
                b = min(a + self.batch, end)
                args = [x for pair in zip(fields[a:b], values[a:b]) for x in pair]
                pipe.execute_command("HSET", self.hv[p], *args)
            start = end
        for pipe in pipes.values():
            pipe.execute()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.rc.close()


def _pin(cluster) -> str:
    if (os.cpu_count() or 1) < 2:
        return "not pinned (1 core)"
    os.sched_setaffinity(0, {0})
    for i in range(len(cluster.ports)):
        os.sched_setaffinity(cluster.pid(i), {1})
    return "client on core 0, 3 redis-servers on core 1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--partitions", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    stored = rng.choice(2**62, size=args.rows, replace=False).astype(np.int64)
    vectors = rng.random((args.rows, args.dim), dtype=np.float32)
    absent = -rng.choice(2**62, size=args.queries, replace=False).astype(np.int64) - 1
    rows = []
    insert_rows = []
    with redis_cluster(3, node_timeout_ms=15_000) as cluster:  # no failovers on a loaded machine
        pinning = _pin(cluster)
        for num_partitions in args.partitions:
            cluster.flushall()
            cfg = RedisClusterConfig(address=cluster.address, num_partitions=num_partitions)
            ours = RedisClusterBackend(cfg, timeout_ms=10_000)  # no spurious timeouts on a loaded machine
            ours.create_table(TAG, args.dim)
            for a in range(0, args.rows, 50_000):
                ours.insert_or_assign(TAG, stored[a:a + 50_000], vectors[a:a + 50_000])
            raws = {"redis-py per-node pipelines": RawRedisPy(cluster.address, num_partitions, args.dim,
                                                              cfg.max_batch_size, threads=False),
                    "redis-py per-node pipelines, 3 threads": RawRedisPy(cluster.address, num_partitions,
                                                                         args.dim, cfg.max_batch_size,
                                                                         threads=True)}
            # Same rows read by backends whose overflow policy refreshes access metadata on hits.
            by_policy = {}
            if num_partitions == args.partitions[0]:
                for policy in ("evict_least_used", "evict_oldest"):
                    b = RedisClusterBackend(RedisClusterConfig(address=cluster.address, num_partitions=num_partitions,
                                                               overflow_policy=policy), timeout_ms=10_000)
                    b.create_table(TAG, args.dim)
                    by_policy[policy] = b
            for hit_rate in (1.0, 0.9):
                nh = int(args.queries * hit_rate)
                query = np.concatenate([rng.choice(stored, size=nh), absent[:args.queries - nh]])
                rng.shuffle(query)
                want_v, want_f = ours.find(TAG, query)
                assert want_f.sum() == nh
                measured = {"hps RedisClusterBackend.find": lambda: ours.find(TAG, query)}
                for policy, b in by_policy.items():
                    measured[f"hps find, {policy} (+ metadata refresh)"] = lambda b=b: b.find(TAG, query)
                for name, raw in raws.items():
                    got_v, got_f = raw.find(query)
                    assert np.array_equal(got_f, want_f) and np.array_equal(got_v[got_f], want_v[want_f])
                    measured[name] = lambda raw=raw: raw.find(query)
                # Interleaved rounds: every method sees the same (shared, noisy) machine.
                times: dict[str, list[float]] = {name: [] for name in measured}
                cpu: dict[str, float] = {name: 0.0 for name in measured}
                for name, fn in measured.items():
                    time_calls(fn, repeat=0, warmup=2)
                for _ in range(args.repeat):
                    for name, fn in measured.items():
                        cpu0 = time.process_time()
                        times[name] += time_calls(fn, repeat=1, warmup=0)
                        cpu[name] += (time.process_time() - cpu0) / args.repeat
                stats = {name: (times[name], cpu[name]) for name in measured}
                best_raw = max(args.queries / percentile(t, 50) for n, (t, _) in stats.items()
                               if n.startswith("redis-py"))
                for name, (times, cpu) in stats.items():
                    rate = args.queries / percentile(times, 50)
                    rows.append({"method": name, "partitions": num_partitions, "hit rate": hit_rate,
                                 "keys/s (p50)": rate, "p50 ms": 1e3 * percentile(times, 50),
                                 "best ms": 1e3 * min(times), "p90 ms": 1e3 * percentile(times, 90),
                                 "client CPU ms/call": 1e3 * cpu,
                                 "keys per client CPU s": args.queries / cpu, "vs best raw": rate / best_raw})
            batch = stored[:args.queries]
            fresh = rng.random((batch.shape[0], args.dim), dtype=np.float32)
            raw = raws["redis-py per-node pipelines"]
            ins = {"hps RedisClusterBackend.insert_or_assign": lambda: ours.insert_or_assign(TAG, batch, fresh),
                   "redis-py HSET per partition, per-node pipelines": lambda: raw.insert(batch, fresh)}
            raw.insert(batch, fresh)
            assert np.array_equal(ours.find(TAG, batch)[0], fresh)
            itimes: dict[str, list[float]] = {name: [] for name in ins}
            for _ in range(max(3, args.repeat // 3)):
                for name, fn in ins.items():
                    itimes[name] += time_calls(fn, repeat=1, warmup=0)
            best_raw_ins = args.queries / percentile(itimes["redis-py HSET per partition, per-node pipelines"], 50)
            for name, ts in itimes.items():
                rate = args.queries / percentile(ts, 50)
                insert_rows.append({"method": name, "partitions": num_partitions, "rows/s (p50)": rate,
                                    "p50 ms": 1e3 * percentile(ts, 50), "vs raw": rate / best_raw_ins})
            for raw in raws.values():
                raw.close()
            for b in by_policy.values():
                b.close()
            ours.close()
    notes = (f"RedisClusterBackend.find of {args.queries:,} random int64 keys, dim {args.dim} float32 "
             f"({args.rows:,} rows stored, max_batch_size 65536), local 3-master Redis Cluster "
             f"(Debian redis-server, loopback), redis-py + hiredis, {pinning}. 'vs best raw' divides by the "
             f"faster redis-py baseline of the same partitions and hit rate (p50 keys/s); the methods run in "
             f"interleaved rounds, {args.repeat} calls each. Default overflow_policy evict_random reads only; "
             f"the evict_least_used / evict_oldest rows also refresh the hits' access metadata (a server-side "
             f"HINCRBY loop / HSET of time_t) before returning. {VM_NOTE} "
             f"Command: .venv/bin/python benchmarks/bench_redis.py")
    write_results("distributed-cpu", "redis_find", rows, notes)
    write_results("distributed-cpu", "redis_insert", insert_rows,
                  f"insert_or_assign of {args.queries:,} existing keys with new dim-{args.dim} float32 rows "
                  f"(overflow_policy evict_random, no eviction), same cluster and run as redis_find, {pinning}. {VM_NOTE}")


if __name__ == "__main__":
    main()
