"""GPU caches writing into a caller's buffer (`find(keys, out=)`, `find_counted(keys, out)`), large batches
without graph replay, and the pinned-buffer transfers of `hps.lookup.transfers`.

On CUDA, or on the CPU with TRITON_INTERPRET=1 (the Triton kernels in the interpreter)."""

from __future__ import annotations

import numpy as np
import pytest

# skips this module as well without CUDA or TRITON_INTERPRET=1
from .test_gpu_cache import DEVICE, tkeys, tvec  # isort: skip

import torch  # noqa: E402

from hps.cache.gpu import GpuEmbeddingCache  # noqa: E402
from hps.cache.gpu_static import GpuStaticTable  # noqa: E402
from hps.cache.gpu_whole import GpuWholeTableCache  # noqa: E402
from hps.errors import KeyInputError  # noqa: E402
from hps.lookup import transfers  # noqa: E402

from .cache_contract import rows  # noqa: E402

DIM = 8


def _caches():
    keys = np.arange(200, dtype=np.int64) * 5
    bucketed = GpuEmbeddingCache(4096, DIM, DEVICE)  # load 0.05: no bucket overflows
    whole = GpuWholeTableCache(256, DIM, DEVICE)
    for cache in (bucketed, whole):
        cache.insert_or_assign(tkeys(keys), tvec(rows(keys, DIM)))
    static = GpuStaticTable(keys, rows(keys, DIM), DEVICE, default_value=-1.0)
    return keys, {"bucketed": bucketed, "whole": whole, "static": static}


@pytest.mark.parametrize("kind", ["bucketed", "whole", "static"])
def test_find_writes_every_row_into_out(kind):
    keys, caches = _caches()
    cache = caches[kind]
    query = np.concatenate([keys[::3], [1, 2, 3]])  # 1, 2, 3 are absent
    out = torch.full((len(query), DIM), float("nan"), device=DEVICE)
    vectors, found = cache.find(tkeys(query), out=out)
    assert vectors is out
    ref, ref_found = cache.find(tkeys(query))
    assert torch.equal(found.cpu(), ref_found.cpu())
    assert not torch.isnan(out).any()  # misses are written too
    np.testing.assert_array_equal(out.cpu().numpy(), ref.cpu().numpy())
    if kind != "static":
        out2 = torch.full_like(out, float("nan"))
        vectors, found, num_found = cache.find_counted(tkeys(query), out2)
        assert vectors is out2 and num_found == int(ref_found.sum())
        np.testing.assert_array_equal(out2.cpu().numpy()[found.cpu().numpy()],
                                      ref.cpu().numpy()[ref_found.cpu().numpy()])


@pytest.mark.parametrize("bad", ["dtype", "shape", "device_kind", "strided"])
def test_find_refuses_a_wrong_out_and_writes_nothing(bad):
    keys, caches = _caches()
    n = 10
    outs = {"dtype": torch.full((n, DIM), 7.0, dtype=torch.float64, device=DEVICE),
            "shape": torch.full((n + 1, DIM), 7.0, device=DEVICE),
            "device_kind": np.full((n, DIM), 7.0, np.float32),
            "strided": torch.full((DIM, n), 7.0, device=DEVICE).t()}
    for cache in caches.values():
        out = outs[bad]
        with pytest.raises(KeyInputError, match="out"):
            cache.find(tkeys(keys[:n]), out=out)
        assert (np.asarray(out.cpu()) if isinstance(out, torch.Tensor) else out).min() == 7.0


@pytest.mark.parametrize("kind", ["bucketed", "whole"])
def test_large_batches_skip_the_graph_and_write_straight_into_the_result(kind):
    """Above `max_graph_keys` find_counted runs eagerly (no static buffer, no second copy of the vectors)."""
    keys, caches = _caches()
    cache = caches[kind]
    cache._graphs.max_graph_keys = 16
    query = np.concatenate([np.repeat(keys[:40], 2), [1, 2]])
    out = torch.full((len(query), DIM), float("nan"), device=DEVICE)
    vectors, found, num_found = cache.find_counted(tkeys(query), out)
    assert vectors is out and num_found == 80 and found.cpu().numpy().tolist() == [True] * 80 + [False] * 2
    np.testing.assert_array_equal(out.cpu().numpy()[:80], rows(query[:80], DIM))
    assert not cache._graphs._graphs  # nothing captured
    vectors, found, num_found = cache.find_counted(tkeys(query[:80]))
    assert found is None and num_found == 80
    np.testing.assert_array_equal(vectors.cpu().numpy(), rows(query[:80], DIM))


@pytest.mark.parametrize("chunk_bytes", [64, 1 << 20])  # many chunks; one
def test_staging_round_trips_through_chunks(monkeypatch, chunk_bytes):
    monkeypatch.setattr(transfers, "CHUNK_BYTES", chunk_bytes)
    pool = transfers.StagingPool(DEVICE)
    rng = np.random.default_rng(0)
    for n in (1, 37, 300, 5):  # grow, then reuse the buffers for a smaller batch
        host = rng.standard_normal((n, DIM)).astype(np.float32)
        keys = rng.integers(-(2**62), 2**62, n)
        with pool.take() as staging:
            dev = staging.to_device(host)
            assert dev.device == torch.device(DEVICE)
            np.testing.assert_array_equal(dev.cpu().numpy(), host)
            dst = np.full((n, DIM), np.nan, np.float32)
            staging.to_host(dev * 2, dst)
            np.testing.assert_array_equal(dst, host * 2)
            np.testing.assert_array_equal(staging.keys_to_device(keys).cpu().numpy(), keys)
            np.testing.assert_array_equal(staging.small_to_host(tkeys(keys)), keys)


def test_staging_pool_lends_one_set_per_concurrent_borrower():
    pool = transfers.StagingPool(DEVICE)
    with pool.take() as first, pool.take() as second:
        assert first is not second
    with pool.take() as again:
        assert again in (first, second)


def test_chunks_cover_the_range_exactly(monkeypatch):
    monkeypatch.setattr(transfers, "CHUNK_BYTES", 100)
    for n in (0, 1, 25, 26, 1000, 12345):
        pieces = transfers.chunks(n, 4)
        covered = [i for a, b in pieces for i in range(a, b)]
        assert covered == list(range(n)) and len(pieces) <= transfers.MAX_CHUNKS


@pytest.mark.skipif(DEVICE == "cpu", reason="graph replays run on CUDA only")
def test_concurrent_callers_on_their_own_streams_get_their_own_rows():
    """Graph replays of one batch size from threads on separate streams: the host waits for the hit count
    outside the graphs' lock, so each caller's copies out must be ordered before the next replay."""
    import threading

    cache = GpuEmbeddingCache(8192, DIM, DEVICE)
    keys = np.arange(2000, dtype=np.int64) * 5
    cache.insert_or_assign(tkeys(keys), tvec(rows(keys, DIM)))
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for _ in range(60):
                absent = rng.integers(0, 2) * 3
                query = np.concatenate([rng.choice(keys, 64 - absent), [1, 2, 3][:absent]])
                vectors, found, num_found = cache.find_counted(tkeys(query))
                got, mask = vectors.cpu().numpy(), (np.ones(64, bool) if found is None else found.cpu().numpy())
                if num_found != 64 - absent or not np.array_equal(got[mask], rows(query[mask], DIM)):
                    errors.append(f"seed {seed}: {num_found} found, rows differ")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
