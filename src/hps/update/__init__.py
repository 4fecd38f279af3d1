"""Online updates: HCTR Kafka messages → the volatile and persistent tiers (and the caches).

- `message`: the "HCTR" wire format (`encode_messages`, `decode_message`).
- `source`: `KafkaUpdateSource`, the at-least-once background consumer of one tier.
- `publisher`: `KafkaPublisher` for trainers, `publish_sparse_model` / `publish_npy` for `hps publish`.
- `start_update_sources(hps)`: what `HPS` calls when its ps.json has an `update_source`.

Consumer groups are HugeCTR's (reference §2.12): `hps.volatile` when the volatile tier is shared
(Redis Cluster: one group for every server), `hps.volatile.<hostname>` when it is per process
(hash map: every host consumes everything) or per host (multi_process_hash_map: the processes of a
host share the group, each applying its partitions to the one copy), and `hps.persistent.<hostname>`. The hostname is
`socket.gethostname()`, or the environment variable `HPS_HOSTNAME` when set: two hps processes
with hash maps on one host must set distinct `HPS_HOSTNAME`s, or they share one group and each sees
only part of the updates (HugeCTR had the same trap, with no way out).

An in-process volatile tier (hash map) is rebuilt from the sparse files at every start, so its source
reads each partition from its first offset the first time this process gets it, whatever the group
committed: every retained update is applied again over the files, and a restart reverts none.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

from hps.errors import UnknownModelError

from hps.update.message import decode_message, encode_messages
from hps.update.source import KafkaUpdateSource, select_topics

__all__ = ["KafkaUpdateSource", "decode_message", "encode_messages", "host_name", "persistent_group_id",
           "select_topics", "served_tags", "start_update_sources", "volatile_group_id"]

HOSTNAME_ENV = "HPS_HOSTNAME"


def host_name() -> str:
    """This host's name for consumer group ids: `$HPS_HOSTNAME`, else `socket.gethostname()`."""
    return os.environ.get(HOSTNAME_ENV) or socket.gethostname()


def volatile_group_id(is_shared: bool, hostname: str | None = None) -> str:
    """`hps.volatile` for a shared volatile tier (Redis), else `hps.volatile.<hostname>`."""
    return "hps.volatile" if is_shared else f"hps.volatile.{hostname or host_name()}"


def persistent_group_id(hostname: str | None = None) -> str:
    """`hps.persistent.<hostname>`."""
    return f"hps.persistent.{hostname or host_name()}"


def cache_group_id(hostname: str | None = None) -> str:
    """`hps.cache.<hostname>.<pid>`: this process's own group, so that every process sharing a
    Redis Cluster also updates its own caches (HugeCTR left them stale until a refresh)."""
    return f"hps.cache.{hostname or host_name()}.{os.getpid()}"


def served_tags(config: Any) -> list[str]:
    """Tags `hps_et.<model>.<table>` of every table of every model in a `PsConfig`."""
    return [t.tag for m in config.models for t in m.tables]


def _dim_lookup(hps: Any) -> Callable[[str], int | None] | None:
    """`dim_of(tag)` over `hps.table_by_tag` (None for a tag no served table has), or None when `hps`
    cannot say (then the sources check no dims before `apply`)."""
    table_by_tag = getattr(hps, "table_by_tag", None)
    if table_by_tag is None:
        return None

    def dim_of(tag: str) -> int | None:
        try:
            return int(table_by_tag(tag).dim)
        except UnknownModelError:
            return None

    return dim_of


def start_update_sources(hps: Any, config: Any = None, *, consumer_config: dict[str, Any] | None = None,
                         hostname: str | None = None) -> list[KafkaUpdateSource]:
    """Start the Kafka update sources of an `HPS`: one for the volatile tier, one for the persistent.

    `hps` needs attributes `config`, `volatile`, `persistent` (backends or None) and
    `apply_update(tag, keys: (n,) int64, vectors: (n, dim) float32, tier="volatile"|"persistent"|"cache")`.
    With a shared volatile tier, a third source in this process's own group assigns updates into
    its caches only (every server sharing the Redis Cluster sees every update).
    `config` defaults to `hps.config` (a `PsConfig`). A tier gets no source when it is not
    configured, its `update_filters` is empty, no served table passes the filters, or (persistent)
    it is `read_only`. A message whose vector size is not its table's dim, or whose table is not
    served (any more), is skipped and committed past (see `hps.update.source`); `apply_update`
    raising `BackendError` is retried, per table. Returns the started sources; close each with `.close()`.
    """
    config = config if config is not None else hps.config
    source_config = config.update_source
    if source_config is None:
        return []
    tags = served_tags(config)
    plans = []
    if hps.volatile is not None and config.volatile_db is not None:
        shared = bool(getattr(hps.volatile, "is_shared", False))
        # a tier shared by the processes of one host (multi_process_hash_map): one group per host
        across_hosts = shared and not getattr(hps.volatile, "host_local", False)
        # a tier rebuilt from the files at every start (in-process) replays the whole topic over them
        plans.append(("volatile", volatile_group_id(across_hosts, hostname), config.volatile_db.update_filters,
                      {"replay_from_start": not shared}))
        if shared:  # one server of the group writes Redis; every server must still update its caches
            plans.append(("cache", cache_group_id(hostname), config.volatile_db.update_filters, {}))
    if (hps.persistent is not None and config.persistent_db is not None
            and not getattr(config.persistent_db, "read_only", False)):
        plans.append(("persistent", persistent_group_id(hostname), config.persistent_db.update_filters, {}))
    sources: list[KafkaUpdateSource] = []
    dim_of = _dim_lookup(hps)
    try:
        for tier, group_id, filters, options in plans:
            if not filters or not select_topics(tags, filters):
                continue

            def apply(tag: str, keys: Any, vectors: Any, _tier: str = tier) -> None:
                hps.apply_update(tag, keys, vectors, tier=_tier)

            source = KafkaUpdateSource(source_config, group_id=group_id, update_filters=filters, tags=tags,
                                       apply=apply, key_dtype=config.key_dtype,
                                       consumer_config=consumer_config, name=f"{tier}:{group_id}", dims=dim_of,
                                       **options)
            sources.append(source.start())
    except BaseException:
        for s in sources:
            s.close()
        raise
    return sources
