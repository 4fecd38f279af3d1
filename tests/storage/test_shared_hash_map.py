"""SharedHashMapBackend (`multi_process_hash_map`): the backend contract, and what only a table
shared between processes has to get right: exact answers in other processes, no torn rows while
another process writes, a secondary started before its owner, the owner exiting, auto-remove,
growth by generation and the size refusal. Segments get unique names and are removed afterwards.

Processes are started with multiprocessing's spawn context (a fresh interpreter, as a Triton
python-backend instance is), so each test pays an interpreter start; the compiled kernels come
from numba's cache."""

from __future__ import annotations

import glob
import multiprocessing as mp
import os
import signal
import time
import uuid

import numpy as np
import pytest

from hps.config.schema import HashMapConfig
from hps.errors import BackendError, ClosedError
from hps.storage import make_backend
from hps.storage.shared_hash_map import SharedHashMapBackend
from tests.storage.backend_contract import BackendContract, _rows

TAG = "hps_et.shm.t0"
DIM = 8


def _config(name: str, **kwargs) -> HashMapConfig:
    return HashMapConfig(type="multi_process_hash_map", shared_memory_name=name, **kwargs)


@pytest.fixture
def shm_name():
    """A unique shared_memory_name; every /dev/shm file of it is removed afterwards."""
    name = f"hps_test_{uuid.uuid4().hex[:12]}"
    yield name
    for path in glob.glob(f"/dev/shm/{name}.*"):
        os.unlink(path)


def _files(name: str) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(f"/dev/shm/{name}.*"))


class TestSharedHashMapContract(BackendContract):
    @pytest.fixture
    def backend(self, shm_name):
        b = SharedHashMapBackend(_config(shm_name, num_partitions=4))
        yield b
        b.close()


# -- child processes (module-level: spawn pickles them by name) ---------------------------------


def _reader_proc(name: str, dim: int, keys: np.ndarray, queue, timeout_s: float = 30.0) -> None:
    """Attach as a secondary, find `keys`, send back (vectors, found) or the error text."""
    try:
        b = SharedHashMapBackend(_config(name, initialize_after_startup=False), attach_timeout_s=timeout_s)
        b.create_table(TAG, dim)
        queue.put(b.find(TAG, keys))
        b.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def _owner_proc(name: str, dim: int, keys: np.ndarray, ready, release, auto_remove: bool = True) -> None:
    """Create and load the table, signal `ready`, wait for `release`, then exit (closing or not)."""
    b = SharedHashMapBackend(_config(name, shared_memory_auto_remove=auto_remove))
    b.create_table(TAG, dim)
    b.reserve(TAG, keys.shape[0])
    b.insert_or_assign(TAG, keys, _rows(keys, dim))
    b.mark_loaded(TAG)
    ready.set()
    release.wait(30)
    b.close()


def _torn_row_reader(name: str, keys: np.ndarray, seconds: float, queue) -> None:
    """Find `keys` again and again while another process rewrites them: every row must be one
    whole version (all elements equal), never a mix. Sends (finds, torn rows, versions seen)."""
    b = SharedHashMapBackend(_config(name, initialize_after_startup=False), attach_timeout_s=20)
    b.create_table(TAG, 64)
    finds = torn = 0
    versions = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        vectors, found = b.find(TAG, keys)
        assert found.all()
        torn += int((vectors != vectors[:, :1]).any(axis=1).sum())
        versions.update(np.unique(vectors[:, 0]).tolist())
        finds += 1
    b.close()
    queue.put((finds, torn, len(versions)))


def _spawn(target, *args) -> mp.Process:
    proc = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _get(queue, timeout: float = 60):
    got = queue.get(timeout=timeout)
    if isinstance(got, str):
        pytest.fail(got)
    return got


# -- across processes ---------------------------------------------------------------------------


def test_secondary_process_answers_exactly_and_sees_updates(shm_name):
    owner = SharedHashMapBackend(_config(shm_name))
    try:
        owner.create_table(TAG, DIM)
        keys = np.random.default_rng(0).choice(2**62, size=20_000, replace=False).astype(np.int64)
        owner.reserve(TAG, keys.shape[0])
        owner.insert_or_assign(TAG, keys, _rows(keys))
        owner.mark_loaded(TAG)
        queue = mp.get_context("spawn").Queue()
        query = np.concatenate([keys[::7], -keys[:100] - 1])
        proc = _spawn(_reader_proc, shm_name, DIM, query, queue)
        vectors, found = _get(queue)
        proc.join(30)
        assert found[: keys[::7].shape[0]].all() and not found[keys[::7].shape[0]:].any()
        np.testing.assert_array_equal(vectors[found], _rows(query[found]))
        # an update (with growth to a new generation) made here is what the next process sees
        more = np.arange(1, 60_001, dtype=np.int64) * -3
        owner.insert_or_assign(TAG, keys[:10], _rows(keys[:10], salt=5.0))
        owner.insert_or_assign(TAG, more, _rows(more))
        proc = _spawn(_reader_proc, shm_name, DIM, np.concatenate([keys[:10], more]), queue)
        vectors, found = _get(queue)
        proc.join(30)
        assert found.all()
        np.testing.assert_array_equal(vectors[:10], _rows(keys[:10], salt=5.0))
        np.testing.assert_array_equal(vectors[10:], _rows(more))
    finally:
        owner.close()
    assert _files(shm_name) == []  # auto-remove: the last process to detach removed every file


def test_no_torn_rows_while_another_process_writes(shm_name):
    """A reader process checks rows whose elements are all equal while this process rewrites them
    (values and new keys, so the slots change and the table grows by generation meanwhile)."""
    dim = 64
    writer = SharedHashMapBackend(_config(shm_name, max_batch_size=4096))
    try:
        writer.create_table(TAG, dim)
        keys = np.arange(20_000, dtype=np.int64) * 11
        writer.insert_or_assign(TAG, keys, np.zeros((keys.shape[0], dim), np.float32))
        writer.mark_loaded(TAG)
        queue = mp.get_context("spawn").Queue()
        proc = _spawn(_torn_row_reader, shm_name, keys, 3.0, queue)
        version, extra = 0, 0
        deadline = time.monotonic() + 25
        while queue.empty() and time.monotonic() < deadline:
            version += 1
            writer.insert_or_assign(TAG, keys, np.full((keys.shape[0], dim), version, np.float32))
            if version % 10 == 0:  # new keys now and then: slot changes and growth
                new = -np.arange(extra + 1, extra + 3001, dtype=np.int64)
                extra += 3000
                writer.insert_or_assign(TAG, new, np.zeros((new.shape[0], dim), np.float32))
        finds, torn, versions = _get(queue)
        proc.join(30)
        assert torn == 0
        assert finds >= 3 and versions >= 2, (finds, versions)  # it really read while we wrote
    finally:
        writer.close()


def test_secondary_started_before_owner_waits_then_attaches(shm_name):
    queue = mp.get_context("spawn").Queue()
    keys = np.arange(1000, dtype=np.int64)
    proc = _spawn(_reader_proc, shm_name, DIM, keys, queue, 30.0)
    time.sleep(1.0)  # the secondary is waiting: no file yet
    owner = SharedHashMapBackend(_config(shm_name))
    try:
        owner.create_table(TAG, DIM)
        owner.reserve(TAG, keys.shape[0])
        owner.insert_or_assign(TAG, keys[:500], _rows(keys[:500]))
        time.sleep(0.3)  # created and half loaded: still waiting
        assert queue.empty()
        owner.insert_or_assign(TAG, keys[500:], _rows(keys[500:]))
        owner.mark_loaded(TAG)
        vectors, found = _get(queue)
        proc.join(30)
        assert found.all()  # it attached after the load, not in the middle of it
        np.testing.assert_array_equal(vectors, _rows(keys))
    finally:
        owner.close()


def test_secondary_wait_is_bounded_and_says_why(shm_name):
    secondary = SharedHashMapBackend(_config(shm_name, initialize_after_startup=False), attach_timeout_s=0.2)
    with pytest.raises(BackendError, match=rf"waited for table {TAG} .*\(attach_timeout_s 0.2 s\), but no process "
                                           rf"created it"):
        secondary.create_table(TAG, DIM)
    owner = SharedHashMapBackend(_config(shm_name))
    owner.create_table(TAG, DIM)
    owner.reserve(TAG, 10)
    with pytest.raises(BackendError, match=rf"being loaded \(0 of 10 rows\): its owner, pid {os.getpid()}"):
        secondary.create_table(TAG, DIM)
    owner.mark_loaded(TAG)
    secondary.create_table(TAG, DIM)
    with pytest.raises(BackendError, match=f"{TAG} exists with dim {DIM}, not 3"):
        SharedHashMapBackend(_config(shm_name, initialize_after_startup=False)).create_table(TAG, 3)
    secondary.close()
    owner.close()
    assert _files(shm_name) == []


@pytest.mark.parametrize("how", ["close", "kill"])
def test_secondary_outlives_the_owner_and_keeps_answering(shm_name, how):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    keys = np.arange(5000, dtype=np.int64) * 3
    owner = _spawn(_owner_proc, shm_name, DIM, keys, ready, release)
    assert ready.wait(60)
    secondary = SharedHashMapBackend(_config(shm_name, initialize_after_startup=False), attach_timeout_s=5)
    secondary.create_table(TAG, DIM)
    if how == "kill":
        os.kill(owner.pid, signal.SIGKILL)
    else:
        release.set()
    owner.join(30)
    vectors, found = secondary.find(TAG, keys)
    assert found.all()
    np.testing.assert_array_equal(vectors, _rows(keys))
    secondary.insert_or_assign(TAG, keys[:5], _rows(keys[:5], salt=1.0))  # and may write
    assert secondary.find(TAG, keys[:5])[0][:, 0].tolist() == _rows(keys[:5], salt=1.0)[:, 0].tolist()
    assert _files(shm_name)  # still there while attached
    secondary.close()
    assert _files(shm_name) == []  # the last to detach removed them


def test_auto_remove_false_keeps_the_table_for_the_next_start(shm_name):
    keys = np.arange(100, dtype=np.int64)
    owner = SharedHashMapBackend(_config(shm_name, shared_memory_auto_remove=False))
    owner.create_table(TAG, DIM)
    owner.insert_or_assign(TAG, keys, _rows(keys))
    owner.mark_loaded(TAG)
    owner.close()
    assert len(_files(shm_name)) == 3  # header, data, users
    later = SharedHashMapBackend(_config(shm_name, initialize_after_startup=False), attach_timeout_s=1)
    later.create_table(TAG, DIM)  # attaches at once: the rows are still there
    vectors, found = later.find(TAG, keys)
    assert found.all()
    np.testing.assert_array_equal(vectors, _rows(keys))
    later.drop_table(TAG)  # drop removes it (no one else attached)
    assert _files(shm_name) == []


def test_auto_remove_waits_for_the_last_process(shm_name):
    first = SharedHashMapBackend(_config(shm_name))
    second = SharedHashMapBackend(_config(shm_name, initialize_after_startup=False))
    first.create_table(TAG, DIM)
    first.mark_loaded(TAG)
    second.create_table(TAG, DIM)
    first.close()
    assert len(_files(shm_name)) == 3
    second.close()
    assert _files(shm_name) == []
    with pytest.raises(ClosedError):
        second.find(TAG, np.zeros(1, np.int64))


def test_size_refusals_name_the_sizes(shm_name):
    small = SharedHashMapBackend(_config(shm_name, shared_memory_size=1 << 20))
    small.create_table(TAG, DIM)
    keys = np.arange(10, dtype=np.int64)
    small.insert_or_assign(TAG, keys, _rows(keys))
    with pytest.raises(BackendError, match=r"needs \d+ B \(.* MiB\) for 100000 rows of dim 8, but "
                                           r"volatile_db\.shared_memory_size is 1048576 B.*--shm-size"):
        small.reserve(TAG, 100_000)
    big = np.arange(100_000, dtype=np.int64)
    with pytest.raises(BackendError, match="shared_memory_size is 1048576 B"):
        small.insert_or_assign(TAG, big, _rows(big))
    vectors, found = small.find(TAG, keys)  # nothing half-applied
    assert found.all() and small.size(TAG) == 10
    small.close()
    vfs = os.statvfs("/dev/shm")
    free = vfs.f_bavail * vfs.f_frsize
    huge = SharedHashMapBackend(_config(shm_name, shared_memory_size=1 << 50))
    huge.create_table(TAG, 1024)
    with pytest.raises(BackendError, match=r"/dev/shm has \d+ B .* free of"):
        huge.reserve(TAG, free // 4096 + 1000)
    huge.close()
    assert _files(shm_name) == []


def test_growth_by_generation_keeps_rows_and_frees_old_segments(shm_name):
    b = SharedHashMapBackend(_config(shm_name, max_batch_size=1000))
    reader = SharedHashMapBackend(_config(shm_name, initialize_after_startup=False))
    try:
        b.create_table(TAG, 5)
        b.mark_loaded(TAG)
        reader.create_table(TAG, 5)
        keys = np.random.default_rng(3).choice(2**62, size=30_000, replace=False).astype(np.int64)
        for chunk in np.array_split(keys, 13):
            b.insert_or_assign(TAG, chunk, _rows(chunk, dim=5))
            vectors, found = reader.find(TAG, chunk)  # the reader follows every generation
            assert found.all()
            np.testing.assert_array_equal(vectors, _rows(chunk, dim=5))
        assert reader.size(TAG) == keys.shape[0] and b.partition_sizes(TAG).sum() == keys.shape[0]
        data = [f for f in _files(shm_name) if f.rsplit(".", 1)[-1].isdigit()]
        assert len(data) == 1 and int(data[0].rsplit(".", 1)[-1]) > 1  # old generations unlinked
        assert reader.erase(TAG, keys[:100]) == 100  # any process may write
        assert not b.find(TAG, keys[:100])[1].any()
    finally:
        reader.close()
        b.close()


def test_make_backend_maps_multi_process_hash_map(shm_name):
    backend = make_backend(_config(shm_name))
    assert isinstance(backend, SharedHashMapBackend) and backend.is_shared
    backend.close()
    with pytest.raises(BackendError, match="plain file name"):
        SharedHashMapBackend(_config("a/b"))


# -- HPS: HugeCTR's hps_demo pattern (one process loads, the others attach) ----------------------


def _hps_config(root, name: str, initialize: bool) -> dict:
    return {"supportlonglong": True,
            "volatile_db": {"type": "multi_process_hash_map", "shared_memory_name": name, "num_partitions": 3,
                            "initialize_after_startup": initialize},
            "models": [{"model": "demo", "sparse_files": [str(root / "t0"), str(root / "t1")],
                        "embedding_table_names": ["t0", "t1"], "embedding_vecsize_per_table": [16, 4],
                        "maxnum_catfeature_query_per_table_per_sample": [26, 2],
                        "default_value_for_each_table": [-1.0, 2.5], "deployed_device_list": [0],
                        "max_batch_size": 4096, "hit_rate_threshold": 1.0, "gpucacheper": 0.1}]}


def _hps_secondary(cfg: dict, keys0: np.ndarray, keys1: np.ndarray, queue) -> None:
    """A secondary HPS (initialize_after_startup false): its lookups, and what its volatile tier is."""
    try:
        import hps
        from hps.storage import shared_hash_map

        shared_hash_map.ATTACH_TIMEOUT_S = 30.0
        with hps.HPS(cfg, show_progress=False) as ps:
            tier = (type(ps.volatile).__name__, ps.config.volatile_db.initialize_after_startup)
            queue.put((ps.lookup(keys0, "demo", 0), ps.lookup(keys1, "demo", 1), tier))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def test_hps_secondary_started_first_answers_exactly_from_the_owners_load(shm_name, tmp_path):
    import hps
    from hps.model_format import write_sparse_model

    rng = np.random.default_rng(5)
    keys0 = rng.choice(2**40, size=6000, replace=False).astype(np.int64)
    vecs0 = rng.standard_normal((6000, 16)).astype(np.float32)
    keys1 = np.arange(300, dtype=np.int64) * 13
    vecs1 = rng.standard_normal((300, 4)).astype(np.float32)
    write_sparse_model(tmp_path / "t0", keys0, vecs0)
    write_sparse_model(tmp_path / "t1", keys1, vecs1)
    q0 = np.concatenate([keys0[::3], [-5, 7]])
    q1 = np.concatenate([keys1[::2], [1]])
    queue = mp.get_context("spawn").Queue()
    proc = _spawn(_hps_secondary, _hps_config(tmp_path, shm_name, False), q0, q1, queue)
    time.sleep(0.5)
    with hps.HPS(_hps_config(tmp_path, shm_name, True), show_progress=False) as owner:
        got0, got1, tier = _get(queue)
        proc.join(30)
        np.testing.assert_array_equal(got0, owner.lookup(q0, "demo", 0))
    assert tier == ("SharedHashMapBackend", False)  # no rows of its own: it read the owner's
    np.testing.assert_array_equal(got0[:-2], vecs0[::3])
    np.testing.assert_array_equal(got0[-2:], np.full((2, 16), -1.0, np.float32))
    np.testing.assert_array_equal(got1[:-1], vecs1[::2])
    np.testing.assert_array_equal(got1[-1], np.full(4, 2.5, np.float32))
    assert _files(shm_name) == []


def test_multi_process_hash_map_config_is_no_longer_a_warning(recwarn, tmp_path):
    from hps.config import parse_config

    raw = _hps_config(tmp_path, "x", False)
    raw["volatile_db"].update(shared_memory_size=1 << 30, shared_memory_auto_remove=False)
    parse_config(raw)
    assert not [w for w in recwarn if "shared_memory" in str(w.message) or "in-process" in str(w.message)]


def test_owners_starting_at_once_share_one_table(shm_name):
    import threading

    backends = [SharedHashMapBackend(_config(shm_name)) for _ in range(4)]
    barrier = threading.Barrier(4)

    def attach(b: SharedHashMapBackend) -> None:
        barrier.wait()
        b.create_table(TAG, DIM)

    threads = [threading.Thread(target=attach, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    keys = np.arange(50, dtype=np.int64)
    backends[0].insert_or_assign(TAG, keys, _rows(keys))
    for b in backends:
        assert b.find(TAG, keys)[1].all()
    assert [f for f in _files(shm_name) if not f.endswith(".users")] == sorted(
        os.path.basename(p) for p in backends[0].segment_paths(TAG)[:2])  # one header, one data segment
    for b in backends:
        b.close()
    assert _files(shm_name) == []


def test_a_foreign_file_is_refused_not_overwritten(shm_name):
    path = f"/dev/shm/{shm_name}.{TAG}"
    with open(path, "wb") as f:
        f.write(b"x" * 4096)
    with pytest.raises(BackendError, match="not an hps shared hash map table"):
        SharedHashMapBackend(_config(shm_name)).create_table(TAG, DIM)
    assert open(path, "rb").read(1) == b"x"


def test_a_writer_that_died_mid_write_is_an_error_not_a_hang(shm_name, monkeypatch):
    from hps.storage import shared_hash_map

    monkeypatch.setattr(shared_hash_map, "WRITER_STALL_S", 0.05)
    b = SharedHashMapBackend(_config(shm_name))
    b.create_table(TAG, DIM)
    keys = np.arange(10, dtype=np.int64)
    b.insert_or_assign(TAG, keys, _rows(keys))
    table = b._table(TAG)
    table.header[shared_hash_map.H_SEQ] += 1  # odd, and no process holds the writer lock
    with pytest.raises(BackendError, match=r"a writer \(pid \d+\) died while writing it.*remove /dev/shm/"):
        b.find(TAG, keys)
    table.header[shared_hash_map.H_SEQ] += 1
    assert b.find(TAG, keys)[1].all()
    b.close()


def test_owners_loading_at_once_load_once(shm_name):
    """Triton's model instances all start as owners: the first to reserve loads, the others skip their
    load writes and wait in mark_loaded for it."""
    import threading

    first, second = SharedHashMapBackend(_config(shm_name)), SharedHashMapBackend(_config(shm_name))
    keys = np.arange(1000, dtype=np.int64)
    for b in (first, second):
        b.create_table(TAG, DIM)
    first.reserve(TAG, 1000)
    second.reserve(TAG, 1000)
    second.insert_or_assign(TAG, keys, _rows(keys, salt=9.0))  # skipped: first loads these rows
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (second.mark_loaded(TAG), done.set()))
    waiter.start()
    time.sleep(0.2)
    assert not done.is_set()  # waits for the first's load
    first.insert_or_assign(TAG, keys, _rows(keys))
    first.mark_loaded(TAG)
    waiter.join(10)
    assert done.is_set()
    np.testing.assert_array_equal(second.find(TAG, keys)[0], _rows(keys))
    second.insert_or_assign(TAG, keys[:1], _rows(keys[:1], salt=1.0))  # after the load: a normal write
    np.testing.assert_array_equal(first.find(TAG, keys[:1])[0], _rows(keys[:1], salt=1.0))
    first.close()
    second.close()


@pytest.mark.kafka
def test_two_hps_processes_of_one_host_share_the_table_and_every_update(shm_name, tmp_path):
    """Two HPS processes on one host (both owners, as Triton's model instances): one table in /dev/shm,
    one Kafka group for the host (`hps.volatile.<host>`: each update applied once, to the one copy) and
    a cache group per process, so both see each update."""
    pytest.importorskip("confluent_kafka")
    import json
    import subprocess
    import sys
    from pathlib import Path

    from hps.update.publisher import KafkaPublisher
    from tests.kafka_fixture import TEST_CONSUMER_CONFIG, kafka_broker
    from tests.update.test_hps_updates import MODEL, TABLE, _ps_config, _write_model

    root = Path(__file__).resolve().parents[2]
    sparse, keys, vectors = _write_model(tmp_path)
    sample, new = keys[::3], vectors[::3] + 42.0
    np.save(tmp_path / "keys.npy", sample)
    np.save(tmp_path / "new.npy", new)
    with kafka_broker() as brokers:
        config = _ps_config(tmp_path, sparse, brokers)
        config.pop("persistent_db", None)
        config["volatile_db"] = {"type": "multi_process_hash_map", "shared_memory_name": shm_name,
                                 "num_partitions": 2, "update_filters": [".+"]}
        ps_json = tmp_path / "ps.json"
        ps_json.write_text(json.dumps(config))
        env = dict(os.environ, HPS_HOSTNAME="host-x", HPS_KAFKA_CONSUMER_CONFIG=json.dumps(TEST_CONSUMER_CONFIG))
        procs = [subprocess.Popen([sys.executable, "-m", "tests.update.consumer_proc", "hps", str(ps_json), MODEL,
                                   str(tmp_path / "keys.npy"), str(tmp_path / "new.npy"), "60"],
                                  cwd=root, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            groups = []
            for p in procs:
                word, _, rest = p.stdout.readline().partition(" ")
                assert word == "ready"
                groups.append(json.loads(rest))
            assert len(_files(shm_name)) == 3  # one table: header, data, users
            with KafkaPublisher(brokers) as pub:
                pub.publish(MODEL, TABLE, sample, new)
            assert [p.wait(90) for p in procs] == [0, 0]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
    for process_groups in groups:
        assert process_groups[1] == "hps.volatile.host-x" and process_groups[0].startswith("hps.cache.host-x.")
    assert _files(shm_name) == []


@pytest.mark.slow
@pytest.mark.triton
def test_triton_model_instances_share_one_copy(shm_name, tmp_path):
    """Two Triton python-backend instances of hps_embedding (two processes, both owners): one table in
    shared memory, attached by both, exact answers from either; removed when the server stops."""
    import fcntl
    import json

    http = pytest.importorskip("tritonclient.http")
    from hps.serving.triton import ServerError, build_repository, serve
    from tests.serving.conftest import write_dense_onnx, write_ps_json, write_table

    keys = np.arange(30000, dtype=np.int64) * 5
    vectors = write_table(tmp_path / "emb.model", keys, 16, seed=1)
    ps_json = write_ps_json(tmp_path / "hps_embedding.json", "hps_embedding", ["emb.model"], [16], [3])
    config = json.loads(ps_json.read_text())
    config["volatile_db"] = {"type": "multi_process_hash_map", "shared_memory_name": shm_name, "num_partitions": 2}
    ps_json.write_text(json.dumps(config))
    repo = build_repository(ps_json, write_dense_onnx(tmp_path / "dense.onnx", 48), tmp_path / "repo",
                            instance_count=2, metrics_interval_s=0)
    try:
        server = serve(repo, http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=240)
    except ServerError as exc:
        pytest.skip(f"tritonserver did not start: {exc}")
    with server:
        client = http.InferenceServerClient(server.url_http, concurrency=4)
        rng = np.random.default_rng(0)
        for _ in range(8):  # requests spread over both instances
            query = keys[rng.integers(0, keys.shape[0], (1, 96))]
            inputs = [http.InferInput("KEYS", [1, 96], "INT64"), http.InferInput("NUMKEYS", [1, 1], "INT32")]
            inputs[0].set_data_from_numpy(query)
            inputs[1].set_data_from_numpy(np.array([[96]], np.int32))
            out = client.infer("hps_embedding", inputs).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(out.reshape(96, 16), vectors[query[0] // 5])
        client.close()
        files = _files(shm_name)
        assert len(files) == 3  # one table: header, one data segment, users
        users = os.open(f"/dev/shm/{[f for f in files if f.endswith('.users')][0]}", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # attached by the instances
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(users)
    assert _files(shm_name) == []
