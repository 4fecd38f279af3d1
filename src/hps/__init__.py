"""hps: a hierarchical parameter server for recommendation inference, HugeCTR HPS compatible.

    import hps
    with hps.HPS("ps.json") as ps:
        vectors = ps.lookup(keys, "my_model", table_id=0)   # (n,) int64 -> (n, dim) float32
"""

from hps.errors import HpsError

__version__ = "0.1.0"
__all__ = ["HPS", "HpsError", "__version__"]


def __getattr__(name: str):
    if name == "HPS":  # imported lazily so `import hps.config` stays light
        from hps.parameter_server import HPS

        return HPS
    raise AttributeError(f"module 'hps' has no attribute {name!r}")
