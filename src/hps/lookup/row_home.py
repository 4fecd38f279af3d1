"""Which tier holds a table's rows when the ps.json names none that does.

HugeCTR's own configs mostly omit `volatile_db` (its notebooks, the docs' samples, the Triton
samples) and its saved outputs still show exact lookups; a cache alone holds the whole table
only when it is static or uvm. So when no tier would hold the rows of a table that needs them,
hps keeps them in an in-process hash map and says so once in the log (DESIGN.md: a key that is
in the sparse files is always answered with its vector, whatever the config).
"""

from __future__ import annotations

import dataclasses
import logging

from hps.config.schema import HashMapConfig, ModelConfig, PsConfig

log = logging.getLogger(__name__)


def cache_holds_whole_table(model: ModelConfig) -> bool:
    """True when the model's caches hold every row and never evict (static and uvm caches)."""
    return model.gpucache and model.cache_type in ("static", "uvm")


def with_row_home(config: PsConfig) -> PsConfig:
    """`config`, with an in-process hash map holding the rows where no configured tier would.

    No tier holds the rows when there is no `persistent_db` and the `volatile_db` is absent, or is
    an in-process map told not to load (`initialize_after_startup: false`; a Redis Cluster or a
    multi_process_hash_map is shared, so it is taken to be filled by another process). Static and
    uvm caches need no tier."""
    needing = [m.name for m in config.models if not cache_holds_whole_table(m)]
    if not needing or config.persistent_db is not None:
        return config
    volatile = config.volatile_db
    if volatile is None:
        home, why = HashMapConfig(), "the ps.json has no volatile_db and no persistent_db"
    elif volatile.initialize_after_startup or volatile.type in ("redis_cluster", "multi_process_hash_map"):
        return config
    else:
        home = dataclasses.replace(volatile, initialize_after_startup=True)
        why = (f"volatile_db {volatile.type} is in-process with initialize_after_startup false, "
               f"and there is no persistent_db")
    log.warning("%s: the rows of model(s) %s are kept in an in-process hash map (volatile tier), so that "
                "cache misses are answered from the sparse files, not with default values", why,
                ", ".join(needing))
    return dataclasses.replace(config, volatile_db=home)
