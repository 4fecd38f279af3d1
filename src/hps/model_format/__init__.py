"""HugeCTR sparse model directories (`key`, `emb_vector`, optional `slot_id`)."""

from hps.model_format.convert import convert_file
from hps.model_format.from_torch import write_from_torch
from hps.model_format.reader import SparseModel
from hps.model_format.writer import write_from_numpy_table, write_sparse_model

__all__ = ["SparseModel", "convert_file", "write_from_numpy_table", "write_from_torch", "write_sparse_model"]
