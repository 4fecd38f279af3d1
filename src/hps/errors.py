"""The one exception tree of hps: every error the package raises derives from `HpsError`.

Misses are data (a found mask, then the default value); failures are exceptions.
"""

from __future__ import annotations

from typing import Any


class HpsError(Exception):
    """Root of every error raised by hps."""


class ConfigError(HpsError):
    """A ps.json (or dict / config object) is invalid; the message names the JSON path and value."""


class ModelFormatError(HpsError):
    """A sparse model directory is unreadable or inconsistent; the message names the file and counts."""


class KeyInputError(HpsError):
    """Keys passed to a lookup or update are unusable (dtype, rank, count, range)."""


class UnknownModelError(HpsError):
    """A model name or table id that this HPS does not serve."""


class ClosedError(HpsError):
    """An operation on an HPS, backend or cache that has been closed."""


class BackendError(HpsError):
    """A storage tier (hash map, Redis, RocksDB) failed to answer or to accept a batch."""


class PartialBackendError(BackendError):
    """A tier answered part of a `find` batch: some keys could not be asked (their node is down).

    `vectors: (n, dim) float32` and `found: (n,) bool` hold what the reachable nodes answered;
    `unavailable: (n,) bool` marks the keys that were not asked (neither found nor known to be
    absent; `found` is False there); `nodes` names the nodes that failed. The message names
    the nodes, the table and the number of keys."""

    def __init__(self, message: str, vectors: Any, found: Any, unavailable: Any,
                 nodes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.vectors = vectors
        self.found = found
        self.unavailable = unavailable
        self.nodes = tuple(nodes)


class UpdateError(HpsError):
    """An online update (Kafka message, publisher call) could not be decoded or applied."""


class MissingDependencyError(HpsError):
    """An optional dependency is not installed; the message names the extra to install."""


#: The name hps is published under on PyPI (`hps` there is someone else's package); imported as `hps`.
DISTRIBUTION = "hierarchical-parameter-server"


def pip_install_hint(extra: str) -> str:
    """The pip command that installs `extra`: "pip install 'hierarchical-parameter-server[triton]'"."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(module: str, extra: str):
    """Import an optional heavy dependency or raise `MissingDependencyError` naming the extra.

    `require("torch", "torch")` returns the module, or tells the user to
    `pip install 'hierarchical-parameter-server[torch]'`.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{module} is not installed; install it with: {pip_install_hint(extra)}"
        ) from exc
