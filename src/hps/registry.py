"""Process-wide `HPS` instances, one per ps.json file: what `hps.torch` and `hps.tensorflow` share
(HugeCTR's plugins initialised their parameter server once per process with `call_once`).

The tables of a ps.json load on first use, once, thread-safe; `close_all` (also run at interpreter
exit) closes them, releasing e.g. the RocksDB lock for another process.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import TYPE_CHECKING, Any

from hps.config import PsConfig, load_config
from hps.errors import ConfigError

if TYPE_CHECKING:
    from hps.parameter_server import HPS

_lock = threading.Lock()
_servers: dict[str, "HPS"] = {}       # realpath of a ps.json -> its HPS
_configs: dict[str, PsConfig] = {}    # realpath of a ps.json -> its parsed config
_realpaths: dict[Any, str] = {}       # a spelling (relative ones with their working directory) -> its realpath


def real_path(ps_config_file: str | os.PathLike[str]) -> str:
    """The canonical key of a ps.json: its realpath (resolved once per spelling, and for a relative
    spelling once per working directory: the same "ps.json" names another file after a chdir)."""
    spelling = None
    if isinstance(ps_config_file, str):
        spelling = ps_config_file if os.path.isabs(ps_config_file) else (os.getcwd(), ps_config_file)
    real = _realpaths.get(spelling) if spelling is not None else None
    if real is None:
        if not isinstance(ps_config_file, (str, os.PathLike)) or not str(ps_config_file):
            raise ConfigError(f"ps_config_file must be a path to a ps.json, got {ps_config_file!r}")
        real = os.path.realpath(os.fspath(ps_config_file))
        if spelling is not None:
            _realpaths[spelling] = real
    return real


def shared_config(ps_config_file: str | os.PathLike[str]) -> PsConfig:
    """The parsed config of a ps.json, parsed once per process (no table is loaded)."""
    path = real_path(ps_config_file)
    config = _configs.get(path)
    if config is None:
        config = _configs.setdefault(path, load_config(path))
    return config


def shared_hps(ps_config_file: str | os.PathLike[str]) -> "HPS":
    """The process-wide HPS of a ps.json, created (tables loaded) on first use."""
    path = real_path(ps_config_file)
    server = _servers.get(path)
    if server is None:
        with _lock:
            server = _servers.get(path)
            if server is None:
                from hps.parameter_server import HPS

                server = _servers[path] = HPS(shared_config(path))
    return server


def is_loaded(ps_config_file: str | os.PathLike[str]) -> bool:
    """True when the HPS of this ps.json exists in this process."""
    return real_path(ps_config_file) in _servers


@atexit.register
def close_all() -> None:
    """Close every process-wide HPS (flushes and unlocks the persistent tiers)."""
    with _lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.close()
