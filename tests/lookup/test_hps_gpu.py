"""`HPS.lookup` through the GPU cache: on a GPU, or in Triton's CPU interpreter (HPS_DEVICE=interpret)."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import hps  # noqa: E402
from hps.errors import KeyInputError  # noqa: E402
from hps.model_format import write_sparse_model  # noqa: E402

ON_GPU = torch.cuda.is_available()
if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA, or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = "cuda:0" if ON_GPU else "cpu"
ROWS, DIM = 512, 8


@pytest.fixture()
def table(tmp_path, monkeypatch):
    if not ON_GPU:
        monkeypatch.setenv("HPS_DEVICE", "interpret")
    keys = np.arange(ROWS, dtype=np.int64) * 3
    vectors = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
    write_sparse_model(tmp_path / "t0", keys, vectors)
    return tmp_path, keys, vectors


def config(tmp_path, **model):
    entry = {"model": "m", "sparse_files": [str(tmp_path / "t0")], "embedding_vecsize_per_table": [DIM],
             "maxnum_catfeature_query_per_table_per_sample": [4], "default_value_for_each_table": [-2.0],
             "deployed_device_list": [0], "max_batch_size": 256, "gpucacheper": 0.5, "hit_rate_threshold": 1.0}
    entry.update(model)
    return {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 2}, "models": [entry]}


def expected(keys, vectors, query):
    index = {int(k): i for i, k in enumerate(keys)}
    out = np.full((len(query), DIM), -2.0, np.float32)
    for j, k in enumerate(np.asarray(query).tolist()):
        if k in index:
            out[j] = vectors[index[k]]
    return out


def test_torch_keys_come_back_on_their_device_through_the_gpu_cache(table):
    tmp_path, keys, vectors = table
    with hps.HPS(config(tmp_path), show_progress=False) as ps:
        replica = ps._models["m"].replicas[(0, 0)]
        assert replica.takes_torch and replica.cache.device == DEVICE
        query = np.array([0, 3, 3, 7, 1537, 9], dtype=np.int64)  # 7 and 1537 are in no tier
        for _ in range(2):  # cold (tiers, then inserted), then warm (cache)
            out = ps.lookup(torch.from_numpy(query).to(DEVICE), "m", 0)
            assert isinstance(out, torch.Tensor) and out.device.type == torch.device(DEVICE).type
            np.testing.assert_array_equal(out.cpu().numpy(), expected(keys, vectors, query))
        stats = ps.stats()["models"]["m"]["sparse_embedding0"]
        assert stats["hits"]["cache"] >= len(query) and stats["hits"]["volatile"] == 4
        np.testing.assert_array_equal(ps.lookup(query.reshape(2, 3), "m", 0),
                                      expected(keys, vectors, query).reshape(2, 3, DIM))


def test_updates_reach_the_gpu_cache(table):
    tmp_path, keys, vectors = table
    with hps.HPS(config(tmp_path), show_progress=False) as ps:
        query = keys[:5]
        ps.lookup(query, "m", 0)
        new = np.full((5, DIM), 3.5, np.float32)
        ps.apply_update("hps_et.m.sparse_embedding0", query, new, tier="volatile")
        np.testing.assert_array_equal(ps.lookup(query, "m", 0), new)


def test_static_table_on_the_gpu(table):
    tmp_path, keys, vectors = table
    cfg = config(tmp_path, embedding_cache_type="static")
    with hps.HPS(cfg, show_progress=False) as ps:
        query = np.concatenate([keys[::50], [1, 2]])
        np.testing.assert_array_equal(ps.lookup(query, "m", 0), expected(keys, vectors, query))


@pytest.mark.skipif(not ON_GPU or torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("gpucacheper", [0.5, 1.0])  # buckets; the whole-table cache
def test_one_replica_per_deployed_device(table, gpucacheper):
    tmp_path, keys, vectors = table
    with hps.HPS(config(tmp_path, deployed_device_list=[0, 1], gpucacheper=gpucacheper), show_progress=False) as ps:
        for device_id in (0, 1):
            replica = ps._models["m"].replicas[(0, device_id)]
            assert replica.cache.device == f"cuda:{device_id}"
            for start in (0, 6):  # two batches of one size: the second replays the graph the first captured
                query = torch.from_numpy(keys[start:start + 6].copy()).to(f"cuda:{device_id}")
                for _ in range(2):  # misses filled from the tiers, then hits served by the replica's cache
                    hits = ps.stats()["models"]["m"]["sparse_embedding0"]["hits"]["cache"]
                    out = ps.lookup(query, "m", 0, device_id=device_id)
                    assert out.device == torch.device(f"cuda:{device_id}")
                    np.testing.assert_array_equal(out.cpu().numpy(), vectors[start:start + 6])
                assert ps.stats()["models"]["m"]["sparse_embedding0"]["hits"]["cache"] == hits + 6


def test_refresh_rereads_the_gpu_cache_from_the_tiers(table):
    tmp_path, keys, vectors = table
    with hps.HPS(config(tmp_path), show_progress=False) as ps:
        query = keys[:4]
        ps.lookup(query, "m", 0)  # cached now
        ps.volatile.insert_or_assign("hps_et.m.sparse_embedding0", query, np.full((4, DIM), 7.0, np.float32))
        np.testing.assert_array_equal(ps.lookup(query, "m", 0), vectors[:4])  # the cache still holds the old rows
        assert ps.refresh("m") >= 4
        np.testing.assert_array_equal(ps.lookup(query, "m", 0), np.full((4, DIM), 7.0, np.float32))


def test_asynchronous_misses_are_inserted_in_the_background(table):
    import time

    tmp_path, keys, vectors = table
    with hps.HPS(config(tmp_path, hit_rate_threshold=0.0), show_progress=False) as ps:
        query = torch.from_numpy(keys[10:20].copy()).to(DEVICE)
        assert (ps.lookup(query, "m", 0).cpu().numpy() == -2.0).all()  # this batch: the default value
        deadline = time.monotonic() + 20
        while not np.array_equal(ps.lookup(query, "m", 0).cpu().numpy(), vectors[10:20]):
            assert time.monotonic() < deadline, "the background insert never reached the GPU cache"
            time.sleep(0.01)


def _out(kind, shape):
    """A caller's buffer poisoned with NaN: numpy, a CPU torch tensor or a tensor on the cache's device."""
    if kind == "numpy":
        return np.full(shape, np.nan, np.float32)
    return torch.full(shape, float("nan"), device="cpu" if kind == "torch-cpu" else DEVICE)


def _host(array):
    return array if isinstance(array, np.ndarray) else array.cpu().numpy()


@pytest.mark.parametrize("cache", ["gpu", "cpu"])
@pytest.mark.parametrize("keys_kind", ["numpy", "numpy-int32", "torch"])
@pytest.mark.parametrize("out_kind", ["numpy", "torch-cpu", "torch-device"])
def test_lookup_fills_the_callers_out(table, monkeypatch, cache, keys_kind, out_kind):
    """`lookup(..., out=)` writes every element of the caller's buffer (host or device, numpy or torch) and
    returns that same object, for numpy and device keys, through the GPU cache and through a host cache;
    misses (fetched, duplicated, and absent everywhere) included."""
    tmp_path, keys, vectors = table
    if cache == "cpu":  # the host cache, also on a GPU machine (cuda_available is cached per process)
        monkeypatch.setenv("HPS_DEVICE", "cpu")
        monkeypatch.setattr("hps.parameter_server.cuda_available", lambda: False)
        monkeypatch.setattr("hps.cache.factory.cuda_available", lambda: False)
    query = np.array([[0, 3, 3, 7], [1537, 9, 0, 12]], dtype=np.int64)  # 7 and 1537 are in no tier
    given = {"numpy": query, "numpy-int32": query.astype(np.int32),
             "torch": torch.from_numpy(query).to(DEVICE)}[keys_kind]
    with hps.HPS(config(tmp_path), show_progress=False) as ps:
        assert ps._models["m"].replicas[(0, 0)].takes_torch == (cache == "gpu")
        for _ in range(2):  # cold (misses fetched from the tiers), then warm
            out = _out(out_kind, (2, 4, DIM))
            assert ps.lookup(given, "m", 0, out=out) is out
            np.testing.assert_array_equal(_host(out), expected(keys, vectors, query.reshape(-1)).reshape(2, 4, DIM))


@pytest.mark.parametrize("out_kind", ["numpy", "torch-device"])
def test_a_wrong_out_raises_before_anything_is_written(table, out_kind):
    tmp_path, keys, vectors = table
    query = keys[:6].reshape(2, 3)
    with hps.HPS(config(tmp_path), show_progress=False) as ps:
        lib = np if out_kind == "numpy" else None

        def make(shape, dtype="float32"):
            if lib is np:
                return np.full(shape, 5.0, dtype=dtype)
            return torch.full(shape, 5.0, dtype=getattr(torch, dtype), device=DEVICE)

        bad = [make((2, 3, DIM), "float64"), make((2, 3, DIM + 1)), make((6, DIM)), make((2, 4, DIM)),
               make((2, 3, 2 * DIM))[..., ::2], [[0.0] * DIM] * 6]
        if lib is np:
            read_only = make((2, 3, DIM))
            read_only.flags.writeable = False
            bad.append(read_only)
        else:
            bad.append(make((2, 3, DIM)).requires_grad_())
        for out in bad:
            for keys_given in (query, torch.from_numpy(query).to(DEVICE)):
                with pytest.raises(KeyInputError, match="out must be"):
                    ps.lookup(keys_given, "m", 0, out=out)
            if not isinstance(out, list):
                assert (_host(out.detach() if isinstance(out, torch.Tensor) else out) == 5.0).all()
        assert ps.stats()["models"]["m"]["sparse_embedding0"]["lookups"] == 0  # nothing was looked up


def test_numpy_keys_through_chunked_pinned_transfers(table, monkeypatch):
    """Large copies are cut into chunks (DMA of one overlapping host copies of the others): the same rows,
    misses fetched from the tiers through the pinned buffers too."""
    from hps.lookup import transfers

    monkeypatch.setattr(transfers, "CHUNK_BYTES", 96)
    tmp_path, keys, vectors = table
    rng = np.random.default_rng(5)
    with hps.HPS(config(tmp_path, gpucacheper=0.2), show_progress=False) as ps:
        for n in (200, 64, 200):
            query = np.concatenate([rng.choice(keys, n - 4), [1, 2, 4, 5]])  # 4 keys in no tier
            want = expected(keys, vectors, query)
            np.testing.assert_array_equal(ps.lookup(query, "m", 0), want)
            out = np.full((n, DIM), np.nan, np.float32)
            ps.lookup(query, "m", 0, out=out)
            np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("out_on", ["host", "device"])
def test_lookup_fromdlpack_writes_through_out(table, out_on):
    """lookup_fromdlpack routes its write through `out=`: the first n × dim elements, the rest untouched."""
    tmp_path, keys, vectors = table
    query = keys[[1, 5, 5, 9]]
    with hps.HPS(config(tmp_path), show_progress=False) as ps:
        out = torch.full((4 * DIM + 3,), 9.0, device="cpu" if out_on == "host" else DEVICE)
        keys_given = torch.from_numpy(query).to(DEVICE)
        ps.lookup_fromdlpack(torch.utils.dlpack.to_dlpack(keys_given), torch.utils.dlpack.to_dlpack(out), "m", 0)
        got = out.cpu().numpy()
        np.testing.assert_array_equal(got[:4 * DIM].reshape(4, DIM), expected(keys, vectors, query))
        assert (got[4 * DIM:] == 9.0).all()
