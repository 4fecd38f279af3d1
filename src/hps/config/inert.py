"""ps.json keys that hps reads and checks but does not act on: the one table of them.

HugeCTR users keep their ps.json; some of its keys switch on HugeCTR features hps does not
have (a second cache implementation), and some size machinery hps
does not need (workspace pools). `hps.config.parse` validates every one of them like any other
key, then, for each entry here with `warn`, issues a `ConfigWarning` naming the key and saying
what hps does instead, but only when the value differs from HugeCTR's default (a default says
nothing the user needs to hear about). Entries without `warn` change nothing a user could
observe (HugeCTR's own HPS ignored them too, or hps's design has no such knob to size).

Keys are `<section>.<json key>` with the sections "" (top level), "models[]", "volatile_db",
"persistent_db" and "update_source"; documentation can be generated from `NOT_ACTED_ON`.
"""

from __future__ import annotations

from typing import NamedTuple


class InertKey(NamedTuple):
    """Why hps does not act on a key, and whether a non-default value earns a `ConfigWarning`."""

    reason: str
    warn: bool


NOT_ACTED_ON: dict[str, InertKey] = {
    "models[].use_hctr_cache_implementation": InertKey(
        "hps has one dynamic GPU cache implementation; the choice between HugeCTR's two does not apply", True),
    "models[].use_context_stream": InertKey(
        "GPU lookups always run on the caller's current stream (HugeCTR's `true`)", True),
    "models[].num_of_worker_buffer_in_pool": InertKey(
        "hps sizes lookup workspaces per call; there is no worker buffer pool to size", False),
    "models[].num_of_refresher_buffer_in_pool": InertKey(
        "hps sizes refresh workspaces per call; there is no refresher buffer pool to size", False),
    "models[].dense_file": InertKey("legacy dense-model key; HugeCTR's HPS ignored it too", False),
    "models[].network_file": InertKey("legacy dense-model key; HugeCTR's HPS ignored it too", False),
    "models[].maxnum_des_feature_per_sample": InertKey("legacy dense-model key; HugeCTR's HPS ignored it too",
                                                       False),
    "models[].label_dim": InertKey("legacy dense-model key; HugeCTR's HPS ignored it too", False),
    "models[].slot_num": InertKey("legacy dense-model key; HugeCTR's HPS ignored it too", False),
    "volatile_db.allocation_rate": InertKey(
        "the hps hash map grows its own arrays; there are no value pages to size", False),
    "volatile_db.shared_memory_size": InertKey(
        "only volatile_db.type multi_process_hash_map keeps its tables in shared memory", True),
    "volatile_db.shared_memory_name": InertKey(
        "only volatile_db.type multi_process_hash_map keeps its tables in shared memory", True),
    "volatile_db.shared_memory_auto_remove": InertKey(
        "only volatile_db.type multi_process_hash_map keeps its tables in shared memory", True),
    "volatile_db.initial_cache_rate": InertKey(
        "every row is loaded at startup (as HugeCTR 24.x's code does, whatever its docs say); "
        "overflow_margin bounds the size", True),
    "volatile_db.refresh_time_after_fetch": InertKey(
        "legacy (before HugeCTR 23.02); under evict_least_used / evict_oldest every read updates the "
        "access metadata, as in HugeCTR 24.x", False),
}
