"""The Redis password never shows in repr / str of configs, in display dicts or in error messages."""

from __future__ import annotations

import json

import pytest

from hps.config import PsConfig, RedisClusterConfig, load_config, parse_config
from hps.errors import ConfigError

SECRET = "s3cr3t-Pa55"


def raw_config(**volatile):
    return {"volatile_db": {"type": "redis_cluster", "address": "10.0.0.1:7000", "user_name": "svc",
                            "password": SECRET, "enable_tls": True, "tls_client_key": "/etc/hps/client.key",
                            **volatile},
            "models": [{"model": "m", "sparse_files": ["/m/t0"], "embedding_vecsize_per_table": [4],
                        "maxnum_catfeature_query_per_table_per_sample": [2], "default_value_for_each_table": [0.0],
                        "deployed_device_list": [0]}]}


def test_repr_and_str_hide_the_password():
    cfg = parse_config(raw_config())
    for text in (repr(cfg), str(cfg), repr(cfg.volatile_db), str(cfg.volatile_db), f"{cfg}", f"{cfg.volatile_db!r}"):
        assert SECRET not in text
        assert "password='***'" in text
    # what is not secret still shows: the user, the address, TLS key *paths*
    assert "user_name='svc'" in repr(cfg.volatile_db) and "/etc/hps/client.key" in repr(cfg.volatile_db)
    assert cfg.volatile_db.password == SECRET  # the backend still gets it


def test_empty_password_shows_as_empty():
    assert "password=''" in repr(RedisClusterConfig())


def test_to_dict_keeps_the_password_for_ps_json_and_redacts_for_display():
    cfg = parse_config(raw_config())
    assert cfg.to_dict()["volatile_db"]["password"] == SECRET  # written into Triton repositories' ps.json
    assert parse_config(json.loads(json.dumps(cfg.to_dict()))) == cfg
    shown = cfg.to_dict(redact_secrets=True)
    assert shown["volatile_db"]["password"] == "***" and SECRET not in json.dumps(shown)
    assert shown["volatile_db"]["user_name"] == "svc"
    assert parse_config({**raw_config(password="")}).to_dict(redact_secrets=True)["volatile_db"]["password"] == ""


def test_error_messages_do_not_echo_a_password():
    with pytest.raises(ConfigError) as info:
        parse_config(raw_config(password=["hunter2-in-a-list"]))
    assert "volatile_db.password: expected a string" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_config_error_from_a_file_with_a_password_does_not_echo_it(tmp_path):
    path = tmp_path / "ps.json"
    raw = raw_config()
    raw["volatile_db"]["address"] = "host:abc"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "port 'abc'" in str(info.value) and SECRET not in str(info.value)


def test_psconfig_repr_has_no_other_secret_fields():
    # every field marked secret is hidden; today only the Redis password is one
    secret_fields = [(cls.__name__, f.name) for cls in (PsConfig, RedisClusterConfig)
                     for f in cls.__dataclass_fields__.values() if f.metadata.get("secret")]
    assert secret_fields == [("RedisClusterConfig", "password")]


def test_credentials_in_an_address_are_refused_without_echoing_them():
    with pytest.raises(ConfigError, match=r"volatile_db\.address: entry 2 holds '@'") as info:
        parse_config(raw_config(address=f"10.0.0.1:7000,svc:{SECRET}@10.0.0.2:7000"))
    assert SECRET not in str(info.value)
