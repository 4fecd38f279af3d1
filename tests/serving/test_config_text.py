"""config.pbtxt writing and the rewrite of HugeCTR `backend: "hps"` configs."""

from hps.serving.triton import config_text

HUGECTR_CONFIG = '''name: "hps_embedding"
backend: "hps"   # HugeCTR's HPS backend
max_batch_size:0
input [
  {
    name: "KEYS"
    data_type: TYPE_INT64
    dims: [-1,-1]
  },
  {
    name: "NUMKEYS"
    data_type: TYPE_INT32
    dims: [-1,-1]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [-1]
  }
]
version_policy: {
        specific:{versions: 1}
},
instance_group [
  {
    count: 1
    kind : KIND_GPU
    gpus:[0]
  }
]
parameters [
  {
    key: "refresh_interval"
    value: { string_value: "0" }
  }
]
parameters { key: "ps_json" value: { string_value: "old.json" } }
'''


def test_top_level_fields_ignore_nested_names():
    assert config_text.top_level_field(HUGECTR_CONFIG, "backend") == "hps"
    assert config_text.top_level_field(HUGECTR_CONFIG, "name") == "hps_embedding"
    assert config_text.top_level_field(HUGECTR_CONFIG, "platform") is None


def test_rewrite_keeps_io_and_replaces_backend_and_instances():
    text = config_text.rewrite_hps_config(HUGECTR_CONFIG, {"ps_json": "hps_embedding.json"})
    assert config_text.top_level_field(text, "backend") == "python"
    assert "KIND_GPU" not in text and "kind: KIND_CPU" in text
    assert 'dims: [-1,-1]' in text and 'name: "NUMKEYS"' in text and 'name: "OUTPUT0"' in text
    assert '"refresh_interval"' in text and "old.json" not in text
    assert text.count('"ps_json"') == 1 and "HugeCTR's HPS backend" not in text


def test_ensemble_config_is_the_seeds():
    text = config_text.ensemble_config("ensemble_model", "hps_embedding", "dense_model")
    for part in ('platform: "ensemble"', 'name: "EMB_KEY"', 'name: "EMB_N_KEY"', 'name: "DENSE_OUTPUT"',
                 'input_map { key: "KEYS" value: "EMB_KEY" }', 'output_map { key: "OUTPUT0" value: "LOOKUP_VECTORS" }',
                 'input_map { key: "input_1" value: "LOOKUP_VECTORS" }'):
        assert part in text
