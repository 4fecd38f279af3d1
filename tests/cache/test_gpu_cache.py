"""GPU embedding cache and static / uvm tables: the cache contract plus kernel-level checks.

On a machine without CUDA these run the Triton kernels in the CPU interpreter (set
TRITON_INTERPRET=1 before Python starts) on CPU tensors; on a GPU machine they run on "cuda"
(TRITON_INTERPRET unset). Sizes stay small: the interpreter is slow.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("needs CUDA, or TRITON_INTERPRET=1 for the CPU interpreter", allow_module_level=True)
DEVICE = "cpu" if INTERPRET else "cuda:0"

from hps.cache import gpu_kernels as K  # noqa: E402
from hps.cache.base import EmbeddingCache  # noqa: E402
from hps.cache.gpu import GpuEmbeddingCache, make_gpu_cache  # noqa: E402
from hps.cache.gpu_static import GpuStaticTable, GpuUvmTable  # noqa: E402
from hps.config.schema import ModelConfig  # noqa: E402
from hps.errors import ConfigError, HpsError, KeyInputError, UpdateError  # noqa: E402

from .cache_contract import DIM, CacheContract, rows  # noqa: E402


def tkeys(keys) -> "torch.Tensor":
    return torch.as_tensor(np.asarray(keys, dtype=np.int64)).to(DEVICE)


def tvec(vectors) -> "torch.Tensor":
    return torch.as_tensor(np.asarray(vectors, dtype=np.float32)).to(DEVICE)


class _TorchArrays:
    def to_keys(self, keys: np.ndarray):
        return tkeys(keys)

    def to_vectors(self, vectors: np.ndarray):
        return tvec(vectors)

    def to_numpy(self, array) -> np.ndarray:
        return array.cpu().numpy()


def _maker(**kw):
    made: list[GpuEmbeddingCache] = []

    def make(capacity_rows: int, dim: int) -> GpuEmbeddingCache:
        cache = GpuEmbeddingCache(capacity_rows, dim, DEVICE, **kw)
        made.append(cache)
        return cache

    return made, make


class TestGpuEmbeddingCache(_TorchArrays, CacheContract):
    """The shared contract; one bucket (8 words: 7 slots and the version) is the single set of the
    LRU tests."""

    SINGLE_SET_CAPACITY_ROWS = 7

    @pytest.fixture
    def make_cache(self):
        made, make = _maker()
        yield make
        for cache in made:
            cache.close()


class TestGpuEmbeddingCacheFourWays(_TorchArrays, CacheContract):
    """The same contract with 4-word buckets (3 slots), where collisions and eviction are common."""

    SINGLE_SET_CAPACITY_ROWS = 3

    @pytest.fixture
    def make_cache(self):
        made, make = _maker(ways=4)
        yield make
        for cache in made:
            cache.close()


def test_fp16_rounds_like_torch():
    cache = GpuEmbeddingCache(64, 12, DEVICE, storage_dtype=torch.float16)
    keys = np.arange(20, dtype=np.int64) * 101
    vec = np.random.default_rng(1).standard_normal((20, 12)).astype(np.float32)
    cache.insert_or_assign(tkeys(keys), tvec(vec))
    out, found = cache.find(tkeys(keys))
    assert out.dtype == torch.float32 and found.all()
    want = torch.from_numpy(vec).to(torch.float16).to(torch.float32).numpy()
    kept = found.cpu().numpy()
    np.testing.assert_array_equal(out.cpu().numpy()[kept], want[kept])
    cache.assign(tkeys(keys[:5]), tvec(vec[:5] * 2))
    cache.erase(tkeys(keys[5:10]))
    out, found = cache.find(tkeys(keys[:10]))
    assert found.cpu().numpy().tolist() == [True] * 5 + [False] * 5
    np.testing.assert_array_equal(out.cpu().numpy()[:5], want[:5] * 2)


@pytest.mark.parametrize("dim", [1, 3, 16, 33])
def test_odd_dims_and_misses_written_zero(dim):
    cache = GpuEmbeddingCache(256, dim, DEVICE)
    keys = np.arange(100, dtype=np.int64) * 7 - 300
    vec = np.random.default_rng(dim).standard_normal((100, dim)).astype(np.float32)
    cache.insert_or_assign(tkeys(keys), tvec(vec))
    query = np.concatenate([keys, keys[::-1] + 1])
    out, found = cache.find(tkeys(query))
    out, found = out.cpu().numpy(), found.cpu().numpy()
    assert found[100:].sum() <= 100 and found[:100].sum() >= 90
    np.testing.assert_array_equal(out[:100][found[:100]], vec[found[:100]])
    assert not out[~found].any()  # misses are written (zeros), never left uninitialized


def test_capacity_is_whole_buckets_and_geometry():
    cache = GpuEmbeddingCache(100, 4, DEVICE, ways=16)
    assert cache.capacity_rows == 105 and cache.num_buckets == 7 and cache.slots_per_bucket == 15
    assert isinstance(cache, EmbeddingCache) and cache.device == DEVICE
    with pytest.raises(ConfigError):
        GpuEmbeddingCache(100, 4, DEVICE, ways=6)
    with pytest.raises(ConfigError):
        GpuEmbeddingCache(100, 4, DEVICE, ways=1)
    with pytest.raises(ConfigError):
        GpuEmbeddingCache(100, 4, DEVICE, eviction="fifo")
    with pytest.raises(ConfigError):
        GpuEmbeddingCache(0, 4, DEVICE)


def test_bad_keys_raise_key_input_error():
    cache = GpuEmbeddingCache(64, 4, DEVICE)
    with pytest.raises(KeyInputError):
        cache.find(np.arange(3))
    with pytest.raises(KeyInputError):
        cache.find(torch.zeros((2, 2), dtype=torch.int64, device=DEVICE))
    with pytest.raises(KeyInputError):
        cache.find(torch.zeros(2, dtype=torch.float32, device=DEVICE))
    out, found = cache.find(torch.arange(3, dtype=torch.int32, device=DEVICE))  # int32 keys are widened
    assert not found.any()


def test_lfu_keeps_the_most_used():
    cache = GpuEmbeddingCache(7, 4, DEVICE, eviction="lfu")
    keys = np.arange(7, dtype=np.int64)
    cache.insert_or_assign(tkeys(keys), tvec(rows(keys, 4)))
    for _ in range(3):
        cache.find(tkeys(keys[2:]))  # keys 0 and 1 are used least
    new = np.array([100, 101])
    cache.insert_or_assign(tkeys(new[:1]), tvec(rows(new[:1], 4)))
    cache.insert_or_assign(tkeys(new[1:]), tvec(rows(new[1:], 4)))
    _, found = cache.find(tkeys(np.concatenate([keys, new])))
    found = found.cpu().numpy()
    assert found[2:7].all() and found[8]  # the newest stays, the most used stay


def test_sampled_touch_only_stamps_every_nth_call():
    cache = GpuEmbeddingCache(7, 4, DEVICE, touch_every_calls=2)
    keys = np.arange(7, dtype=np.int64)
    cache.insert_or_assign(tkeys(keys), tvec(rows(keys, 4)))
    cache.find(tkeys(keys[:1]))  # call 1: not stamped
    cache.insert_or_assign(tkeys(np.array([50])), tvec(rows(np.array([50]), 4)))
    _, found = cache.find(tkeys(np.array([0])))  # call 2 (stamps, but 0 is already gone)
    assert not found.cpu().numpy()[0]
    cache.find(tkeys(keys[2:3]))  # call 3: not stamped
    cache.find(tkeys(keys[1:2]))  # call 4: stamps key 1
    cache.insert_or_assign(tkeys(np.array([51])), tvec(rows(np.array([51]), 4)))
    _, found = cache.find(tkeys(np.array([1, 2])))
    assert found.cpu().numpy().tolist() == [True, False]


def test_reader_reports_a_miss_while_a_writer_holds_the_bucket():
    """The seqlock read side: an odd bucket version (writer inside) makes the row a miss, never a
    possibly torn hit; reference bits (bits 24-31) do not count as a version change."""
    cache = GpuEmbeddingCache(14, 4, DEVICE)
    keys = np.arange(10, dtype=np.int64)
    cache.insert_or_assign(tkeys(keys), tvec(rows(keys, 4)))
    held = cache.find(tkeys(keys))[1].cpu().numpy()
    assert held.sum() >= 8
    words = cache._version_words()
    words += 1  # a writer holds every bucket
    assert not cache.find(tkeys(keys))[1].any()
    words += 1  # released
    words |= 0x7F000000  # every reference bit set
    np.testing.assert_array_equal(cache.find(tkeys(keys))[1].cpu().numpy(), held)
    cache.insert_or_assign(tkeys(np.array([K.EMPTY])), tvec(rows(np.array([0]), 4)))
    words += 1
    assert not cache.find(tkeys(np.array([K.EMPTY])))[1].any()
    words += 1
    assert cache.find(tkeys(np.array([K.EMPTY])))[1].all()


def test_writers_leave_every_version_even_and_bits_folded():
    cache = GpuEmbeddingCache(14, 4, DEVICE)
    keys = np.arange(10, dtype=np.int64)
    cache.insert_or_assign(tkeys(keys), tvec(rows(keys, 4)))
    cache.find(tkeys(keys))  # sets reference bits
    assert (cache._version_words().cpu().numpy() >> 24 & 0xFF).any()
    cache.insert_or_assign(tkeys(keys), tvec(rows(keys, 4, salt=5.0)))
    words = cache._version_words().cpu().numpy()
    assert (words & 1 == 0).all() and (words[:-1] & 0xFFFFFF >= 4).all()
    assert not (words >> 24 & 0xFF).any()  # folded into the clocks and cleared
    vectors, found = cache.find(tkeys(keys))
    kept = found.cpu().numpy()
    np.testing.assert_array_equal(vectors.cpu().numpy()[kept], rows(keys, 4, salt=5.0)[kept])


# ---- static / uvm ----

def _table(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    keys = rng.choice(np.arange(-10 * n, 10 * n), size=n, replace=False).astype(np.int64)
    keys[0] = K.EMPTY  # the empty marker is a valid key
    keys[1] = 2**63 - 1
    return keys, rng.standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("kind", ["static", "pagelock", "uvm"])
def test_whole_tables_find_every_row_and_default_misses(kind):
    keys, vec = _table(300, 5)
    if kind == "static":
        table = GpuStaticTable(keys, vec, DEVICE, default_value=-2.5)
    elif kind == "pagelock":
        table = GpuStaticTable(keys, vec, DEVICE, pagelock=True, default_value=-2.5)
    else:
        table = GpuUvmTable(keys, vec, 120, DEVICE, default_value=-2.5)
    assert table.read_only and table.size() == 300 and isinstance(table, EmbeddingCache)
    query = np.concatenate([keys[::-1], keys[:7], np.array([10**15, -(10**15)])])
    out, found = table.find(tkeys(query))
    out, found = out.cpu().numpy(), found.cpu().numpy()
    assert found[:-2].all() and not found[-2:].any()
    np.testing.assert_array_equal(out[:300], vec[::-1])
    np.testing.assert_array_equal(out[300:307], vec[:7])
    assert (out[-2:] == -2.5).all()
    # assign overwrites present rows in both tiers; absent keys are ignored
    upd = np.array([keys[5], keys[250], 123456789], dtype=np.int64)
    table.assign(tkeys(upd), tvec(np.full((3, 5), 7.0)))
    out, found = table.find(tkeys(upd))
    assert found.cpu().numpy().tolist() == [True, True, False]
    assert (out.cpu().numpy()[:2] == 7.0).all()
    with pytest.raises(UpdateError):
        table.insert_or_assign(tkeys(upd), tvec(np.zeros((3, 5))))
    with pytest.raises(UpdateError):
        table.erase(tkeys(upd[:1]))
    assert sorted(table.dump().cpu().numpy().tolist()) == sorted(keys.tolist())
    table.close()


def test_factory_picks_the_cache_type():
    base = dict(name="m", sparse_files=("a",), embedding_vecsize_per_table=(4,),
                maxnum_catfeature_query_per_table_per_sample=(2,), default_value_for_each_table=(0.5,),
                deployed_device_list=(0,), embedding_table_names=("t0",), gpucacheper=0.5)
    keys, vec = _table(50, 4)
    loader = lambda: iter([(keys[:20], vec[:20]), (keys[20:], vec[20:])])  # noqa: E731
    model = ModelConfig(**base)
    cache = make_gpu_cache(model, model.table(0), 1000, 0, device=DEVICE)
    assert isinstance(cache, GpuEmbeddingCache) and 500 <= cache.capacity_rows < 507  # whole buckets of 7
    small = make_gpu_cache(model, model.table(0), 10, 0, device=DEVICE)
    assert 64 <= small.capacity_rows < 71
    static = make_gpu_cache(ModelConfig(**base, use_static_table=True), model.table(0), 50, 0, loader, device=DEVICE)
    assert isinstance(static, GpuStaticTable) and static.default_value == 0.5
    uvm = make_gpu_cache(ModelConfig(**base, embedding_cache_type="uvm"), model.table(0), 50, 0,
                         lambda: (keys, vec), device=DEVICE)
    assert isinstance(uvm, GpuUvmTable) and uvm.hot_rows == 25
    out, found = uvm.find(tkeys(keys))
    assert found.all()
    np.testing.assert_array_equal(out.cpu().numpy(), vec)
    with pytest.raises(HpsError):
        make_gpu_cache(ModelConfig(**base, use_static_table=True), model.table(0), 50, 0, device=DEVICE)


# ---- the race, on real concurrent streams (GPU only) ----

@pytest.mark.skipif(INTERPRET, reason="needs two CUDA streams running at once")
@pytest.mark.parametrize("dim", [32, 128])
def test_no_torn_rows_with_finds_and_writes_on_concurrent_streams(dim):
    """One long assign kernel rewrites every row 16 times, alternating two full versions
    (row = key*2 + version in every column), on one stream while 40 finds run on another:
    every found row must be one whole version."""
    n = 1 << 14
    cache = GpuEmbeddingCache(4 * n, dim, DEVICE)
    keys = torch.arange(n, device=DEVICE, dtype=torch.int64) * 3
    versions = [(keys * 2 + p).to(torch.float32)[:, None].expand(n, dim) for p in (0, 1)]
    rep_keys = keys.repeat(16)
    rep_vecs = torch.cat([versions[r % 2] for r in range(16)]).contiguous()
    cache.insert_or_assign(keys, versions[0].contiguous())
    torch.cuda.synchronize()
    reader, writer = torch.cuda.Stream(), torch.cuda.Stream()
    results = []
    for _ in range(4):
        with torch.cuda.stream(writer):
            cache.assign(rep_keys, rep_vecs)
        with torch.cuda.stream(reader):
            for _ in range(40):
                results.append(cache.find(keys))
    torch.cuda.synchronize()
    torn = hits = 0
    for out, found in results:
        first = out[:, :1]
        whole = (out == first).all(dim=1)
        version = first[:, 0] - (keys * 2).to(torch.float32)
        good = whole & ((version == 0) | (version == 1))
        torn += int((found & ~good).sum())
        hits += int(found.sum())
    assert torn == 0
    assert hits > 0


def test_find_counted_matches_find_across_graph_replays():
    """Same answers as `find`, for several batches of one size (one captured graph replayed) and of a
    second size; results of an earlier call are not overwritten by later replays."""
    cache = GpuEmbeddingCache(512, DIM, DEVICE)
    keys = np.arange(300, dtype=np.int64) * 7
    cache.insert_or_assign(tkeys(keys), tvec(rows(keys)))
    rng = np.random.default_rng(3)
    earlier = []
    for n in (64, 64, 64, 40):
        query = np.concatenate([rng.choice(keys, n - 8), rng.integers(10**6, 10**7, 8)])
        out, found, num_found = cache.find_counted(tkeys(query))
        ref_out, ref_found = cache.find(tkeys(query))
        assert cache.find_counted(tkeys(query[:8]))[1] is None  # all hits: no mask
        assert num_found == int(ref_found.sum()) == n - 8
        assert torch.equal(found.cpu(), ref_found.cpu()) and torch.equal(out[found].cpu(), ref_out[ref_found].cpu())
        earlier.append((query, out, found))
    for query, out, found in earlier:
        np.testing.assert_array_equal(out[found].cpu().numpy(), rows(query[found.cpu().numpy()]))


@pytest.mark.parametrize("graphs", [False, True])
def test_counted_find_counts_misses_of_every_program_and_lends_its_miss_words_back_zeroed(graphs):
    """`find_counted` over batches of several programs (misses spread over them), from a misaligned view
    of the keys and into a caller's `out`: the count equals the mask's, and every miss word is back in
    the pool at zero afterwards (a word left non-zero would make a later all-hit call report misses)."""
    if graphs and INTERPRET:
        pytest.skip("CUDA graphs need CUDA")
    from hps.cache.gpu import MISS_SLOTS

    cache = GpuEmbeddingCache(4096, DIM, DEVICE)
    cache.use_graphs = graphs
    keys = np.arange(1500, dtype=np.int64) * 3
    cache.insert_or_assign(tkeys(keys), tvec(rows(keys)))
    rng = np.random.default_rng(5)
    for misses in (1, 37, 0, 150):
        query = np.concatenate([rng.choice(keys, 300), np.arange(10**7, 10**7 + misses)])
        rng.shuffle(query)
        padded = tkeys(np.concatenate([[0], query]))[1:]  # 8 bytes past an allocation: not 16-byte aligned
        out = torch.full((len(query), DIM), -1.0, device=DEVICE)
        vectors, found, num_found = cache.find_counted(padded, out)
        assert vectors is out and num_found == 300
        if misses:
            assert int(found.sum()) == 300
            np.testing.assert_array_equal(found.cpu().numpy(), query < 10**7)
        else:
            assert found is None
        hit = query < 10**7
        np.testing.assert_array_equal(out.cpu().numpy()[hit], rows(query[hit]))
        assert not out.cpu().numpy()[~hit].any()
        assert cache.find_counted(tkeys(query[hit][:64]))[1:] == (None, 64)  # all hits right after misses
    assert sorted(cache._free_slots) == list(range(MISS_SLOTS))
    assert not cache._misses[:MISS_SLOTS].any()


def test_counted_finds_from_several_threads_each_get_their_own_count():
    """Threads calling `find_counted` at once, each with its own number of misses: each call's count is
    its own (the miss words are lent one per call)."""
    import threading

    cache = GpuEmbeddingCache(2048, DIM, DEVICE)
    keys = np.arange(800, dtype=np.int64)
    cache.insert_or_assign(tkeys(keys), tvec(rows(keys)))
    errors: list[str] = []

    def caller(t: int) -> None:
        query = tkeys(np.concatenate([keys[:100], np.arange(10**6, 10**6 + 3 * t)]))
        for _ in range(4):
            _, _, num_found = cache.find_counted(query)
            if num_found != 100:
                errors.append(f"thread {t}: {num_found} found, expected 100")

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
