"""hps.torch.LookupLayer under TorchScript, as HugeCTR's users script it (hps_torch_demo.ipynb and
hps_torch/test/integration/test_hps_table_fusion.py): `torch.jit.script` of a model holding LookupLayers,
`torch.jit.fork` / `torch.jit.wait` over several tables, `torch.jit.save`, then `torch.jit.load` in another
process (Triton's PyTorch backend's role) that only imported `hps.torch`.

Every answer is compared exactly against the sparse files as written on disk (raw int64 keys, raw float32
rows), not against our own reader. Written without `from __future__ import annotations`: TorchScript
compiles the models below from their source.
"""

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hps_torch = pytest.importorskip("hps.torch")

from hps.model_format import write_sparse_model  # noqa: E402
from tests.compat.file_rows import rows_from_files  # noqa: E402

# torch 2.9+ marks TorchScript deprecated; HugeCTR's users still script, save and load with it
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

NUM_TABLES = 3
VOCAB_SIZE = 40          # table i holds keys i*VOCAB_SIZE .. (i+1)*VOCAB_SIZE-1 (HugeCTR's fusion layout)
EMB_VEC_SIZE = 8
NUM_QUERY_KEY = 5
MAX_BATCH_SIZE = 16
DEFAULT_VALUE = 0.25
MODEL_NAME = f"{NUM_TABLES}_table"


def write_tables(directory: Path, supportlonglong: bool) -> str:
    """NUM_TABLES sparse tables and their ps.json (hash_map, one model) under `directory`; the ps.json path."""
    rng = np.random.default_rng(13)
    files = []
    for i in range(NUM_TABLES):
        keys = np.arange(i * VOCAB_SIZE, (i + 1) * VOCAB_SIZE, dtype=np.int64)
        rng.shuffle(keys)  # file order is not key order
        files.append(str(directory / f"table{i}"))
        write_sparse_model(files[-1], keys, rng.standard_normal((VOCAB_SIZE, EMB_VEC_SIZE)).astype(np.float32))
    config = {
        "supportlonglong": supportlonglong,
        "volatile_db": {"type": "hash_map", "num_partitions": 2},
        "models": [{
            "model": MODEL_NAME, "sparse_files": files,
            "embedding_table_names": [f"table{i}" for i in range(NUM_TABLES)],
            "embedding_vecsize_per_table": [EMB_VEC_SIZE] * NUM_TABLES,
            "maxnum_catfeature_query_per_table_per_sample": [NUM_QUERY_KEY] * NUM_TABLES,
            "default_value_for_each_table": [DEFAULT_VALUE] * NUM_TABLES, "deployed_device_list": [0],
            "max_batch_size": MAX_BATCH_SIZE, "gpucache": True, "gpucacheper": 1.0, "hit_rate_threshold": 1.0,
            "num_of_worker_buffer_in_pool": NUM_TABLES,
        }],
    }
    path = directory / "ps.json"
    path.write_text(json.dumps(config))
    return str(path)


def from_files(ps_json: str, table_id: int, keys: np.ndarray) -> np.ndarray:
    """keys (B, N) → (B, N, EMB_VEC_SIZE) float32 from the table's own files; DEFAULT_VALUE for absent keys."""
    return rows_from_files(ps_json, table_id, keys, EMB_VEC_SIZE, DEFAULT_VALUE)


def key_batches(dtype: torch.dtype, seed: int, count: int) -> List[torch.Tensor]:
    """`count` stacked inputs (NUM_TABLES, B, NUM_QUERY_KEY), table i's keys in its own range plus a few
    that no table holds (they answer DEFAULT_VALUE); B varies."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for n in range(count):
        batch = 1 + (n * 5) % MAX_BATCH_SIZE
        per_table = [torch.randint(i * VOCAB_SIZE, (i + 1) * VOCAB_SIZE + 3, (batch, NUM_QUERY_KEY),
                                   generator=gen, dtype=dtype) for i in range(NUM_TABLES)]
        batches.append(torch.stack(per_table))
    return batches


class FusedModel(torch.nn.Module):
    """HugeCTR's table-fusion model: one LookupLayer per table, each forked, then waited and concatenated.
    keys_list (T, B, N) → (T*B, N, dim)."""

    def __init__(self, ps_config_file: str, model_name: str, emb_vec_size: List[int]):
        super().__init__()
        self.layers = torch.nn.ModuleList([
            hps_torch.LookupLayer(ps_config_file, model_name, table_id, emb_vec_size[table_id])
            for table_id in range(len(emb_vec_size))
        ])

    def forward(self, keys_list: torch.Tensor) -> torch.Tensor:
        vectors = []
        futures = torch.jit.annotate(List[torch.jit.Future[torch.Tensor]], [])
        for i, layer in enumerate(self.layers):
            futures.append(torch.jit.fork(layer, keys_list[i]))
        for i, _ in enumerate(self.layers):
            vectors.append(torch.jit.wait(futures[i]))
        return torch.cat(vectors)


class DenseModel(torch.nn.Module):
    """Two lookups (tables 0 and 2) → concat → Linear: keys (B, N), (B, N) → ((B, 1), (B, N, dim))."""

    def __init__(self, ps_config_file: str, model_name: str):
        super().__init__()
        self.first = hps_torch.LookupLayer(ps_config_file, model_name, 0, EMB_VEC_SIZE)
        self.third = hps_torch.LookupLayer(ps_config_file, model_name, 2, EMB_VEC_SIZE)
        self.fc = torch.nn.Linear(2 * NUM_QUERY_KEY * EMB_VEC_SIZE, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        third = self.third(b)
        return self.fc(torch.cat([self.first(a).flatten(1), third.flatten(1)], 1)), third


def expected_fused(ps_json: str, keys_list: torch.Tensor) -> np.ndarray:
    return np.concatenate([from_files(ps_json, i, keys_list[i].numpy()) for i in range(NUM_TABLES)])


@pytest.fixture(scope="module", params=[(True, torch.int64), (False, torch.int32)], ids=["int64", "int32"])
def tables(request, tmp_path_factory) -> Tuple[str, torch.dtype]:
    """(ps.json path, key dtype): supportlonglong=true takes int64 keys, false int32 (as in HugeCTR)."""
    supportlonglong, dtype = request.param
    return write_tables(tmp_path_factory.mktemp("ts_" + str(dtype).split(".")[-1]), supportlonglong), dtype


def test_scripted_layer_matches_eager_and_the_files(tables):
    ps_json, dtype = tables
    layer = hps_torch.LookupLayer(ps_json, MODEL_NAME, 1, EMB_VEC_SIZE)
    scripted = torch.jit.script(layer)
    for keys in key_batches(dtype, seed=1, count=4):
        out = scripted(keys[1])
        assert out.dtype == torch.float32 and out.shape == keys[1].shape + (EMB_VEC_SIZE,)
        np.testing.assert_array_equal(out.numpy(), from_files(ps_json, 1, keys[1].numpy()))
        np.testing.assert_array_equal(out.numpy(), layer(keys[1]).numpy())


def test_scripted_model_with_several_layers_matches_eager(tables):
    ps_json, dtype = tables
    model = DenseModel(ps_json, MODEL_NAME).eval()
    scripted = torch.jit.script(model)
    assert "ops.hps.lookup" in scripted.first.code
    for keys in key_batches(dtype, seed=2, count=3):
        out, third = scripted(keys[0], keys[2])
        eager_out, eager_third = model(keys[0], keys[2])
        np.testing.assert_array_equal(third.numpy(), from_files(ps_json, 2, keys[2].numpy()))
        np.testing.assert_array_equal(eager_third.numpy(), third.numpy())
        torch.testing.assert_close(out, eager_out, rtol=0, atol=0)


def test_fork_wait_table_fusion_is_exact(tables):
    """HugeCTR's fusion test: a scripted forward forks one lookup per table and waits for all of them."""
    ps_json, dtype = tables
    eager = FusedModel(ps_json, MODEL_NAME, [EMB_VEC_SIZE] * NUM_TABLES)
    model = torch.jit.script(eager)
    assert "fork" in model.code
    for keys_list in key_batches(dtype, seed=3, count=12):
        out = model(keys_list)
        assert out.shape == (NUM_TABLES * keys_list.shape[1], NUM_QUERY_KEY, EMB_VEC_SIZE)
        np.testing.assert_array_equal(out.numpy(), expected_fused(ps_json, keys_list))
        np.testing.assert_array_equal(eager(keys_list).numpy(), out.numpy())  # eager fork runs inline


def test_scripted_lookup_errors_name_the_problem(tables):
    ps_json, dtype = tables
    scripted = torch.jit.script(hps_torch.LookupLayer(ps_json, MODEL_NAME, 0, EMB_VEC_SIZE))
    wrong = torch.int32 if dtype == torch.int64 else torch.int64
    # TorchScript's interpreter turns every exception into a RuntimeError; the message keeps the HpsError's
    with pytest.raises(RuntimeError, match=r"KeyInputError: .* supportlonglong"):
        scripted(torch.zeros((2, 2), dtype=wrong))
    with pytest.raises(RuntimeError, match=r"KeyInputError: .*\(batch, keys per sample\)"):
        scripted(torch.zeros((4,), dtype=dtype))


# FusedModel, defined once above, saved by another process (its source is pasted in)
_SAVE = """
import json
import sys
from typing import List
import torch
import hps.torch as hps_torch

{fused_model}
model_name, dim, tables = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for ps_json, out in json.loads(sys.argv[4]):
    torch.jit.save(torch.jit.script(FusedModel(ps_json, model_name, [dim] * tables)), out)
"""

_LOAD = """
import json
import os
import sys
import numpy as np
import torch
import hps.torch  # registers the hps::lookup op; nothing else of hps is touched here

for saved, keys, out in json.loads(sys.argv[1]):
    np.save(out, torch.jit.load(saved)(torch.from_numpy(np.load(keys))).numpy())
# Not a plain exit: after a forked TorchScript call, torch's inter-op thread may still be dropping tensors
# that Python objects own; if the interpreter is finalizing by then, taking the GIL kills that thread inside
# a noexcept destructor and the process aborts ("terminate called without an active exception"). torch's
# own bug (pytorch/pytorch#190489): a scripted fork over nn.Embedding alone aborts the same way.
os._exit(0)
"""


def _python(tmp_path: Path, name: str, source: str, *args: str) -> None:
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    done = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"


def test_saved_model_runs_after_load_in_another_process(tmp_path):
    """Save in one process, load and run in another that only imported hps.torch (it creates the HPS from
    the ps.json path the op was given); int64 and int32 keys; exact against the sparse files."""
    cases = []
    for supportlonglong, dtype in ((True, torch.int64), (False, torch.int32)):
        name = str(dtype).split(".")[-1]
        (tmp_path / name).mkdir()
        ps_json = write_tables(tmp_path / name, supportlonglong)
        keys_list = key_batches(dtype, seed=4, count=3)[2]
        np.save(tmp_path / name / "keys.npy", keys_list.numpy())
        cases.append((ps_json, keys_list, tmp_path / name))
    # as in HugeCTR's notebook, the ps.json path given to the layers is relative to the saving process's
    # directory; the loading process runs in another one (as Triton does)
    _python(tmp_path, "save_model.py", _SAVE.replace("{fused_model}", inspect.getsource(FusedModel)), MODEL_NAME, str(EMB_VEC_SIZE), str(NUM_TABLES),
            json.dumps([[os.path.relpath(ps_json, tmp_path), str(d / "fused.pt")] for ps_json, _, d in cases]))
    (tmp_path / "elsewhere").mkdir()
    _python(tmp_path / "elsewhere", "load_model.py", _LOAD,
            json.dumps([[str(d / "fused.pt"), str(d / "keys.npy"), str(d / "out.npy")] for _, _, d in cases]))
    for ps_json, keys_list, d in cases:
        out = np.load(d / "out.npy")
        assert out.dtype == np.float32 and out.shape == (NUM_TABLES * keys_list.shape[1], NUM_QUERY_KEY, EMB_VEC_SIZE)
        np.testing.assert_array_equal(out, expected_fused(ps_json, keys_list))
        # and in this process too: the archive needs no Python class of the model
        np.testing.assert_array_equal(torch.jit.load(str(d / "fused.pt"))(keys_list).numpy(), out)
