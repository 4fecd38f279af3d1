"""Remote sparse files (fsspec URLs): read from a real S3-protocol server (moto's, on 127.0.0.1),
validated like local files before anything is read, streamed in chunks, never half-loaded, and
no credential in any error text or log record; `hdfs://` URLs kept whole by the config parser."""

from __future__ import annotations

import json
import os
import logging
import traceback

import numpy as np
import pytest

import hps
from hps.config import load_config
from hps.errors import HpsError, MissingDependencyError, ModelFormatError
from hps.model_format import SparseModel, write_sparse_model
from hps.model_format import remote as remote_module
from hps.model_format.remote import is_remote, redact, url_secrets
from tests.s3_fixture import ACCESS_KEY_ID, SECRET_ACCESS_KEY, free_port, moto_available, s3_environment, s3_server, upload_dir

ROWS, DIM = 5000, 8
BUCKET = "hps-models"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with the environment pointing s3fs at it, and one table uploaded twice
    (`s3://hps-models/t0`, and a copy to damage per test)."""
    if not moto_available():
        pytest.skip("moto[server] and s3fs are needed (pip install 'hierarchical-parameter-server[dev,remote]')")
    root = tmp_path_factory.mktemp("remote")
    rng = np.random.default_rng(7)
    keys = rng.choice(10**12, size=ROWS, replace=False).astype(np.int64)
    vectors = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    write_sparse_model(root / "t0", keys, vectors)
    with s3_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        for name, value in s3_environment(endpoint).items():
            mp.setenv(name, value)
        upload_dir(root / "t0", f"s3://{BUCKET}/t0")
        yield {"root": root, "keys": keys, "vectors": vectors, "endpoint": endpoint}


def _fs():
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True)


def _config(sparse_file: str, tmp_path, persistent: bool = True) -> dict:
    cfg = {"supportlonglong": True, "volatile_db": {"type": "hash_map", "num_partitions": 2},
           "models": [{"model": "m", "sparse_files": [sparse_file], "embedding_table_names": ["t0"],
                       "embedding_vecsize_per_table": [DIM], "maxnum_catfeature_query_per_table_per_sample": [4],
                       "default_value_for_each_table": [-1.0], "deployed_device_list": [0],
                       "max_batch_size": 1024, "hit_rate_threshold": 1.0, "gpucacheper": 0.5}]}
    if persistent:
        cfg["persistent_db"] = {"type": "rocks_db", "path": str(tmp_path / "rocksdb")}
    return cfg


def test_hps_serves_a_table_from_s3_exactly(s3, tmp_path):
    probe = np.concatenate([s3["keys"][::7], [-5, 3, 10**13]]).astype(np.int64)
    local_cfg = _config(str(s3["root"] / "t0"), tmp_path / "local")
    with hps.HPS(local_cfg, show_progress=False) as ps:
        want = ps.lookup(probe, "m", 0)
    assert np.array_equal(want[:-3], s3["vectors"][::7]) and (want[-3:] == -1.0).all()
    for _ in range(2):  # fresh RocksDB, then a restart that keeps it (the fingerprint is stable)
        with hps.HPS(_config(f"s3://{BUCKET}/t0", tmp_path), show_progress=False) as ps:
            np.testing.assert_array_equal(ps.lookup(probe, "m", 0), want)
    with hps.HPS(_config(f"s3://{BUCKET}/t0", tmp_path, persistent=False), show_progress=False) as ps:
        np.testing.assert_array_equal(ps.lookup(probe, "m", 0), want)


def test_streamed_chunks_keys_vectors_and_fingerprint(s3, monkeypatch):
    monkeypatch.setattr(remote_module, "READ_PART_BYTES", 8000)  # several concurrent parts per chunk
    model = SparseModel(f"s3://{BUCKET}/t0/", DIM)
    assert model.is_remote and model.path == f"s3://{BUCKET}/t0" and model.num_rows == ROWS
    assert repr(model) == f"SparseModel('s3://{BUCKET}/t0', dim={DIM}, num_rows={ROWS})"
    model.check_unique_keys()
    chunks = list(model.iter_chunks(777))
    assert [len(k) for k, _ in chunks] == [777] * 6 + [ROWS - 6 * 777]
    for keys, vectors in chunks:
        assert keys.dtype == np.int64 and vectors.dtype == np.float32 and vectors.shape[1] == DIM
        assert keys.flags.writeable and vectors.flags.writeable
    np.testing.assert_array_equal(np.concatenate([k for k, _ in chunks]), s3["keys"])
    np.testing.assert_array_equal(np.concatenate([v for _, v in chunks]), s3["vectors"])
    np.testing.assert_array_equal(model.keys, s3["keys"])
    np.testing.assert_array_equal(model.vectors, s3["vectors"])
    assert not model.keys.flags.writeable and not model.vectors.flags.writeable
    fingerprint = model.fingerprint()
    assert fingerprint == SparseModel(f"s3://{BUCKET}/t0", DIM).fingerprint()
    assert fingerprint["files"]["key"]["size"] == ROWS * 8
    assert fingerprint["files"]["emb_vector"]["path"] == f"s3://{BUCKET}/t0/emb_vector"
    assert fingerprint["files"]["emb_vector"]["ETag"]
    json.dumps(fingerprint)  # stored in RocksDB's load record


def _copy(s3, name: str) -> str:
    upload_dir(s3["root"] / "t0", f"s3://{BUCKET}/{name}")
    return f"s3://{BUCKET}/{name}"


def test_truncated_emb_vector_is_refused_before_reading(s3, tmp_path):
    url = _copy(s3, "truncated")
    fs = _fs()
    data = fs.cat_file(f"{BUCKET}/truncated/emb_vector")
    fs.pipe_file(f"{BUCKET}/truncated/emb_vector", data[:-4 * DIM])  # one row short
    with pytest.raises(ModelFormatError, match=f"{url}/emb_vector holds .* = {ROWS - 1} rows of dim {DIM}, "
                                               f"but {url}/key holds {ROWS} keys"):
        SparseModel(url, DIM)
    with pytest.raises(ModelFormatError, match="truncated/emb_vector"):
        hps.HPS(_config(url, tmp_path), show_progress=False)


def test_missing_objects(s3):
    with pytest.raises(ModelFormatError, match=f"sparse model directory s3://{BUCKET}/absent does not exist"):
        SparseModel(f"s3://{BUCKET}/absent", DIM)
    with pytest.raises(ModelFormatError, match="does not exist"):
        SparseModel("s3://no-such-bucket-hps/t0", DIM)
    url = _copy(s3, "nokey")
    _fs().rm_file(f"{BUCKET}/nokey/key")
    with pytest.raises(ModelFormatError, match=rf"sparse model file {url}/key is missing \(the directory holds "
                                               rf"\['emb_vector'\]\)"):
        SparseModel(url, DIM)


def test_duplicate_keys_are_found_in_a_remote_key_file(s3):
    url = _copy(s3, "dups")
    keys = s3["keys"].copy()
    keys[4000] = keys[10]
    _fs().pipe_file(f"{BUCKET}/dups/key", keys.tobytes())
    with pytest.raises(ModelFormatError, match=rf"{url}/key holds {ROWS} keys of which 1 appear more than once"
                                               rf".* at rows 10, 4000"):
        SparseModel(url, DIM).check_unique_keys()


def test_a_table_rewritten_while_it_is_read_is_not_loaded_whole(s3):
    url = _copy(s3, "rewritten")
    model = SparseModel(url, DIM)
    model.check_unique_keys()
    chunks = model.iter_chunks(1000)
    next(chunks)
    vectors = s3["vectors"].copy()
    vectors[-1] += 1.0  # same size, other content: only the ETag tells
    _fs().pipe_file(f"{BUCKET}/rewritten/emb_vector", vectors.tobytes())
    with pytest.raises(ModelFormatError, match=f"{url}/emb_vector changed .* while the table was being read"):
        list(chunks)
    with pytest.raises(ModelFormatError, match="changed"):  # opened before the rewrite: refused from the start
        next(model.iter_chunks(1000))


def test_hdfs_urls_are_kept_whole(tmp_path):
    url = "hdfs://namenode:8020/models/t0"
    (tmp_path / "ps.json").write_text(json.dumps(_config(url, tmp_path, persistent=False)))
    config = load_config(tmp_path / "ps.json")
    assert config.models[0].sparse_files == (url,)
    assert load_config(_config("s3://b/t0", tmp_path)).models[0].sparse_files == ("s3://b/t0",)
    assert load_config(_config("t0", tmp_path)).models[0].sparse_files[0].endswith("/t0")  # relative: joined
    (tmp_path / "odd.json").write_text(json.dumps(_config("dir/odd://name", tmp_path, persistent=False)))
    assert load_config(tmp_path / "odd.json").models[0].sparse_files == (os.path.join(tmp_path, "dir/odd://name"),)
    with pytest.raises((MissingDependencyError, ModelFormatError)) as info:
        hps.HPS(config, show_progress=False)
    text = str(info.value)
    assert url in text and "hdfs:/namenode" not in text, text
    if isinstance(info.value, MissingDependencyError):
        assert "pyarrow" in text


def test_unknown_scheme_and_file_urls(tmp_path, s3):
    with pytest.raises(ModelFormatError, match=r"s3://\*\*\*@b/t0: a s3:// URL takes no user, password or \?query"):
        SparseModel("s3://AKIDUSER:pa55word@b/t0", DIM)
    with pytest.raises(ModelFormatError, match=r"gs://b/t0\?\*\*\*: a gs:// URL takes no user"):
        SparseModel("gs://b/t0?token=pa55word", DIM)
    with pytest.raises(ModelFormatError, match="no fsspec filesystem knows the scheme nosuch://"):
        SparseModel("nosuch://x/t0", DIM)
    local = SparseModel(f"file://{s3['root'] / 't0'}", DIM)  # file:// is a local, memory-mapped table
    assert not local.is_remote and local.path == s3["root"] / "t0"
    np.testing.assert_array_equal(local.keys, s3["keys"])


def test_redaction():
    url = "s3://AKIDUSER:pa55word@bucket/t0?X-Amz-Signature=abcdef0123"
    assert redact(url) == "s3://***@bucket/t0?***"
    assert set(url_secrets(url)) == {"AKIDUSER:pa55word", "pa55word", "X-Amz-Signature=abcdef0123"}
    assert redact('Invalid bucket name "AKIDUSER:pa55word@bucket"', url_secrets(url)) == \
        'Invalid bucket name "***@bucket"'
    assert is_remote("hdfs://h/p") and is_remote("S3://b/t") and not is_remote("/a/b") and not is_remote("file:///a")
    assert not is_remote("c:/models/t0") and not is_remote("relative/t0")


def test_credentials_are_never_in_errors_or_logs(s3, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    texts = []
    bad = [f"s3://{BUCKET}/absent", f"s3://AKIDUSER:pa55word@{BUCKET}/t0", f"s3://{BUCKET}/t0?token=pa55word",
           "hdfs://AKIDUSER:pa55word@namenode/t0", f"http://AKIDUSER:pa55word@127.0.0.1:{free_port()}/t0"]
    for url in bad:
        with pytest.raises(HpsError) as info:
            hps.HPS(_config(url, tmp_path / str(len(texts)), persistent=False), show_progress=False)
        texts.append("".join(traceback.format_exception(info.value)))  # what a log's traceback shows
    with pytest.raises(ModelFormatError) as info:
        SparseModel(f"s3://{BUCKET}/t0", DIM + 1)
    texts.append(str(info.value))
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert any(name.startswith("botocore") for name, _, _ in records)  # the S3 client did log at DEBUG
    for name, level, message in records:
        assert SECRET_ACCESS_KEY not in message and "pa55word" not in message, (name, message)
        if name.startswith("hps") or level >= logging.INFO:  # botocore's DEBUG request dumps name the key id
            texts.append(message)
    for text in texts:
        for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY, "pa55word", "AKIDUSER"):
            assert secret not in text, text


def test_convert_from_and_to_s3(s3, tmp_path, capsys):
    from hps.cli.main import main
    from hps.model_format import convert_file

    fs = _fs()
    table = np.random.default_rng(3).standard_normal((300, 5)).astype(np.float32)
    keys = np.arange(300, dtype=np.int64) * 11
    np.save(tmp_path / "emb.npy", table)
    np.save(tmp_path / "keys.npy", keys)
    fs.put_file(str(tmp_path / "emb.npy"), f"{BUCKET}/in/emb.npy")
    fs.put_file(str(tmp_path / "keys.npy"), f"{BUCKET}/in/keys.npy")
    model = convert_file(f"s3://{BUCKET}/in/emb.npy", f"s3://{BUCKET}/conv/t", keys_path=f"s3://{BUCKET}/in/keys.npy")
    assert model.is_remote and model.num_rows == 300 and model.dim == 5
    assert sorted(fs.ls(f"{BUCKET}/conv/t", detail=False)) == [f"{BUCKET}/conv/t/emb_vector", f"{BUCKET}/conv/t/key"]
    np.testing.assert_array_equal(model.keys, keys)
    np.testing.assert_array_equal(model.vectors, table)
    with pytest.raises(ModelFormatError, match=rf"s3://{BUCKET}/conv/t already exists .* overwrite"):
        convert_file(tmp_path / "emb.npy", f"s3://{BUCKET}/conv/t")
    fs.pipe_file(f"{BUCKET}/conv/t/slot_id", b"x" * 8)  # a stale file of the old table goes
    assert main(["convert", f"s3://{BUCKET}/in/emb.npy", f"s3://{BUCKET}/conv/t", "--overwrite"]) == 0
    assert f"wrote s3://{BUCKET}/conv/t: 300 rows of dim 5" in capsys.readouterr().out
    assert sorted(fs.ls(f"{BUCKET}/conv/t", detail=False)) == [f"{BUCKET}/conv/t/emb_vector", f"{BUCKET}/conv/t/key"]
    np.testing.assert_array_equal(SparseModel(f"s3://{BUCKET}/conv/t", 5).keys, np.arange(300))
    local = convert_file(f"s3://{BUCKET}/in/emb.npy", tmp_path / "local_t")  # remote in, local out
    np.testing.assert_array_equal(local.vectors, table)
    with pytest.raises(ModelFormatError, match=rf"convert: input file s3://{BUCKET}/in/absent.npy does not exist"):
        convert_file(f"s3://{BUCKET}/in/absent.npy", tmp_path / "t2")
    fs.pipe_file(f"{BUCKET}/in/bad.npy", b"not an array")
    with pytest.raises(ModelFormatError, match=rf"cannot read embedding table s3://{BUCKET}/in/bad.npy as a .npy"):
        convert_file(f"s3://{BUCKET}/in/bad.npy", tmp_path / "t3")
    assert not (tmp_path / "t2").exists() and not (tmp_path / "t3").exists()


def test_a_changed_environment_opens_a_new_client(s3, monkeypatch):
    """Filesystems are shared while the AWS_* environment is the same; a new endpoint or key is used
    at once (not the client cached for the old one)."""
    assert SparseModel(f"s3://{BUCKET}/t0", DIM).num_rows == ROWS
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    with pytest.raises(ModelFormatError, match=f"cannot read sparse model file s3://{BUCKET}/t0/key: "):
        SparseModel(f"s3://{BUCKET}/t0", DIM)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint"])
    assert SparseModel(f"s3://{BUCKET}/t0", DIM).num_rows == ROWS


def test_a_rewrite_during_hps_load_fails_the_load_and_keeps_nothing(s3, tmp_path, monkeypatch):
    import hps.lookup.loading as loading

    url = _copy(s3, "midload")
    monkeypatch.setattr(loading, "LOAD_CHUNK_ROWS", 1000)  # 5 chunks: the rewrite lands mid-stream
    reads = []
    original = remote_module.RemoteFiles.read_files
    changed = s3["vectors"].copy()
    changed[:, 0] += 100.0

    def rewrite_on_third_read(self, ranges):
        reads.append(ranges)
        if len(reads) == 3:
            _fs().pipe_file(f"{BUCKET}/midload/emb_vector", changed.tobytes())
        return original(self, ranges)

    monkeypatch.setattr(remote_module.RemoteFiles, "read_files", rewrite_on_third_read)
    with pytest.raises(ModelFormatError, match=f"{url}/emb_vector changed"):
        hps.HPS(_config(url, tmp_path), show_progress=False)
    monkeypatch.setattr(remote_module.RemoteFiles, "read_files", original)
    probe = s3["keys"][::50]
    with hps.HPS(_config(url, tmp_path), show_progress=False) as ps:  # same RocksDB: the table is reloaded
        np.testing.assert_array_equal(ps.lookup(probe, "m", 0), changed[::50])


def test_https_style_basic_auth_is_sent_as_a_header_and_never_logged(s3, tmp_path, caplog):
    """An http(s) URL's `user:password@` becomes a basic-auth header (the URL is fetched without it):
    a local HTTP server that serves byte ranges only with that header serves the table."""
    import base64
    import http.server
    import threading

    root = s3["root"] / "t0"
    expected_auth = "Basic " + base64.b64encode(b"hpsuser:pa55word").decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _body(self):
            if self.headers.get("Authorization") != expected_auth:
                self.send_error(401)
                return None
            file = root / self.path.rsplit("/", 1)[-1]
            if not self.path.startswith("/t0/") or not file.is_file():
                self.send_error(404)
                return None
            return file.read_bytes()

        def do_HEAD(self):
            data = self._body()
            if data is not None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

        def do_GET(self):
            data = self._body()
            if data is None:
                return
            start, stop, status = 0, len(data), 200
            if self.headers.get("Range"):
                first, last = self.headers["Range"].split("=", 1)[1].split("-")
                start, stop, status = int(first), min(len(data), int(last) + 1 if last else len(data)), 206
            self.send_response(status)
            self.send_header("Content-Length", str(stop - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
            self.end_headers()
            self.wfile.write(data[start:stop])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    caplog.set_level(logging.DEBUG)
    try:
        port = server.server_address[1]
        model = SparseModel(f"http://hpsuser:pa55word@127.0.0.1:{port}/t0", DIM)
        assert model.where == f"http://***@127.0.0.1:{port}/t0" and model.num_rows == ROWS
        model.check_unique_keys()
        np.testing.assert_array_equal(np.concatenate([v for _, v in model.iter_chunks(2000)]), s3["vectors"])
        with pytest.raises(ModelFormatError) as info:
            SparseModel(f"http://hpsuser:wrongpass@127.0.0.1:{port}/t0", DIM)
        assert "wrongpass" not in str(info.value) and f"http://***@127.0.0.1:{port}/t0" in str(info.value)
    finally:
        server.shutdown()
        server.server_close()
    for record in caplog.records:
        assert "pa55word" not in record.getMessage() and "wrongpass" not in record.getMessage()
