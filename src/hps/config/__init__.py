"""ps.json (HugeCTR keys, aliases and defaults) → frozen, typed config objects."""

from hps.config.parse import ConfigWarning, load_config, parse_config
from hps.config.schema import (HashMapConfig, KafkaConfig, ModelConfig, PsConfig, RedisClusterConfig,
                               RocksDBConfig, TableConfig, VolatileDatabaseConfig)

__all__ = ["ConfigWarning", "HashMapConfig", "KafkaConfig", "ModelConfig", "PsConfig", "RedisClusterConfig",
           "RocksDBConfig", "TableConfig", "VolatileDatabaseConfig", "load_config", "parse_config"]
