"""Compiled reader side of the shared-memory hash map (`hps.storage.shared_hash_map`).

The table layout and the probe / copy code are the in-process hash map's
(`hps.storage.hash_map_kernels`): `seq_find` only wraps `find_rows` in a per-table seqlock, so
that a reader in one process never returns a row that a writer in another process is rewriting.

The seqlock is one int64 word of the table's header segment (`header[seq_index]`): a writer makes
it odd before it touches the slots or the value slab and even again after (holding the
cross-process writer lock, so there is one writer at a time). A reader reads the word (waits while
it is odd), probes and copies a chunk of keys, reads the word again, and redoes the chunk when the
word changed. The loads of the word are atomic acquire loads with fences around the chunk, so
neither the compiler nor the CPU moves the chunk's reads outside the two loads.

A chunk also stops when the header's generation word is not the one the caller mapped (the writer
moved the table to a bigger segment): the caller maps the new segment and goes on from there.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from hps.storage import hash_map_kernels as K

#: `seq_find` status codes (third element of its result).
DONE, GENERATION_CHANGED, WRITER_BUSY = 0, 1, 2


@intrinsic
def _load_acquire(typingctx, arr, idx):
    """`arr[idx]` (1-D int64 array) read with an atomic acquire load."""
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def _fence(typingctx):
    """A sequentially consistent memory fence (also a compiler barrier)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def seq_find(header, seq_index, gen_index, generation, slots, num_slots, values, keys, out, found,
             start, chunk, block, max_spins):
    """Look up `keys[start:]: (n,) int64` into `out: (n, dim) float32` and `found: (n,) bool`, one
    seqlock-checked chunk of `chunk` keys at a time (misses are zero rows, no access metadata written).

    `header: (m,) int64` is the table's header segment; `header[seq_index]` its seqlock word and
    `header[gen_index]` the generation the caller mapped as `slots` / `values` (`generation`).

    Returns `(num_found, stop, status)`: keys found in `[start, stop)`, and `DONE` (stop == n),
    `GENERATION_CHANGED` (the table moved: map the new generation, go on from `stop`) or
    `WRITER_BUSY` (the seqlock stayed odd for `max_spins` polls: a long write, or a writer that
    died mid-write; the caller decides)."""
    n = keys.shape[0]
    num_found = 0
    s = start
    while s < n:
        e = min(n, s + chunk)
        spins = 0
        while True:
            before = _load_acquire(header, seq_index)
            if before & 1:
                spins += 1
                if spins >= max_spins:
                    return num_found, s, WRITER_BUSY
                continue
            if _load_acquire(header, gen_index) != generation:
                return num_found, s, GENERATION_CHANGED
            _fence()
            got = K.find_rows(slots, num_slots, values, keys[s:e], out[s:e], found[s:e], K.META_NONE, 0, block)
            _fence()
            if _load_acquire(header, seq_index) == before:
                break
        num_found += got
        s = e
    return num_found, s, DONE
