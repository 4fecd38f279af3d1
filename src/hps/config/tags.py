"""Table tags: `hps_et.<model>.<table>` names a table in every tier (DB table, column family) and its
Kafka topic (reference/hugectr-hps.md §2.3)."""

from __future__ import annotations

TAG_PREFIX = "hps_et"


def make_tag(model_name: str, table_name: str) -> str:
    """The storage tag of a table: `hps_et.<model>.<table>` (DB table, column family, Kafka topic)."""
    return f"{TAG_PREFIX}.{model_name}.{table_name}"
