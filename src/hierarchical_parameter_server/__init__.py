"""HugeCTR's TensorFlow plugin under its own module name: `import hierarchical_parameter_server as hps`
runs HugeCTR users' TensorFlow code unchanged on `hps.tensorflow` (reference §3.3).

    import hierarchical_parameter_server as hps
    hps.Init(global_batch_size=1024, ps_config_file="ps.json")
    layer = hps.LookupLayer(model_name="m", table_id=0, emb_vec_size=16, emb_vec_dtype=tf.float32)

Exports what HugeCTR's package exported (`Init`, `LookupLayer`, `SparseLookupLayer`, `__version__`,
here hps's version) plus hps's `Shutdown`. Importing it also lets SavedModels holding these layers
run in this process (see `hps.tensorflow`).
"""

from hps.tensorflow import Init, LookupLayer, Shutdown, SparseLookupLayer, __version__

__all__ = ["Init", "LookupLayer", "Shutdown", "SparseLookupLayer", "__version__"]
