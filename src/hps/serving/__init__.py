"""Serving front-ends for hps.

`hps.serving.triton`: Triton Inference Server deployment (model repository writer, the
python-backend models that run `hps.HPS` and the dense model, the server launcher, metrics).
Nothing heavy is imported here; each submodule loads its own dependencies.
"""
