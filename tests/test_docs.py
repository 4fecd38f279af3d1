"""The reference docs in docs/ against the code, so they cannot drift.

- docs/configuration.md: every field of every config dataclass (`hps.config.schema`) appears in its
  section with its JSON name, its aliases, its type and its default; every key documented exists;
  exactly the keys of `hps.config.inert.NOT_ACTED_ON` are marked "not acted on"; every `type` name
  the parser accepts is listed.
- docs/triton.md: the models' inputs and outputs match `hps.serving.triton.config_text`'s configs.
- docs/metrics.md: every metric `hps.serving.triton.metrics` defines is documented.
- docs/deployment.md and deploy/: the files it cites exist, the compose file parses (PyYAML).
- README.md links every page.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from hps.config import parse
from hps.config.inert import NOT_ACTED_ON
from hps.config.schema import HashMapConfig, KafkaConfig, ModelConfig, PsConfig, RedisClusterConfig, RocksDBConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: configuration.md section (## heading) → the dataclasses whose fields it documents, and the inert-table prefix.
SECTIONS = {
    "Top level": ((PsConfig,), ""),
    "models[]": ((ModelConfig,), "models[]"),
    "volatile_db": ((HashMapConfig, RedisClusterConfig), "volatile_db"),
    "persistent_db": ((RocksDBConfig,), "persistent_db"),
    "update_source": ((KafkaConfig,), "update_source"),
}
TYPE_NAMES = {"bool": "bool", "int": "int", "float": "float", "str": "string", "enum": "string",
              "list[int]": "list of int", "list[float]": "list of float", "list[str]": "list of string"}
#: Defaults that depend on the machine: how the doc writes them, and the value they stand for here.
MACHINE_DEFAULTS = {
    ("volatile_db", "num_partitions"): ("min(16, CPUs)", min(16, os.cpu_count() or 1)),
    ("persistent_db", "path"): ("<tempdir>/rocksdb", os.path.join(tempfile.gettempdir(), "rocksdb")),
}
#: Section objects and the parse-time `type` defaults (the dataclass default is the class's own type).
SPECIAL_DEFAULTS = {
    ("Top level", "volatile_db"): "absent", ("Top level", "persistent_db"): "absent",
    ("Top level", "update_source"): "absent", ("Top level", "models"): "required",
    ("volatile_db", "type"): '"disabled"', ("persistent_db", "type"): '"disabled"',
    ("update_source", "type"): '"null"',
}


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _rows(section_text: str) -> dict[str, dict]:
    """Table rows of a section: first cell's backticked names (key, then aliases) → cells."""
    rows: dict[str, dict] = {}
    for line in section_text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        assert len(cells) == 4, f"row of {names[0]} has {len(cells)} cells"
        assert names[0] not in rows, f"{names[0]} documented twice in one section"
        rows[names[0]] = {"aliases": set(names[1:]), "type": cells[1], "default": cells[2], "text": cells[3]}
    return rows


@pytest.fixture(scope="module")
def config_doc() -> dict[str, dict[str, dict]]:
    sections = _sections((DOCS / "configuration.md").read_text())
    assert set(SECTIONS) <= set(sections), f"configuration.md lacks sections {set(SECTIONS) - set(sections)}"
    return {name: _rows(sections[name]) for name in SECTIONS}


def _json_name(f) -> str:
    return f.metadata.get("json") or f.name


def _default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory()


def _documented_fields(section: str):
    classes, _ = SECTIONS[section]
    seen = {}
    for cls in classes:
        for f in fields(cls):
            if f.name != "base_dir":
                seen.setdefault(_json_name(f), f)
    return seen


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_config_key_is_documented_with_its_aliases_type_and_default(config_doc, section):
    rows = config_doc[section]
    for key, f in _documented_fields(section).items():
        assert key in rows, f"configuration.md § {section}: key {key!r} is not documented"
        row = rows[key]
        assert row["aliases"] == set(f.metadata.get("aliases") or ()), f"{section}.{key}: aliases differ"
        special = SPECIAL_DEFAULTS.get((section, key))
        if special is not None:
            assert row["default"].startswith(special) or f"`{special}`" in row["default"], \
                f"{section}.{key}: default {row['default']!r}, expected {special!r}"
            continue
        kind = f.metadata["kind"]
        assert row["type"] == TYPE_NAMES[kind], f"{section}.{key}: type {row['type']!r}, expected {TYPE_NAMES[kind]!r}"
        if f.metadata.get("required"):
            assert row["default"] == "required", f"{section}.{key} is required, doc says {row['default']!r}"
            continue
        written = re.fullmatch(r"`([^`]+)`", row["default"])
        assert written, f"{section}.{key}: default cell {row['default']!r} is not one `value`"
        default = _default(f)
        if (section, key) in MACHINE_DEFAULTS:
            text, value = MACHINE_DEFAULTS[(section, key)]
            assert written.group(1) == text and default == value, f"{section}.{key}: default differs"
            continue
        expected = list(default) if isinstance(default, tuple) else default
        assert json.loads(written.group(1)) == expected, \
            f"configuration.md § {section}: {key} default {written.group(1)} but the parser's is {expected!r}"
        assert type(json.loads(written.group(1))) is type(expected), f"{section}.{key}: written as another type"


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_documented_key_exists(config_doc, section):
    known = set(_documented_fields(section))
    for key in config_doc[section]:
        assert key in known, f"configuration.md § {section}: {key!r} is not a key the parser reads there"


def test_keys_not_acted_on_are_exactly_the_inert_table(config_doc):
    marked = {f"{prefix}.{key}" if prefix else key
              for section, (_, prefix) in SECTIONS.items()
              for key, row in config_doc[section].items() if "not acted on" in row["text"]}
    assert marked == set(NOT_ACTED_ON), (f"marked but not inert: {marked - set(NOT_ACTED_ON)}; "
                                         f"inert but not marked: {set(NOT_ACTED_ON) - marked}")


def test_every_accepted_type_name_is_listed():
    sections = _sections((DOCS / "configuration.md").read_text())
    for section, names in (("volatile_db", parse.VOLATILE_TYPES), ("persistent_db", parse.PERSISTENT_TYPES),
                           ("update_source", parse.UPDATE_SOURCE_TYPES)):
        for name in names:
            assert f"`{name}`" in sections[section], f"configuration.md § {section}: type name {name!r} missing"


def test_the_example_ps_json_parses(tmp_path):
    text = (DOCS / "configuration.md").read_text()
    example = re.search(r"```json\n(.*?)```", text, flags=re.S).group(1)
    config = parse.parse_config(json.loads(example), base_dir=str(tmp_path))
    assert config.models[0].name == "hps_embedding"


def test_readme_links_every_reference_page():
    readme = (ROOT / "README.md").read_text()
    for page in ("configuration.md", "triton.md", "metrics.md", "deployment.md"):
        assert f"(docs/{page})" in readme, f"README.md does not link docs/{page}"
        assert (DOCS / page).is_file(), f"docs/{page} is missing"


# --- docs/triton.md -------------------------------------------------------------------------------

def _declared_io(config_text: str) -> set[tuple[str, str, str, str]]:
    """(direction, name, data type, dims) of each tensor a config.pbtxt declares."""
    found = set()
    for direction in ("input", "output"):
        block = re.search(rf"^{direction} \[(.*?)\]\s*$", config_text, flags=re.M | re.S)
        for name, dtype, dims in re.findall(r'name: "(\w+)" data_type: TYPE_(\w+) dims: \[ ([-\d, ]+) \]',
                                            block.group(1)):
            found.add((direction, name, dtype, "[" + ", ".join(d.strip() for d in dims.split(",")) + "]"))
    return found


def _documented_io(text: str, heading: str) -> set[tuple[str, str, str, str]]:
    """(direction, name, data type, dims) rows of the I/O table that follows the line `heading`."""
    after = text[text.index(heading):]
    table = after[after.index("\n|"):].strip().split("\n\n")[0]
    rows = set()
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.add((cells[1], cells[2].strip("`"), cells[3], cells[4]))
    return rows


def test_triton_md_inputs_and_outputs_match_the_written_configs():
    from hps.serving.triton import config_text

    text = (DOCS / "triton.md").read_text()
    assert _documented_io(text, "`hps_embedding`:\n") == _declared_io(config_text.embedding_config("m", {}))
    ensemble = _declared_io(config_text.ensemble_config("ensemble_model", "m", "dense_model"))
    assert _documented_io(text, "`ensemble_model` (and the fused layout):\n") == ensemble
    assert _declared_io(config_text.fused_config("ensemble_model", {})) == ensemble
    assert _documented_io(text, "`dense_model` (python backend):\n") == \
        _declared_io(config_text.python_dense_config("dense_model", {}))


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.slow
@pytest.mark.triton
def test_triton_md_client_examples_run_against_the_demo_repository(tmp_path, capsys):
    """The HTTP and gRPC examples, verbatim but for the ports, against `hps demo`'s repository."""
    pytest.importorskip("tritonclient.http")
    pytest.importorskip("tritonclient.grpc")
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import urllib.request

    import numpy as np

    from hps.demo import run_demo
    from hps.errors import HpsError
    from hps.serving.triton import serve

    demo = tmp_path / "hps-demo"
    run_demo(demo, global_batch_size=1024, iter_num=2, num_requests=2, request_batch=16, with_triton=False,
             log=lambda line: None)
    try:
        server = serve(demo / "model_repository", http_port=0, grpc_port=0, metrics_port=0)
    except HpsError as exc:  # no tritonserver here
        pytest.skip(f"tritonserver cannot start: {exc}")
    with server:
        with urllib.request.urlopen(f"http://{server.url_http}/v2/health/ready", timeout=10) as answer:
            assert answer.status == 200
        blocks = [b for b in _python_blocks(DOCS / "triton.md") if "tritonclient" in b]  # the client examples
        assert len(blocks) == 2
        http = {}
        exec(blocks[0].replace("localhost:8000", server.url_http), http)  # noqa: S102 - our own docs
        assert http["predictions"].shape == (2, 1) and http["predictions"].dtype == np.float32
        grpc = {}
        exec(blocks[1].replace("localhost:8001", server.url_grpc), grpc)  # noqa: S102
        from hps.model_format import SparseModel

        table = np.asarray(SparseModel(demo / "naive_dnn_sparse.model", 16).vectors)
        np.testing.assert_array_equal(grpc["vectors"], table[[3, 10_007, 20_011, 7, 10_001, 29_999]])


# --- docs/metrics.md ------------------------------------------------------------------------------

def test_metrics_md_lists_every_triton_metric_with_its_type():
    from hps.serving.triton.metrics import FAMILIES

    text = (DOCS / "metrics.md").read_text()
    documented = dict(re.findall(r"^\| `(hps_\w+)` \| (\w+) \|", text, flags=re.M))
    assert documented == {name: kind for name, (kind, _) in FAMILIES.items()}


def test_metrics_md_lists_every_stats_key(tmp_path):
    import numpy as np

    import hps
    from hps.model_format import write_sparse_model
    from hps.update.source import SKIP_REASONS

    write_sparse_model(tmp_path / "t0", np.arange(10, dtype=np.int64), np.ones((10, 4), np.float32))
    config = {"volatile_db": {"type": "hash_map"},
              "models": [{"model": "m", "sparse_files": [str(tmp_path / "t0")], "embedding_vecsize_per_table": [4],
                          "maxnum_catfeature_query_per_table_per_sample": [2], "default_value_for_each_table": [0.0],
                          "deployed_device_list": [0], "gpucache": False}]}
    with hps.HPS(config, show_progress=False) as ps:
        ps.lookup(np.array([1, 2]), "m", 0)
        snapshot = ps.stats()["models"]["m"]["sparse_embedding0"]
    text = (DOCS / "metrics.md").read_text()
    stats_section = text[text.index("## In Python"):text.index("## Kafka")]
    documented = set(re.findall(r"^\| `(\w+)` \|", stats_section, flags=re.M))
    assert documented == set(snapshot), f"documented {documented ^ set(snapshot)} differ from stats()"
    assert set(snapshot["hits"]) == {"cache", "volatile", "persistent", "default"}
    for reason in SKIP_REASONS:
        assert f"`skipped_{reason}`" in text


# --- docs/deployment.md and deploy/ ---------------------------------------------------------------

DEPLOY = ROOT / "deploy"


def test_deployment_files_exist_and_the_ps_json_parses():
    text = (DOCS / "deployment.md").read_text()
    for cited in set(re.findall(r"`(deploy/[\w.]+)`", text)):
        assert (ROOT / cited).is_file(), f"deployment.md cites {cited}, which does not exist"
    config = parse.load_config(DEPLOY / "ps.json")
    assert config.volatile_db.type == "redis_cluster" and config.update_source is not None


def _hps_commands(shell: str) -> list[list[str]]:
    """The argument lists of each `hps ...` command in a shell line."""
    import shlex

    commands = []
    for part in re.split(r"&&|;", shell):
        words = shlex.split(part)
        if words and words[0] == "exec":
            words = words[1:]
        if words and words[0] == "hps":
            commands.append(words[1:])
    return commands


def test_compose_file_parses_and_runs_hps_commands_that_exist():
    yaml = pytest.importorskip("yaml")
    from hps.cli.main import _parser

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"hps", "redis-1", "redis-2", "redis-3", "redis-cluster-init", "kafka"} <= set(services)
    hps_service = services["hps"]
    assert hps_service["build"]["dockerfile"] == "deploy/Dockerfile"
    commands = _hps_commands(hps_service["command"][0])
    assert [c[:2] for c in commands] == [["triton", "build"], ["triton", "serve"]]
    for args in commands:
        parsed = _parser().parse_args(args)  # argparse exits on an unknown flag
        assert parsed.run is not None
    serve = _parser().parse_args(commands[1])
    assert serve.address == "0.0.0.0" and (serve.http_port, serve.grpc_port, serve.metrics_port) == (8000, 8001, 8002)
    assert "/v2/health/ready" in " ".join(hps_service["healthcheck"]["test"])
    # the addresses of deploy/ps.json are the compose services
    config = parse.load_config(DEPLOY / "ps.json")
    assert {host for host, _ in config.volatile_db.nodes} <= set(services)
    assert {host for host, _ in config.update_source.broker_nodes} <= set(services)


def test_dockerfile_installs_extras_that_exist_and_copies_files_that_exist():
    import tomllib

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    groups = re.findall(r'pip install "\.\[([\w,]+)\]"', dockerfile)
    assert groups, "the Dockerfile installs no extras"
    for group in groups:
        assert set(group.split(",")) <= extras
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M):
        for name in source.split():
            assert (ROOT / name).exists(), f"Dockerfile copies {name}, which is not in the repository"
    assert "/v2/health/ready" in dockerfile


# --- links ----------------------------------------------------------------------------------------

USER_PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted((ROOT / "examples").glob("*/README.md"))]


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_pages_cite_only_files_in_the_repository(page):
    """Relative markdown links resolve, and no page sends readers to notes outside the repository."""
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith("#") or target.startswith("mailto:"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
    assert "reference/hugectr-hps.md" not in text, f"{page.relative_to(ROOT)} cites reference/hugectr-hps.md"


def test_hps_commands_in_the_pages_code_blocks_parse():
    """Every `hps ...` line of a bash block in README.md and docs/ uses subcommands and flags that exist."""
    import shlex

    from hps.cli.main import _parser

    checked = 0
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                if not line.startswith("hps "):
                    continue
                words = shlex.split(line, comments=True)
                if words and words[0] == "hps":
                    try:
                        _parser().parse_args(words[1:])
                    except SystemExit:
                        pytest.fail(f"{page.relative_to(ROOT)}: `{line.strip()}` does not parse")
                    checked += 1
    assert checked >= 3
