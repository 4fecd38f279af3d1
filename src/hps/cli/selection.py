"""Which model and table of a ps.json a subcommand works on (`--model`, `--table`)."""

from __future__ import annotations

from hps.config.schema import ModelConfig, PsConfig, TableConfig
from hps.errors import UnknownModelError


def pick_model(config: PsConfig, name: str | None, where: str) -> ModelConfig:
    """The model named `name`, or the only one when `name` is None. Raises `UnknownModelError`
    naming the models and `--model` (`where`: the ps.json path, for the message)."""
    names = [m.name for m in config.models]
    if name is None:
        if len(config.models) == 1:
            return config.models[0]
        raise UnknownModelError(f"{where} has {len(names)} models ({', '.join(names)}): pick one with --model NAME")
    for model in config.models:
        if model.name == name:
            return model
    raise UnknownModelError(f"unknown model {name!r}: {where} has {', '.join(names)} (--model)")


def pick_table(model: ModelConfig, table: str, where: str) -> TableConfig:
    """Table `table` of `model`: its id (0, 1, ...) or its name (`embedding_table_names`). Raises
    `UnknownModelError` listing the tables."""
    for t in model.tables:
        if table == str(t.table_id) or table == t.name:
            return t
    listed = ", ".join(f"{t.table_id} ({t.name})" for t in model.tables)
    raise UnknownModelError(f"--table {table}: model {model.name!r} in {where} has tables {listed}")
