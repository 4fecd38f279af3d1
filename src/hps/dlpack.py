"""Views of DLPack tensors that leave the caller's capsule unconsumed (HugeCTR's `lookup_fromdlpack`).

HugeCTR read the `DLManagedTensor` behind a "dltensor" capsule and wrote through its data pointer,
leaving the capsule as it was. Its demos rely on that: they pass `torch.utils.dlpack.to_dlpack(out)`
(or `tf.experimental.dlpack.to_dlpack(out)`) and afterwards call `from_dlpack(out_capsule)` on the
same capsule to read the vectors. `torch.from_dlpack(capsule)` would consume the capsule (rename it
"used_dltensor"), and the caller's own `from_dlpack` then fails with "DLTensor capsules can be
consumed only once". So capsules are read here with ctypes, never renamed, and viewed in place:

- host memory (kDLCPU, kDLCUDAHost): a numpy array over the same bytes (torch CPU tensors too);
- CUDA memory (kDLCUDA, kDLCUDAManaged): a torch tensor over the same bytes, through
  `__cuda_array_interface__` (torch keeps the holder, and so the capsule, alive).

The view holds a reference to the capsule, so the producer's memory outlives the view; the producer's
deleter runs when the capsule itself is collected (or consumed by its owner), as the protocol says.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from hps.errors import KeyInputError, require

# DLPack constants (dlpack.h).
_CAPSULE, _CAPSULE_VERSIONED = b"dltensor", b"dltensor_versioned"
_USED = (b"used_dltensor", b"used_dltensor_versioned")
_FLAG_READ_ONLY = 1
_HOST_DEVICES = {1: "kDLCPU", 3: "kDLCUDAHost"}
_CUDA_DEVICES = {2: "kDLCUDA", 13: "kDLCUDAManaged"}
_DTYPE_CODES = {0: "i", 1: "u", 2: "f", 6: "b"}  # kDLInt, kDLUInt, kDLFloat, kDLBool
_DTYPE_NAMES = {0: "int", 1: "uint", 2: "float", 3: "opaque handle", 4: "bfloat", 5: "complex", 6: "bool"}


class _DLTensor(ctypes.Structure):
    """`DLTensor` with its `DLDevice` and `DLDataType` members flattened (one ctypes object per read);
    also the first member of a legacy `DLManagedTensor`."""

    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
                ("ndim", ctypes.c_int32), ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                ("lanes", ctypes.c_uint16), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensorVersioned(ctypes.Structure):
    """`DLManagedTensorVersioned` (DLPack >= 1.0, capsule name "dltensor_versioned")."""

    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p), ("flags", ctypes.c_uint64)]


_TENSOR_OFFSET_VERSIONED = ctypes.sizeof(_DLManagedTensorVersioned)  # dl_tensor follows the header
_DTYPES: dict[tuple[int, int, int], np.dtype] = {}  # (code, bits, lanes) → numpy dtype, filled on use


# Our own function objects (not `ctypes.pythonapi`'s shared ones, whose argtypes other code may set).
_api = ctypes.PyDLL(ctypes.pythonapi._name, handle=ctypes.pythonapi._handle)
_api.PyCapsule_GetName.argtypes = [ctypes.py_object]
_api.PyCapsule_GetName.restype = ctypes.c_char_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p


class _Holder:
    """Carries an array interface and keeps the capsule (and so the producer's memory) alive."""

    def __init__(self, capsule: Any, interface: dict, cuda: bool) -> None:
        self.capsule = capsule
        if cuda:
            self.__cuda_array_interface__ = interface
        else:
            self.__array_interface__ = interface


def is_capsule(x: Any) -> bool:
    """A PyCapsule (what `to_dlpack` functions and `__dlpack__()` return)."""
    return type(x).__name__ == "PyCapsule" and type(x).__module__ == "builtins"


def view(x: Any, name: str) -> Any:
    """A numpy array (host memory) or torch tensor (CUDA memory) over the DLPack tensor `x`, no copy.

    x: a DLPack capsule (left unconsumed), an object with `__dlpack__` (numpy, torch, TF, CuPy, JAX),
    a numpy array (returned as is) or a torch tensor (a numpy view when in host memory, else as is).
    `name` ("keys", "out") is named in errors. Raises `KeyInputError` for an already-consumed capsule,
    an unsupported dtype or device."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        if x.is_cpu:
            try:
                return x.detach().numpy()  # shares the tensor's memory
            except (TypeError, RuntimeError):  # bfloat16, sparse, conjugate views: left to the caller's checks
                pass
        return x
    if not is_capsule(x):
        if not hasattr(x, "__dlpack__"):
            raise KeyInputError(f"{name}: expected a DLPack capsule or an object with __dlpack__ "
                                f"(numpy, torch, TensorFlow...), got {type(x).__name__}")
        try:
            x = x.__dlpack__()
        except Exception as exc:  # noqa: BLE001 - the producer's own error, reported with the argument
            raise KeyInputError(f"{name}: {type(x).__name__}.__dlpack__() failed: {exc}") from exc
    return _capsule_view(x, name)


def _capsule_view(capsule: Any, name: str) -> Any:
    cname = _api.PyCapsule_GetName(capsule)
    if cname in _USED:
        raise KeyInputError(f"{name}: this DLPack capsule was already consumed (from_dlpack was called on it); "
                            "pass a fresh one from to_dlpack")
    if cname not in (_CAPSULE, _CAPSULE_VERSIONED):
        raise KeyInputError(f"{name}: not a DLPack capsule (capsule name {cname!r})")
    address = _api.PyCapsule_GetPointer(capsule, cname)
    read_only = False
    if cname == _CAPSULE_VERSIONED:
        managed = _DLManagedTensorVersioned.from_address(address)
        if managed.major != 1:
            raise KeyInputError(f"{name}: DLPack version {managed.major}.{managed.minor} is not supported (1.x is)")
        read_only = bool(managed.flags & _FLAG_READ_ONLY)
        address += _TENSOR_OFFSET_VERSIONED
    tensor = _DLTensor.from_address(address)
    dtype = _DTYPES.get((tensor.code, tensor.bits, tensor.lanes)) or _numpy_dtype(tensor, name)
    ndim, shape_p, strides_p = tensor.ndim, tensor.shape, tensor.strides
    shape = tuple(shape_p[:ndim])
    strides = tuple([s * dtype.itemsize for s in strides_p[:ndim]]) if strides_p else None
    device_type, device_id = tensor.device_type, tensor.device_id
    if device_type not in _HOST_DEVICES and device_type not in _CUDA_DEVICES:
        raise KeyInputError(f"{name}: DLPack device type {device_type} is not supported "
                            "(host memory and CUDA memory are)")
    cuda = device_type in _CUDA_DEVICES
    if 0 in shape and not cuda:
        return np.empty(shape, dtype)  # no bytes to view (the data pointer may be NULL)
    interface = {"shape": shape, "typestr": dtype.str, "version": 3 if not cuda else 2, "strides": strides,
                 "data": ((tensor.data or 0) + tensor.byte_offset, read_only)}
    holder = _Holder(capsule, interface, cuda)
    if not cuda:
        return np.asarray(holder)
    torch = require("torch", "torch")
    return torch.as_tensor(holder, device=torch.device("cuda", device_id))


def _numpy_dtype(tensor: _DLTensor, name: str) -> np.dtype:
    """The numpy dtype of a DLTensor's (code, bits, lanes), cached; `KeyInputError` if numpy has none."""
    code_, bits, lanes = tensor.code, tensor.bits, tensor.lanes
    code = _DTYPE_CODES.get(code_)
    if code is None or lanes != 1 or bits % 8 or (code == "b" and bits != 8):
        kind = _DTYPE_NAMES.get(code_, f"type code {code_}")
        raise KeyInputError(f"{name}: DLPack dtype {kind}{bits}{f'x{lanes}' if lanes != 1 else ''} is not supported")
    dtype = np.dtype(f"{code}{bits // 8}") if code != "b" else np.dtype(np.bool_)
    _DTYPES[(code_, bits, lanes)] = dtype
    return dtype
