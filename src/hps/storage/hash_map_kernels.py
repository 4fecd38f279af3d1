"""Compiled (numba) hot loops of the in-process hash map tier (`hps.storage.hash_map`).

One open-addressing table per embedding table, linear probing, backward-shift deletion
(no tombstones). The slot array is `slots: (2 * num_slots,) uint64`; slot `j` is two words:

- `slots[2j]`     the key (int64 bits),
- `slots[2j + 1]` `(meta << 32) | row`: `row` indexes the value slab (`EMPTY_ROW` = free slot),
  `meta` is the uint32 access metadata (LFU access count or LRU logical clock).

So key, row and metadata share one 16-byte slot (one cache line touched per probe). Value rows
live in a contiguous `(capacity_rows, dim) float32` slab; a freed row is chained into an
intrusive free list through its first float32 (read as int32), so holes cost no memory.

The home of a key is the group of 4 slots (one 64-byte line of the 64-byte-aligned slot array)
number `((mix >> 32) * (num_slots / 4)) >> 32`, with `mix = rrxmrrxmsx_0(key)`; a probe compares
a whole group at once. Its partition is `mix % num_partitions` (HugeCTR's), used only for the
per-partition overflow counts.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from hps.storage.partition import rrxmrrxmsx_0_scalar

EMPTY_ROW = np.uint64(0xFFFFFFFF)
EMPTY_WORD = np.uint64(0xFFFFFFFF)  # meta 0, row EMPTY_ROW
LOW32 = np.uint64(0xFFFFFFFF)
META_MAX = np.uint64(0xFFFFFFFF)
_ONE_META = np.uint64(1 << 32)
_S32 = np.uint64(32)

#: meta_mode values: what a find does to the slot metadata.
META_NONE, META_COUNT, META_CLOCK = 0, 1, 2

# state vector of a table: (4,) int64
ST_SIZE, ST_HWM, ST_FREE_HEAD, ST_FREE_COUNT = 0, 1, 2, 3

#: Slots per probe group (16-byte slots: one 64-byte line); `num_slots` is a multiple of it.
GROUP = 4
#: Keys per prefetch block (the cache misses in flight at once) for tables in DRAM.
BLOCK_DRAM = 32
#: `find_rows` block for tables that fit in the CPU caches: longer simple loops, 20-30 % faster there
#: (and 10-25 % slower than 32 on tables whose rows are DRAM misses).
BLOCK_CACHE_RESIDENT = 256


@intrinsic
def prefetch(typingctx, arr, idx):
    """Emit `llvm.prefetch` (read, high locality) for the address of `arr[idx]` (1-D array)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(inline="always")
def _home(h, num_slots):
    """First slot of the key's home group: groups of `GROUP` slots = one 64-byte cache line."""
    return np.int64(((h >> _S32) * np.uint64(num_slots // GROUP)) >> _S32) * GROUP


@numba.njit(inline="always")
def _probe(slots, num_slots, k, j):
    """Slot index holding key `k` (uint64) from home `j`, or -(first empty slot index) - 1.

    Linear probing, one group (cache line) per step: the group's keys and empties are compared
    into two bit masks without a branch per slot, then the first stop decides."""
    while True:
        hit_mask = 0
        empty_mask = 0
        for t in range(GROUP):
            empty = (slots[2 * (j + t) + 1] & LOW32) == EMPTY_ROW
            empty_mask |= np.int64(empty) << t
            hit_mask |= np.int64((slots[2 * (j + t)] == k) & (not empty)) << t
        stop = hit_mask | empty_mask
        if stop != 0:
            first = stop & -stop  # lowest set bit: 1, 2, 4 or 8
            t = (first >> 1) - (first >> 3)
            if hit_mask & first:
                return j + t
            return -(j + t) - 1
        j += GROUP
        if j == num_slots:
            j = 0


@numba.njit(inline="always")
def _find_slot(slots, num_slots, k, j):
    """Slot index holding key `k` (uint64) from home `j`, or -1 when absent.

    The home group is checked first with one short loop and early exits (most keys live there:
    it costs less than `_probe`'s masks); the rest of the probe is `_probe`'s."""
    for t in range(GROUP):
        w = slots[2 * (j + t) + 1]
        if (w & LOW32) == EMPTY_ROW:
            return -1
        if slots[2 * (j + t)] == k:
            return j + t
    found = _probe(slots, num_slots, k, j)
    return found if found >= 0 else -1


@numba.njit(inline="always")
def _prefetch_homes(slots, num_slots, keys, start, stop, homes):
    """Store the home slots of `keys[start:stop]` in `homes[:stop-start]` and prefetch them."""
    for i in range(start, stop):
        jh = _home(rrxmrrxmsx_0_scalar(np.uint64(keys[i])), num_slots)
        homes[i - start] = jh
        prefetch(slots, 2 * jh)


@numba.njit(cache=True, nogil=True)
def find_rows(slots, num_slots, values, keys, out, found, meta_mode, clock, block):
    """Gather `values` rows of `keys: (n,) int64` into `out: (n, dim) float32` and `found: (n,) bool`.

    Missing rows are zero-filled. `meta_mode` 1 increments the access count (saturating),
    2 stores `clock` (uint32) as last access. Keys go in blocks of `block`: first every home slot
    of the block is prefetched, then the block is probed (prefetching the value rows found), then
    its rows are copied, so up to a block's worth of cache misses are in flight at once.
    Returns the number of keys found."""
    n = keys.shape[0]
    dim = values.shape[1]
    flat = values.reshape(-1)
    homes = np.empty(block, np.int64)
    hits = np.empty(block, np.int64)
    clock_word = np.uint64(clock) << _S32
    num_found = 0
    for s in range(0, n, block):
        e = min(n, s + block)
        _prefetch_homes(slots, num_slots, keys, s, e, homes)
        for i in range(s, e):
            j = _find_slot(slots, num_slots, np.uint64(keys[i]), homes[i - s])
            hits[i - s] = j
            if j >= 0:
                prefetch(flat, np.int64(slots[2 * j + 1] & LOW32) * dim)
        for i in range(s, e):
            j = hits[i - s]
            if j < 0:
                found[i] = False
                for d in range(dim):
                    out[i, d] = 0.0
                continue
            found[i] = True
            num_found += 1
            w = slots[2 * j + 1]
            r = np.int64(w & LOW32)
            for d in range(dim):
                out[i, d] = values[r, d]
            if meta_mode == META_COUNT:
                if (w >> _S32) < META_MAX:
                    slots[2 * j + 1] = w + _ONE_META
            elif meta_mode == META_CLOCK:
                slots[2 * j + 1] = clock_word | (w & LOW32)
    return num_found


@numba.njit(cache=True, nogil=True)
def dense_rows(index, lo, slots, num_slots, keys, rows, found):
    """The value rows of `keys: (n,) int64` through a direct index, into `rows: (n,) int64` (-1:
    absent) and `found: (n,) bool`: key k in [lo, lo + len(index)) has its row at `index[k - lo]`
    (int32, -1: absent), one array read instead of a hash probe; other keys are probed in the slots.
    No access metadata is written. Returns the number of keys found.

    The rows are then copied by `numpy.take(..., mode="clip")`: faster than a compiled row loop
    (3,072 dim-16 keys from cache-resident rows: ~20 µs against ~30 µs)."""
    n = keys.shape[0]
    span = np.uint64(index.shape[0])
    num_found = 0
    for i in range(n):
        k = keys[i]
        offset = np.uint64(k) - np.uint64(lo)  # wraps for k < lo: out of range too
        if offset < span:
            r = np.int64(index[np.int64(offset)])
        else:
            j = _find_slot(slots, num_slots, np.uint64(k), _home(rrxmrrxmsx_0_scalar(np.uint64(k)), num_slots))
            r = np.int64(slots[2 * j + 1] & LOW32) if j >= 0 else -1
        rows[i] = r
        hit = r >= 0
        found[i] = hit
        num_found += hit
    return num_found


@numba.njit(cache=True, nogil=True)
def span_rows(lo, span, first_row, keys, rows, found):
    """`dense_rows` for a table whose rows are its keys in order: key k in [lo, lo + span) has its
    value row at `first_row + k - lo`, any other key is absent. No table memory is read. Returns
    the number of keys found."""
    n = keys.shape[0]
    num_found = 0
    for i in range(n):
        offset = np.uint64(keys[i]) - np.uint64(lo)  # wraps for k < lo: out of range too
        hit = offset < np.uint64(span)
        rows[i] = np.int64(offset) + first_row if hit else -1
        found[i] = hit
        num_found += hit
    return num_found


#: Rows `gather_rows` prefetches ahead of the one it copies (the cache misses in flight at once).
GATHER_AHEAD = 32


@numba.njit(cache=True, nogil=True)
def gather_rows(values, rows, out):
    """`out[i] = values[rows[i]]` for `rows: (n,) int64` into `out: (n, dim) float32`; a row < 0 gives zeros.

    Prefetches the row `GATHER_AHEAD` positions ahead: numpy's `take` copies one row at a time and
    waits for each miss (random rows of a table larger than the CPU caches: ~1.4x slower)."""
    n = rows.shape[0]
    dim = values.shape[1]
    flat = values.reshape(-1)
    for i in range(min(GATHER_AHEAD, n)):
        if rows[i] >= 0:
            prefetch(flat, rows[i] * dim)
    for i in range(n):
        if i + GATHER_AHEAD < n and rows[i + GATHER_AHEAD] >= 0:
            prefetch(flat, rows[i + GATHER_AHEAD] * dim)
        r = rows[i]
        if r >= 0:
            for d in range(dim):
                out[i, d] = values[r, d]
        else:
            for d in range(dim):
                out[i, d] = 0.0


@numba.njit(cache=True, nogil=True)
def count_absent(slots, num_slots, keys):
    """How many of `keys: (n,) int64` are not in the table (duplicates counted each time)."""
    n = keys.shape[0]
    homes = np.empty(BLOCK_DRAM, np.int64)
    absent = 0
    for s in range(0, n, BLOCK_DRAM):
        e = min(n, s + BLOCK_DRAM)
        _prefetch_homes(slots, num_slots, keys, s, e, homes)
        for i in range(s, e):
            if _probe(slots, num_slots, np.uint64(keys[i]), homes[i - s]) < 0:
                absent += 1
    return absent


@numba.njit(cache=True, nogil=True)
def insert_rows(slots, num_slots, values, values_i32, state, part_counts, keys, vectors, meta_mode, clock):
    """Upsert `keys: (n,) int64` → `vectors: (n, dim) float32`; later duplicates win.

    The caller guarantees room: enough free slab rows (`state`) and slots for every key.
    Inserted and assigned rows get meta 0 (LFU) or `clock` (LRU). Returns rows added."""
    n = keys.shape[0]
    dim = values.shape[1]
    num_partitions = np.uint64(part_counts.shape[0])
    meta_word = np.uint64(clock) << _S32 if meta_mode == META_CLOCK else np.uint64(0)
    homes = np.empty(BLOCK_DRAM, np.int64)
    added = 0
    for i in range(n):
        if i % BLOCK_DRAM == 0:  # the probes below only read hints: slots may move meanwhile
            _prefetch_homes(slots, num_slots, keys, i, min(n, i + BLOCK_DRAM), homes)
        k = np.uint64(keys[i])
        h = rrxmrrxmsx_0_scalar(k)
        j = _probe(slots, num_slots, k, _home(h, num_slots))
        if j >= 0:
            r = np.int64(slots[2 * j + 1] & LOW32)
        else:
            j = -j - 1
            if state[ST_FREE_HEAD] >= 0:
                r = state[ST_FREE_HEAD]
                state[ST_FREE_HEAD] = values_i32[r, 0]
                state[ST_FREE_COUNT] -= 1
            else:
                r = state[ST_HWM]
                state[ST_HWM] += 1
            slots[2 * j] = k
            part_counts[np.int64(h % num_partitions)] += 1
            state[ST_SIZE] += 1
            added += 1
        slots[2 * j + 1] = meta_word | np.uint64(r)
        for d in range(dim):
            values[r, d] = vectors[i, d]
    return added


@numba.njit(cache=True, nogil=True)
def erase_keys(slots, num_slots, values_i32, state, part_counts, keys):
    """Remove `keys: (n,) int64` (backward-shift deletion; freed rows join the free list).

    Returns how many keys were present."""
    num_partitions = np.uint64(part_counts.shape[0])
    erased = 0
    for i in range(keys.shape[0]):
        k = np.uint64(keys[i])
        h = rrxmrrxmsx_0_scalar(k)
        j = _probe(slots, num_slots, k, _home(h, num_slots))
        if j < 0:
            continue
        r = np.int64(slots[2 * j + 1] & LOW32)
        values_i32[r, 0] = np.int32(state[ST_FREE_HEAD])
        state[ST_FREE_HEAD] = r
        state[ST_FREE_COUNT] += 1
        state[ST_SIZE] -= 1
        part_counts[np.int64(h % num_partitions)] -= 1
        erased += 1
        hole = j
        m = j
        while True:
            m += 1
            if m == num_slots:
                m = 0
            w = slots[2 * m + 1]
            if (w & LOW32) == EMPTY_ROW:
                break
            home = _home(rrxmrrxmsx_0_scalar(slots[2 * m]), num_slots)
            # the entry at m may move back into the hole unless its home lies in (hole, m]
            if hole <= m:
                movable = home <= hole or home > m
            else:
                movable = home <= hole and home > m
            if movable:
                slots[2 * hole] = slots[2 * m]
                slots[2 * hole + 1] = w
                hole = m
        slots[2 * hole + 1] = EMPTY_WORD
    return erased


@numba.njit(cache=True, nogil=True)
def rehash(old_slots, old_num_slots, new_slots, new_num_slots):
    """Move every live slot of `old_slots` into the empty table `new_slots`."""
    for j in range(old_num_slots):
        w = old_slots[2 * j + 1]
        if (w & LOW32) == EMPTY_ROW:
            continue
        k = old_slots[2 * j]
        m = _home(rrxmrrxmsx_0_scalar(k), new_num_slots)
        while (new_slots[2 * m + 1] & LOW32) != EMPTY_ROW:
            m += 1
            if m == new_num_slots:
                m = 0
        new_slots[2 * m] = k
        new_slots[2 * m + 1] = w


@numba.njit(cache=True, nogil=True)
def live_entries(slots, num_slots, size):
    """Keys and value rows of all live slots, in slot order: `(keys: (size,) int64, rows: (size,) int64)`."""
    keys = np.empty(size, np.int64)
    rows = np.empty(size, np.int64)
    c = 0
    for j in range(num_slots):
        w = slots[2 * j + 1]
        if (w & LOW32) != EMPTY_ROW and c < size:
            keys[c] = np.int64(slots[2 * j])
            rows[c] = np.int64(w & LOW32)
            c += 1
    return keys[:c], rows[:c]


@numba.njit(cache=True, nogil=True)
def partition_members(slots, num_slots, num_partitions, wanted):
    """Live entries whose partition `p` has `wanted[p]` set.

    Returns `(keys: (m,) int64, metas: (m,) int64, parts: (m,) int64)`."""
    np_u = np.uint64(num_partitions)
    count = 0
    for j in range(num_slots):
        if (slots[2 * j + 1] & LOW32) != EMPTY_ROW:
            if wanted[np.int64(rrxmrrxmsx_0_scalar(slots[2 * j]) % np_u)]:
                count += 1
    keys = np.empty(count, np.int64)
    metas = np.empty(count, np.int64)
    parts = np.empty(count, np.int64)
    c = 0
    for j in range(num_slots):
        w = slots[2 * j + 1]
        if (w & LOW32) == EMPTY_ROW:
            continue
        p = np.int64(rrxmrrxmsx_0_scalar(slots[2 * j]) % np_u)
        if wanted[p]:
            keys[c] = np.int64(slots[2 * j])
            metas[c] = np.int64(w >> _S32)
            parts[c] = p
            c += 1
    return keys, metas, parts


@numba.njit(cache=True, nogil=True)
def halve_meta(slots, num_slots):
    """Halve every slot's metadata (keeps LRU order when the logical clock nears uint32 max)."""
    for j in range(num_slots):
        w = slots[2 * j + 1]
        if (w & LOW32) != EMPTY_ROW:
            slots[2 * j + 1] = (((w >> _S32) >> np.uint64(1)) << _S32) | (w & LOW32)


@numba.njit(cache=True, nogil=True)
def insert_keys_at(slots, num_slots, values, values_i32, state, part_counts, keys, first_row, meta_word):
    """Bulk load: key `keys[i]` gets slab row `first_row + i`, whose vector the caller has already
    written there (`first_row + n` ≤ the high-water row, set by the caller; room for n more slots).
    A key already present keeps its row, which gets the new vector (later duplicates win), and row
    `first_row + i` joins the free list. Homes are prefetched a block at a time. Returns rows added."""
    n = keys.shape[0]
    dim = values.shape[1]
    num_partitions = np.uint64(part_counts.shape[0])
    homes = np.empty(BLOCK_DRAM, np.int64)
    added = 0
    for s in range(0, n, BLOCK_DRAM):
        e = min(n, s + BLOCK_DRAM)
        _prefetch_homes(slots, num_slots, keys, s, e, homes)
        for i in range(s, e):
            k = np.uint64(keys[i])
            j = _probe(slots, num_slots, k, homes[i - s])
            r_new = first_row + i
            if j >= 0:
                r = np.int64(slots[2 * j + 1] & LOW32)
                for d in range(dim):
                    values[r, d] = values[r_new, d]
                slots[2 * j + 1] = meta_word | np.uint64(r)
                values_i32[r_new, 0] = np.int32(state[ST_FREE_HEAD])
                state[ST_FREE_HEAD] = r_new
                state[ST_FREE_COUNT] += 1
            else:
                j = -j - 1
                slots[2 * j] = k
                slots[2 * j + 1] = meta_word | np.uint64(r_new)
                part_counts[np.int64(rrxmrrxmsx_0_scalar(k) % num_partitions)] += 1
                state[ST_SIZE] += 1
                added += 1
    return added
