"""`hps publish --config ps.json` and `KafkaPublisher(ps_config=...)`: a table that is not in the
ps.json, or vectors of another dim, are refused before anything is sent (a typo used to create a
new topic that no server reads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hps.cli.main import main
from hps.errors import HpsError
from tests.kafka_fixture import free_port

pytest.importorskip("confluent_kafka")


@pytest.fixture()
def ps_json(tmp_path: Path) -> Path:
    cfg = {"supportlonglong": True,
           "models": [{"model": "m", "sparse_files": ["t0", "t1"], "embedding_table_names": ["users", "items"],
                       "embedding_vecsize_per_table": [4, 8], "maxnum_catfeature_query_per_table_per_sample": [1, 1],
                       "default_value_for_each_table": [0.0, 0.0], "deployed_device_list": [0]}]}
    path = tmp_path / "ps.json"
    path.write_text(json.dumps(cfg))
    return path


def _dead_broker() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens: a check that passed would then fail on the broker


def test_publisher_refuses_unknown_table_and_wrong_dim(ps_json: Path) -> None:
    from hps.update.publisher import KafkaPublisher

    pub = KafkaPublisher(_dead_broker(), ps_config=ps_json, connect_timeout_s=0.5)
    try:
        with pytest.raises(HpsError, match=r"table m\.user is not in .*ps\.json; known tables: m\.users, m\.items"):
            pub.publish("m", "user", np.arange(3), np.ones((3, 4), np.float32))
        with pytest.raises(HpsError, match=r"table x\.users is not in .*known tables: m\.users, m\.items"):
            pub.publish("x", "users", np.arange(3), np.ones((3, 4), np.float32))
        with pytest.raises(HpsError, match=r"publish m\.items: vectors have dim 4, but the table has dim 8"):
            pub.publish("m", "items", np.arange(3), np.ones((3, 4), np.float32))
        assert pub.table_dim("m", "items") == 8
        assert pub.messages_sent == 0
    finally:
        pub.abort()


def test_cli_publish_refuses_a_table_not_in_the_config(ps_json: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    np.save(tmp_path / "k.npy", np.arange(5, dtype=np.int64))
    np.save(tmp_path / "v.npy", np.ones((5, 4), np.float32))
    common = ["publish", "--brokers", _dead_broker(), "--model", "m", "--keys", str(tmp_path / "k.npy"),
              "--vectors", str(tmp_path / "v.npy"), "--config", str(ps_json), "--timeout", "0.5"]
    assert main([*common, "--table", "usres"]) == 2
    err = capsys.readouterr().err
    assert "table m.usres is not in" in err and "known tables: m.users, m.items" in err
    assert main([*common, "--table", "items"]) == 2
    assert "has dim 4, but the table has dim 8" in capsys.readouterr().err


def test_cli_publish_sparse_model_takes_the_dim_from_the_config(ps_json: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from hps.model_format import write_sparse_model

    write_sparse_model(tmp_path / "sm", np.arange(5, dtype=np.int64), np.ones((5, 8), np.float32))
    base = ["publish", "--brokers", _dead_broker(), "--model", "m", "--sparse-model", str(tmp_path / "sm"),
            "--config", str(ps_json), "--timeout", "0.5"]
    assert main([*base, "--table", "items", "--dim", "4"]) == 2
    assert "dim 4 given, but the table has dim 8" in capsys.readouterr().err
    # the dim comes from the config, the checks pass, and then the (dead) broker is what fails
    assert main([*base, "--table", "items"]) == 2
    assert "cannot reach Kafka broker" in capsys.readouterr().err
