"""RedisClusterBackend against a real local 3-master Redis Cluster (no mocks)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hps.config.schema import RedisClusterConfig
from hps.errors import BackendError, HpsError, PartialBackendError
from hps.storage.partition import partition_of
from tests.redis_cluster_fixture import redis_cluster, redis_cluster_module, redis_server_available  # noqa: F401
from tests.storage.backend_contract import BackendContract, _rows

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not redis_server_available(),
                       reason="redis-server is not on PATH (apt-get install redis-server redis-tools)"),
]

pytest.importorskip("redis", reason="redis-py is not installed (pip install 'hps[redis]')")
import hps.storage.redis_cluster as redis_cluster_mod  # noqa: E402
import hps.storage.redis_protocol as redis_protocol  # noqa: E402
import hps.storage.redis_topology as redis_topology  # noqa: E402

RedisClusterBackend = redis_cluster_mod.RedisClusterBackend
TAG = "hps_et.rtest.table0"


@pytest.fixture(scope="module")
def cluster(redis_cluster_module):
    return redis_cluster_module


def _config(cluster, **kw) -> RedisClusterConfig:
    kw.setdefault("num_partitions", 5)
    return RedisClusterConfig(address=cluster.address, **kw)


@pytest.fixture
def make_backend(cluster):
    made = []

    def make(**kw):
        timeout_ms = kw.pop("timeout_ms", 1000)
        b = RedisClusterBackend(_config(cluster, **kw), timeout_ms=timeout_ms)
        made.append(b)
        return b

    cluster.flushall()
    yield make
    for b in made:
        b.close()


def _raw(cluster):
    from redis.cluster import ClusterNode, RedisCluster

    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports])


class TestRedisClusterContract(BackendContract):
    @pytest.fixture
    def backend(self, make_backend):
        return make_backend(max_batch_size=3000)


def test_hash_names_are_hugectrs():
    assert redis_cluster_mod.hash_key("hps_et.m.t", 3, "v") == b"hps_et{hps_et.m.t/p3}v"
    assert redis_cluster_mod.hash_key("hps_et.m.t", 12, "t") == b"hps_et{hps_et.m.t/p12}t"
    assert redis_cluster_mod.tag_of_hash_key(b"hps_et{hps_et.m.a/b/p12}v") == "hps_et.m.a/b"
    assert redis_cluster_mod.tag_of_hash_key(b"hps_et{hps_et.m.t/p3}t") is None
    assert redis_cluster_mod.tag_of_hash_key("other") is None


def test_layout_raw_hget_and_hugectr_filled_data(cluster, make_backend):
    b = make_backend(num_partitions=7)
    b.create_table(TAG, 4)
    keys = np.array([0, 1, -1, 2**40 + 3, 123456789], dtype=np.int64)
    b.insert_or_assign(TAG, keys, _rows(keys, dim=4))
    raw = _raw(cluster)
    try:
        parts = partition_of(keys, 7)
        for k, p, row in zip(keys, parts, _rows(keys, dim=4)):
            hv = f"hps_et{{{TAG}/p{p}}}v"
            assert raw.hget(hv, k.astype("<i8").tobytes()) == row.astype("<f4").tobytes()
            assert raw.keyslot(hv) == raw.keyslot(f"hps_et{{{TAG}/p{p}}}t")
        # Rows written the way HugeCTR writes them are read as they are.
        other = np.array([77, -5], dtype=np.int64)
        for k, p, row in zip(other, partition_of(other, 7), _rows(other, dim=4, salt=9)):
            raw.hset(f"hps_et{{{TAG}/p{p}}}v", k.astype("<i8").tobytes(), row.tobytes())
        vectors, found = b.find(TAG, other)
        assert found.all()
        np.testing.assert_array_equal(vectors, _rows(other, dim=4, salt=9))
        # A value of the wrong size is an error naming the table.
        raw.hset(f"hps_et{{{TAG}/p{partition_of(other[:1], 7)[0]}}}v", other[0].astype("<i8").tobytes(), b"xyz")
        with pytest.raises(BackendError, match=TAG):
            b.find(TAG, other)
    finally:
        raw.close()


def test_another_process_sees_the_same_rows(cluster, make_backend):
    a, b = make_backend(), make_backend()
    assert a.is_shared and a.name == "redis_cluster"
    a.create_table(TAG, 8)
    keys = np.arange(1000, dtype=np.int64)
    a.insert_or_assign(TAG, keys, _rows(keys))
    b.create_table(TAG, 8)
    vectors, found = b.find(TAG, keys)
    assert found.all() and b.size(TAG) == 1000 and TAG in b.tables()
    np.testing.assert_array_equal(vectors, _rows(keys))


def test_overflow_random(make_backend):
    b = make_backend(num_partitions=2, overflow_margin=100, overflow_resolution_target=0.5, max_batch_size=16)
    b.create_table(TAG, 8)
    keys = np.arange(1000, dtype=np.int64)
    parts = partition_of(keys, 2)
    b.insert_or_assign(TAG, keys[parts == 0][:99], _rows(keys[parts == 0][:99]))
    assert b.size(TAG) == 99  # below the margin: nothing evicted
    b.insert_or_assign(TAG, keys[parts == 0][99:150], _rows(keys[parts == 0][99:150]))
    assert b.size(TAG) == 50  # 150 >= 100 → shrunk to round(100 * 0.5)
    b.insert_or_assign(TAG, keys[parts == 1][:30], _rows(keys[parts == 1][:30]))
    assert b.size(TAG) == 80  # the other partition is independent
    got = np.concatenate([k for k, _ in b.items(TAG)])
    assert np.isin(got, keys).all() and len(np.unique(got)) == 80


def test_overflow_least_used_keeps_hot_rows(cluster, make_backend):
    b = make_backend(num_partitions=1, overflow_margin=10, overflow_resolution_target=0.5,
                     overflow_policy="evict_least_used")
    b.create_table(TAG, 8)
    keys = np.arange(100, 109, dtype=np.int64)
    b.insert_or_assign(TAG, keys, _rows(keys))
    for _ in range(2):
        assert b.find(TAG, keys[:4])[1].all()
    raw = _raw(cluster)
    try:  # HugeCTR's format: HINCRBY counts (1 on insert, +1 per hit)
        assert raw.hget(f"hps_et{{{TAG}/p0}}t", keys[0].astype("<i8").tobytes()) == b"3"
        assert raw.hget(f"hps_et{{{TAG}/p0}}t", keys[5].astype("<i8").tobytes()) == b"1"
    finally:
        raw.close()
    b.insert_or_assign(TAG, np.array([200], dtype=np.int64), _rows(np.array([200])))
    assert b.size(TAG) == 5
    assert b.find(TAG, keys[:4])[1].all()
    raw = _raw(cluster)
    try:  # metadata that is not a count (older HugeCTR wrote raw time_t) restarts at 1
        field = keys[0].astype("<i8").tobytes()
        raw.hset(f"hps_et{{{TAG}/p0}}t", field, np.int64(1700000000).astype("<i8").tobytes())
        b.insert_or_assign(TAG, keys[:1], _rows(keys[:1]))
        assert raw.hget(f"hps_et{{{TAG}/p0}}t", field) == b"1"
    finally:
        raw.close()


def test_overflow_oldest_evicts_by_hugectr_timestamps(cluster, make_backend):
    b = make_backend(num_partitions=1, overflow_margin=10, overflow_resolution_target=0.5,
                     overflow_policy="evict_oldest")
    b.create_table(TAG, 8)
    keys = np.arange(9, dtype=np.int64)
    b.insert_or_assign(TAG, keys, _rows(keys))
    raw = _raw(cluster)
    try:
        ht = f"hps_et{{{TAG}/p0}}t"
        stamp = int.from_bytes(raw.hget(ht, keys[6].astype("<i8").tobytes()), "little")
        assert abs(stamp - time.time()) < 60  # raw 8-byte little-endian time_t
        for k in keys[:6]:  # make 0..5 old, as a HugeCTR writer long ago would have
            raw.hset(ht, k.astype("<i8").tobytes(), np.int64(1000 + k).astype("<i8").tobytes())
        assert b.find(TAG, keys[:1])[1].all()  # a hit refreshes key 0 to now
        assert abs(int.from_bytes(raw.hget(ht, keys[0].astype("<i8").tobytes()), "little") - time.time()) < 60
    finally:
        raw.close()
    b.insert_or_assign(TAG, np.array([50], dtype=np.int64), _rows(np.array([50])))
    left = np.sort(np.concatenate([k for k, _ in b.items(TAG)]))
    assert left.tolist() == [0, 6, 7, 8, 50]


def test_connection_options_reach_redis_py(cluster, make_backend, tmp_path):
    b = make_backend(num_node_connections=3, timeout_ms=250)
    for node in b._topology.primaries("test"):
        pool = node.redis_connection.connection_pool
        assert pool.max_connections == 3
        assert pool.connection_kwargs["socket_timeout"] == pytest.approx(0.25)
        assert pool.connection_kwargs["socket_connect_timeout"] == pytest.approx(0.25)
    ca_dir = tmp_path / "cas"
    ca_dir.mkdir()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    cfg = RedisClusterConfig(address="10.0.0.1:7000", user_name="svc", password="pw", enable_tls=True,
                             tls_ca_certificate=str(ca_dir), tls_client_certificate=str(cert),
                             tls_client_key=str(key), tls_server_name_identification="redis.example")
    kw = redis_topology.connection_kwargs(cfg, timeout_ms=500)
    assert kw["ssl"] is True and kw["ssl_ca_path"] == str(ca_dir) and "ssl_ca_certs" not in kw
    assert kw["ssl_certfile"] == str(cert) and kw["ssl_keyfile"] == str(key)
    assert kw["ssl_check_hostname"] is False and kw["ssl_cert_reqs"] == "required"
    assert kw["username"] == "svc" and kw["password"] == "pw" and kw["socket_timeout"] == 0.5
    kw = redis_topology.connection_kwargs(RedisClusterConfig(enable_tls=True, tls_ca_certificate="ca.crt"))
    assert kw["ssl_ca_certs"] == "ca.crt" and "ssl_certfile" not in kw and "password" not in kw
    assert "ssl" not in redis_topology.connection_kwargs(RedisClusterConfig())


def _until_ok(fn, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except BackendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _owners(c, keys: np.ndarray, num_partitions: int) -> np.ndarray:
    """Index of the master holding each key (partition → hash slot → master given that slot)."""
    from redis.crc import key_slot

    slots = np.array([key_slot(redis_cluster_mod.hash_key(TAG, p, "v")) for p in range(num_partitions)])
    return c.master_of_slot(slots[partition_of(keys, num_partitions)])


def _rows_on(c, masters: list[int], num_partitions: int) -> int:
    """Rows of TAG held by `masters`, counted with plain clients (HLEN of the hashes they serve)."""
    from redis.crc import key_slot

    total = 0
    for p in range(num_partitions):
        hv = redis_cluster_mod.hash_key(TAG, p, "v")
        i = c.master_of_slot(key_slot(hv))
        if i in masters:
            client = c.client(i)
            try:
                total += client.hlen(hv)
            finally:
                client.close()
    return total


def _check_partial(err, keys, owner, down: int) -> None:
    """A `PartialBackendError` whose masks say: master `down`'s keys unavailable, the rest found."""
    e = err.value
    assert isinstance(e, PartialBackendError)
    np.testing.assert_array_equal(e.unavailable, owner == down)
    np.testing.assert_array_equal(e.found, owner != down)
    np.testing.assert_array_equal(e.vectors[e.found], _rows(keys[e.found]))
    assert f"{int((owner == down).sum())} of {keys.size} keys" in str(e) and TAG in str(e)


def test_node_failure_is_local_to_its_keys_and_the_backend_recovers():
    with redis_cluster(3, node_timeout_ms=60_000) as c:
        b = RedisClusterBackend(RedisClusterConfig(address=c.address, num_partitions=6), timeout_ms=300,
                                retry_after_ms=500)
        try:
            b.create_table(TAG, 8)
            keys = np.arange(3000, dtype=np.int64)
            b.insert_or_assign(TAG, keys, _rows(keys))
            owner = _owners(c, keys, 6)
            fresh = np.arange(10_000, 10_300, dtype=np.int64)

            c.pause(0)  # hung node (the first seed): the socket timeout bounds the wait, once
            t0 = time.monotonic()
            with pytest.raises(BackendError) as err:
                b.find(TAG, keys)
            assert time.monotonic() - t0 < 3.0
            assert c.node_name(0) in str(err.value)
            _check_partial(err, keys, owner, 0)
            for _ in range(5):  # within retry_after_ms the hung node is not waited for, nor asked for the map
                t0 = time.monotonic()
                with pytest.raises(BackendError, match="not retried") as err:
                    b.find(TAG, keys)
                assert time.monotonic() - t0 < 0.25  # no wait on the hung socket (loose: a loaded CI machine)
                _check_partial(err, keys, owner, 0)
            live = keys[owner != 0]
            assert b.find(TAG, live)[1].all()  # keys of the other masters: no error at all
            before = _rows_on(c, [1, 2], 6)
            with pytest.raises(BackendError, match=c.node_name(0).replace(".", r"\.") + ".*nothing was sent"):
                b.insert_or_assign(TAG, fresh, _rows(fresh))  # a write needing the down node: nothing half-applied
            with pytest.raises(BackendError, match=c.node_name(0)):
                b.erase(TAG, keys[:300])
            assert _rows_on(c, [1, 2], 6) == before
            b.insert_or_assign(TAG, live[:10], _rows(live[:10], salt=3))  # writes to live masters only: fine
            c.resume(0)
            vectors, found = _until_ok(lambda: b.find(TAG, keys), 5)  # probed, then used again
            assert found.all()
            b.insert_or_assign(TAG, live[:10], _rows(live[:10]))

            c.kill(1)  # dead node: connection refused
            for attempt in range(3):
                before = _rows_on(c, [0, 2], 6)
                t0 = time.monotonic()
                with pytest.raises(BackendError) as err:
                    b.find(TAG, keys)
                assert time.monotonic() - t0 < 1.0
                _check_partial(err, keys, owner, 1)
                assert c.node_name(1) in str(err.value)
                with pytest.raises(BackendError, match=c.node_name(1).replace(".", r"\.") + ".*nothing was sent"):
                    b.insert_or_assign(TAG, fresh, _rows(fresh))
                assert _rows_on(c, [0, 2], 6) == before  # not one row written to the live masters
            c.restart(1)
            vectors, found = _until_ok(lambda: b.find(TAG, keys), 30)
            np.testing.assert_array_equal(found, owner != 1)  # node 1 came back empty (no persistence)
            np.testing.assert_array_equal(vectors[found], _rows(keys[found]))
            _until_ok(lambda: b.insert_or_assign(TAG, keys, _rows(keys)), 30)
            assert b.find(TAG, keys)[1].all()
        finally:
            b.close()


def test_hmget_reply_scanner_resumes_at_any_byte():
    """RESP2 and RESP3 nils, a wrong-size value and an error reply, fed one byte at a time."""
    stream = (b"*3\r\n$4\r\nAAAA\r\n_\r\n$-1\r\n"  # rows 0..2: hit, RESP3 nil, RESP2 nil
              b"-MOVED 5 127.0.0.1:7000\r\n"  # command 2 (rows 3..4) answered with an error
              b"*2\r\n$2\r\nxy\r\n$4\r\nBBBB\r\n")  # rows 5..6: wrong size, hit
    starts = np.array([0, 3, 5], np.int64)
    order = np.array([6, 5, 4, 3, 2, 1, 0], np.int64)
    out = np.zeros((7, 4), np.uint8)
    found = np.zeros(7, np.bool_)
    buf = np.frombuffer(stream, np.uint8).copy()
    state = np.array([0, 0, -1, 0, 0, 0], np.int64)
    errors, length = [], 0
    while True:
        status = redis_protocol.consume_hmget(buf, length, state, starts, order, 4, out, found)
        if status == 1:
            break
        if status == 2:
            errors.append(bytes(buf[state[0] + 1:state[5]]))
            state[0], state[1], state[2] = state[5] + 2, state[1] + 1, -1
            continue
        assert status == 0 and length < len(stream)
        length += 1
    assert length == len(stream) and errors == [b"MOVED 5 127.0.0.1:7000"]
    assert found.tolist() == [True, False, False, False, False, False, True]
    assert bytes(out[6]) == b"AAAA" and bytes(out[0]) == b"BBBB" and state[4] == 1  # one wrong size


def test_concurrent_callers_share_the_connections(make_backend):
    import threading

    b = make_backend(num_node_connections=2)
    b.create_table(TAG, 8)
    keys = np.arange(20_000, dtype=np.int64)
    b.insert_or_assign(TAG, keys, _rows(keys))
    failures = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(5):
            q = rng.choice(keys, 3000)
            vectors, found = b.find(TAG, q)
            if not found.all() or not np.array_equal(vectors, _rows(q)):
                failures.append(seed)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []


def test_32_bit_key_mode_uses_4_byte_fields(cluster, make_backend):
    b = RedisClusterBackend(_config(cluster, num_partitions=3), key_bytes=4)
    try:
        b.create_table(TAG, 4)
        keys = np.array([0, 7, 2**32 - 1], dtype=np.int64)
        b.insert_or_assign(TAG, keys, _rows(keys, dim=4))
        raw = _raw(cluster)
        try:
            for k, p in zip(keys, partition_of(keys, 3)):
                assert raw.hexists(f"hps_et{{{TAG}/p{p}}}v", k.astype("<u4").tobytes())
        finally:
            raw.close()
        vectors, found = b.find(TAG, keys)
        assert found.all()
        np.testing.assert_array_equal(vectors, _rows(keys, dim=4))
        assert sorted(np.concatenate([k for k, _ in b.items(TAG)]).tolist()) == keys.tolist()
        with pytest.raises(HpsError, match="uint32"):
            b.find(TAG, np.array([-1], dtype=np.int64))
    finally:
        b.close()


def test_unreachable_cluster_and_closed_backend(make_backend):
    from tests.redis_cluster_fixture import _fresh_ports

    t0 = time.monotonic()
    with pytest.raises(BackendError, match="127.0.0.1"):
        RedisClusterBackend(RedisClusterConfig(address=f"127.0.0.1:{_fresh_ports(1)[0]}"), timeout_ms=300)
    assert time.monotonic() - t0 < 3.0
    b = make_backend()
    b.create_table(TAG, 8)
    b.close()
    from hps.errors import ClosedError

    with pytest.raises(ClosedError):
        b.find(TAG, np.array([1], dtype=np.int64))


def test_tls_cluster_with_ca_client_certificate_and_sni():
    with redis_cluster(1, tls=True) as c:
        files = c.tls_files
        cfg = RedisClusterConfig(address=c.address, num_partitions=3, enable_tls=True,
                                 tls_ca_certificate=files["ca"], tls_client_certificate=files["cert"],
                                 tls_client_key=files["key"], tls_server_name_identification="redis.localhost")
        with RedisClusterBackend(cfg) as b:
            b.create_table(TAG, 8)
            keys = np.arange(500, dtype=np.int64)
            b.insert_or_assign(TAG, keys, _rows(keys))
            vectors, found = b.find(TAG, keys)
            assert found.all() and b.size(TAG) == 500
            np.testing.assert_array_equal(vectors, _rows(keys))
            for node in b._topology.primaries("test"):
                assert node.redis_connection.connection_pool.connection_class.server_name == "redis.localhost"
        wrong_ca = RedisClusterConfig(address=c.address, enable_tls=True, tls_ca_certificate=files["cert"])
        with pytest.raises(BackendError):  # the server certificate does not verify against this "CA"
            RedisClusterBackend(wrong_ca, timeout_ms=500)


def test_sni_connection_sends_the_configured_server_name(tmp_path):
    import socket
    import ssl
    import threading

    from tests.redis_cluster_fixture import make_test_certificates

    files = make_test_certificates(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files["cert"], files["key"])
    seen = []
    server_ctx.sni_callback = lambda sock, name, ctx: seen.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True):
            pass

    th = threading.Thread(target=serve)
    th.start()
    cls = redis_topology.sni_connection_class("redis.example")
    conn = cls(host="127.0.0.1", port=port, ssl_ca_certs=files["ca"], ssl_check_hostname=False,
               ssl_cert_reqs="none", socket_timeout=2)
    try:
        sock = conn._connect()
        sock.close()
    finally:
        th.join(5)
        listener.close()
    assert seen == ["redis.example"]
