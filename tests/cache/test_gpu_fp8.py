"""ps.json `fp8_quant`: static and uvm GPU tables stored as e4m3 rows with a float32 scale each.

HugeCTR (src/hps/quantize.cu, dequantize.cu) quantised a static table's vectors at load with a
per-vector scale amax / 448 and dequantised e4m3 × scale on lookup; its unit test bounded the
round trip against the fp32 input. Here the bound is the format's: 3 mantissa bits give at most
2^-4 relative error per element in e4m3's normal range and 2^-10 × scale below it (subnormals),
so never more than 2^-4 of the row's largest magnitude.

Runs the Triton kernels in the CPU interpreter without a GPU (TRITON_INTERPRET=1, set by
tests/conftest.py), on "cuda:0" with one.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
ON_GPU = torch.cuda.is_available() and not INTERPRET
if not INTERPRET and not ON_GPU:
    pytest.skip("needs CUDA, or TRITON_INTERPRET=1 for the CPU interpreter", allow_module_level=True)
DEVICE = "cuda:0" if ON_GPU else "cpu"

import hps  # noqa: E402
from hps.cache import fp8 as F8  # noqa: E402
from hps.cache.gpu import make_gpu_cache  # noqa: E402
from hps.cache.gpu_static import GpuStaticTable, GpuUvmTable  # noqa: E402
from hps.config import ConfigWarning, parse_config  # noqa: E402
from hps.config.inert import NOT_ACTED_ON  # noqa: E402
from hps.config.schema import ModelConfig  # noqa: E402
from hps.errors import ModelFormatError, UpdateError  # noqa: E402
from hps.model_format import write_sparse_model  # noqa: E402


def bound(x: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Largest |dequantised - x| per element of rows `x: (n, dim)` with per-row `scales: (n,)`: half an
    e4m3 step (2^-4 |x| in the normal range, 2^-10 scale among subnormals), float32 rounding of the
    division and the product (the 1 + 2^-20 factor), and float32's own smallest step."""
    x = np.abs(x.astype(np.float64))
    return np.maximum(x * 2.0**-4, scales.astype(np.float64)[:, None] * 2.0**-10) * (1 + 2.0**-20) + 2.0**-149


def check_within_bound(got: np.ndarray, want: np.ndarray) -> None:
    amax = np.abs(want).max(axis=1) if want.shape[1] else np.zeros(want.shape[0])
    scales = np.maximum(amax.astype(np.float64) / 448, 2.0**-126)
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert got.dtype == np.float32
    assert (err <= bound(want, scales)).all(), f"worst excess {np.max(err - bound(want, scales))}"
    # and so: within 2^-4 of each row's largest magnitude
    assert (err <= amax[:, None] * 2.0**-4 + 2.0**-136).all()


def rows_of_every_magnitude(n: int, dim: int, seed: int) -> np.ndarray:
    """Rows of normal floats scaled by 10^e for e from -44 (float32 subnormals) to +37, one zero row,
    one row of a single nonzero element, one of e4m3's exact values, one mixing 1e30 with 1e-30."""
    rng = np.random.default_rng(seed)
    exps = rng.integers(-44, 38, size=n)
    rows = (rng.standard_normal((n, dim)) * 10.0 ** exps[:, None]).astype(np.float32)
    rows[0] = 0
    if n > 3:
        rows[1] = 0
        rows[1, -1] = -3.5e-7
        rows[2] = np.resize(np.array([448, -0.015625, 0.001953125, 2.75], np.float32), dim)
        rows[3] = np.resize(np.array([1e30, -1e-30], np.float32), dim)
    return rows


# ---- the quantiser (torch, on the table's device) ----

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), dim=st.integers(1, 70), seed=st.integers(0, 2**31))
def test_round_trip_is_within_the_e4m3_bound(n, dim, seed):
    x = rows_of_every_magnitude(n, dim, seed)
    codes, scales = F8.quantize_rows(torch.from_numpy(x).to(DEVICE))
    assert codes.dtype == torch.uint8 and codes.shape == (n, dim) and scales.dtype == torch.float32
    assert not ((codes & 0x7F) == 0x7F).any()  # no NaN pattern is ever stored
    check_within_bound(F8.dequantize_rows(codes, scales).cpu().numpy(), x)


def test_scales_are_amax_over_448_and_zero_rows_stay_zero():
    x = np.array([[0, 0, 0], [1, -896, 2], [1e-40, 0, 0]], np.float32)
    codes, scales = F8.quantize_rows(torch.from_numpy(x))
    assert scales.tolist() == [2.0**-126, 2.0, 2.0**-126]
    assert codes[0].tolist() == [0, 0, 0] and codes[1, 1].item() == 0xFE  # -448 × 2
    np.testing.assert_array_equal(F8.dequantize_rows(codes, scales)[:2].numpy(), [[0, 0, 0], [1, -896, 2]])


# ---- the kernel's decoding ----

def test_kernel_decodes_every_e4m3_pattern_like_torch():
    patterns = np.array([b for b in range(256) if b & 0x7F != 0x7F], np.uint8)  # all but the two NaNs
    keys = np.arange(patterns.size, dtype=np.int64)
    table = GpuStaticTable(keys, np.zeros((patterns.size, 1), np.float32), DEVICE, fp8_quant=True)
    table._dev_rows.copy_(torch.from_numpy(patterns[:, None]))
    table._scales.fill_(1.0)
    out, found = table.find(torch.from_numpy(keys).to(DEVICE))
    want = torch.from_numpy(patterns).view(torch.float8_e4m3fn).to(torch.float32).numpy()
    assert found.all()
    np.testing.assert_array_equal(out.cpu().numpy()[:, 0], want)  # ±0, subnormals 2^-9.., 448
    table.close()


# ---- static and uvm tables ----

def _keys(n: int) -> np.ndarray:
    keys = np.arange(n, dtype=np.int64) * 7 - 50
    keys[0] = -(2**63)  # the empty marker is a valid key
    return keys


@pytest.mark.parametrize("kind", ["static", "pagelock", "uvm"])
@pytest.mark.parametrize("dim", [1, 16, 13])
def test_fp8_tables_find_every_row_within_the_bound(kind, dim):
    n = 150
    keys, vec = _keys(n), rows_of_every_magnitude(n, dim, seed=dim)
    if kind == "uvm":
        table = GpuUvmTable(keys, vec, 60, DEVICE, default_value=-2.5, fp8_quant=True)
    else:
        table = GpuStaticTable(keys, vec, DEVICE, pagelock=kind == "pagelock", default_value=-2.5, fp8_quant=True)
    query = np.concatenate([keys[::-1], [10**12]])
    out, found = table.find(torch.from_numpy(query).to(DEVICE))
    out, found = out.cpu().numpy(), found.cpu().numpy()
    assert found[:-1].all() and not found[-1] and (out[-1] == -2.5).all()
    check_within_bound(out[:-1], vec[::-1])
    assert table._dev_rows.dtype == torch.uint8 and table._host_rows.dtype == torch.uint8
    table.close()


def test_fp8_rows_take_dim_plus_4_bytes_instead_of_4_dim():
    n, dim = 400, 64
    keys, vec = _keys(n), rows_of_every_magnitude(n, dim, seed=1)
    fp32 = GpuStaticTable(keys, vec, DEVICE)
    fp8 = GpuStaticTable(keys, vec, DEVICE, fp8_quant=True)
    index = fp32.memory_bytes() - n * 4 * dim  # keys + linear-probing index: the same in both
    assert fp8.memory_bytes() - index == n * (dim + 4)
    uvm = GpuUvmTable(keys, vec, 100, DEVICE, fp8_quant=True)
    assert uvm.memory_bytes() - index == 100 * dim + 4 * n and uvm.host_bytes() == 300 * dim


def test_assign_requantises_and_refuses_nan_updates_whole():
    n, dim = 100, 8
    keys, vec = _keys(n), rows_of_every_magnitude(n, dim, seed=2)
    table = GpuUvmTable(keys, vec, 50, DEVICE, fp8_quant=True)
    upd_keys = torch.from_numpy(keys[[10, 70, 3]]).to(DEVICE)  # a device row, a host row, and one more
    new = torch.from_numpy(np.array([[1e-3] * dim, [-1e5] * dim, np.linspace(-7, 7, dim)], np.float32)).to(DEVICE)
    table.assign(torch.cat([upd_keys, torch.tensor([123456789], device=DEVICE)]),
                 torch.cat([new, torch.full((1, dim), float("nan"), device=DEVICE)]))  # absent key: ignored
    out, _ = table.find(upd_keys)
    check_within_bound(out.cpu().numpy(), new.cpu().numpy())
    before, _ = table.find(upd_keys)
    with pytest.raises(UpdateError, match=f"key {keys[70]}: it holds NaN or Inf"):
        table.assign(upd_keys, torch.where(torch.arange(3, device=DEVICE)[:, None] == 1, float("inf"), new))
    np.testing.assert_array_equal(table.find(upd_keys)[0].cpu().numpy(), before.cpu().numpy())


def _model(**kw) -> ModelConfig:
    base = dict(name="m", sparse_files=("t0",), embedding_vecsize_per_table=(4,),
                maxnum_catfeature_query_per_table_per_sample=(2,), deployed_device_list=(0,),
                embedding_table_names=("t0",), default_value_for_each_table=(0.0,), gpucacheper=0.5,
                fp8_quant=True)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_table_holding_nan_or_inf_is_refused_at_load(bad):
    keys, vec = _keys(50), np.ones((50, 4), np.float32)
    vec[37, 2] = bad
    model = _model(embedding_cache_type="static")
    with pytest.raises(ModelFormatError, match=rf"table hps_et\.m\.t0 \(t0\): .*key {keys[37]} \(row 37 of the "
                                               r"table\): it holds NaN or Inf"):
        make_gpu_cache(model, model.table(0), 50, 0, lambda: (keys, vec), device=DEVICE)
    fp32 = make_gpu_cache(_model(embedding_cache_type="static", fp8_quant=False), model.table(0), 50, 0,
                          lambda: (keys, vec), device=DEVICE)  # float32 tables serve what the file holds
    assert fp32.fp8_quant is False


def test_factory_quantises_static_and_uvm_only():
    keys, vec = _keys(50), rows_of_every_magnitude(50, 4, seed=3)
    for kind in ("static", "uvm"):
        model = _model(embedding_cache_type=kind)
        assert make_gpu_cache(model, model.table(0), 50, 0, lambda: (keys, vec), device=DEVICE).fp8_quant
    dynamic = _model(gpucacheper=1.0)
    whole = make_gpu_cache(dynamic, dynamic.table(0), 50, 0, device=DEVICE)
    assert whole.fp8_quant is False and whole._dev_rows.dtype == torch.float32


# ---- through HPS, the config and `hps inspect`'s sizing ----

ROWS, DIM = 300, 16


def _ps_json(tmp_path, **model) -> dict:
    entry = {"model": "m", "sparse_files": [str(tmp_path / "t0")], "embedding_vecsize_per_table": [DIM],
             "maxnum_catfeature_query_per_table_per_sample": [4], "default_value_for_each_table": [-2.0],
             "deployed_device_list": [0], "max_batch_size": 256, "embedding_cache_type": "static",
             "fp8_quant": True}
    entry.update(model)
    return {"supportlonglong": True, "volatile_db": {"type": "hash_map"}, "models": [entry]}


@pytest.fixture()
def sparse_table(tmp_path, monkeypatch):
    if not ON_GPU:
        monkeypatch.setenv("HPS_DEVICE", "interpret")  # the GPU cache's code on CPU tensors
    keys = np.arange(ROWS, dtype=np.int64) * 5
    vectors = rows_of_every_magnitude(ROWS, DIM, seed=4)
    write_sparse_model(tmp_path / "t0", keys, vectors)
    return tmp_path, keys, vectors


def test_hps_lookups_of_an_fp8_static_table_return_float32_within_the_bound(sparse_table):
    tmp_path, keys, vectors = sparse_table
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)  # fp8_quant on a static table: acted on, no warning
        ps = hps.HPS(_ps_json(tmp_path), show_progress=False)
    with ps:
        assert ps._models["m"].replicas[(0, 0)].cache.fp8_quant
        query = np.concatenate([keys[::-1], [1, 2]])  # 1 and 2 are in no tier: the default value
        out = ps.lookup(query, "m", 0)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (ROWS + 2, DIM)
        check_within_bound(out[:ROWS], vectors[::-1])
        assert not np.array_equal(out[:ROWS], vectors[::-1])  # stored as fp8, not float32
        assert (out[ROWS:] == -2.0).all()
        dev = ps.lookup(torch.from_numpy(query).to(DEVICE), "m", 0)
        np.testing.assert_array_equal(dev.cpu().numpy(), out)


def test_fp8_quant_is_acted_on_and_warns_where_it_does_not_apply(tmp_path):
    assert "models[].fp8_quant" not in NOT_ACTED_ON
    write_sparse_model(tmp_path / "t0", np.arange(4, dtype=np.int64), np.ones((4, DIM), np.float32))
    for kind in ("static", "uvm"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConfigWarning)
            parse_config(_ps_json(tmp_path, embedding_cache_type=kind))
    for model in ({"embedding_cache_type": "dynamic"}, {"gpucache": False}):
        with pytest.warns(ConfigWarning, match=r"models\[0\]\.fp8_quant: applies to static tables only .*"
                                               r"vectors stay float32"):
            parse_config(_ps_json(tmp_path, **model))


def test_without_a_gpu_the_cpu_cache_stays_float32_and_says_so(monkeypatch, caplog):
    from hps.cache import factory

    monkeypatch.setattr(factory, "cuda_available", lambda: False)
    monkeypatch.delenv("HPS_DEVICE", raising=False)
    keys, vec = _keys(20), rows_of_every_magnitude(20, 4, seed=5)
    model = _model(embedding_cache_type="static")
    with caplog.at_level(logging.WARNING, logger="hps.cache.factory"):
        cache = factory.make_cache(model, model.table(0), 20, 0, lambda: iter([(keys, vec)]))
    assert "fp8_quant applies only to the GPU cache" in caplog.text
    out, found = cache.find(keys)
    assert found.all()
    np.testing.assert_array_equal(out, vec)


def test_inspect_sizing_counts_dim_plus_4_bytes_per_fp8_row(sparse_table):
    from hps.sizing import WHOLE_TABLE_INDEX_BYTES, estimate_memory

    tmp_path, _, _ = sparse_table
    fp8 = estimate_memory(parse_config(_ps_json(tmp_path)))[0]
    fp32 = estimate_memory(parse_config(_ps_json(tmp_path, fp8_quant=False)))[0]
    assert fp8.cache_bytes == ROWS * (DIM + 4 + WHOLE_TABLE_INDEX_BYTES)
    assert fp32.cache_bytes == ROWS * (4 * DIM + WHOLE_TABLE_INDEX_BYTES)
    with pytest.warns(ConfigWarning):
        dynamic = estimate_memory(parse_config(_ps_json(tmp_path, embedding_cache_type="dynamic")))[0]
    assert dynamic.cache_bytes > 0 and dynamic.cache_bytes % (4 * DIM + 16) == 0  # float32 slots
