"""Triton kernels of the GPU embedding cache (`hps.cache.gpu`) and static tables (`gpu_static`).

Dynamic cache layout (all device tensors; `NB` buckets, each one 8-byte-word line of `W` words):

- `keys`     `((NB + 1) * W,) int64`  bucket b is words [b*W, b*W + W): W - 1 slot keys, `EMPTY`
  (INT64_MIN) for a free slot, then the bucket's version word. Its low 32 bits (also addressed
  as int32 through `ver_ptr`, the same memory): bits 0-23 a seqlock counter (even = stable, odd = a
  writer holds the bucket), bits 24-31 LRU reference bits (way % 8) that finds set. Bucket NB holds
  the one user key equal to `EMPTY`, in way 0; `special[0]` (int64) says whether it is present.
- `scores`   `((NB + 1) * W,) int64`  per slot: LRU clock of the last insert / of the last writer visit
  that saw the slot referenced; or the LFU count.
- `rows`     `((NB + 1) * (W - 1), dim)` float32 or float16, row-major; slot s (= b*W + way) has row
  s - s // W.

A find reads the key, the bucket line (one 64 B probe for W = 8: 7 keys and the version together),
then the row, then the version and the slot key again (both in the line just read, so L2 hits): a
row is reported found only if the version was even and unchanged and the slot still holds the key,
so a lookup racing a writer sees the whole old row, the whole new row, or a miss. Writers set the
version's odd bit with an atomic OR (this is also the writers' lock: the lane whose OR found the bit
clear owns the bucket), write, fence, and release with an atomic add (odd -> even = old + 2).

Triton gives every thread that holds some columns of a row its own copy of the key's per-key values;
copies loaded at different moments can differ while a writer runs. So per-key decisions that the
column threads must share (the slot and version a find reads; the slot a writer writes) go through a
`scratch` record: written once, read back by all after a barrier.

Reader ordering uses no fences: the row and second reads bypass L1 (.cv / volatile, so L2, the
coherence point, answers them), the row reads are issued after the first version read has returned
(they wait on the barrier that follows the record written from it), and the second reads' addresses
depend on every column of the row. Writers use `fence.acq_rel.gpu` (inline PTX) around their
stores; on the CPU (`TRITON_INTERPRET=1`) the interpreter cannot run inline PTX, and `ASM=False`
drops the fences (it runs one program at a time, in program order).
"""

from __future__ import annotations

from hps.errors import require

triton = require("triton", "gpu")
tl = triton.language

#: The empty-slot marker; the user key with this value lives in the special slot.
EMPTY = -(2**63)

MODE_UPSERT = 0
MODE_ASSIGN = 1
MODE_ERASE = 2
_EMPTY = tl.constexpr(EMPTY)
_MODE_UPSERT = tl.constexpr(MODE_UPSERT)
_MODE_ASSIGN = tl.constexpr(MODE_ASSIGN)
_MODE_ERASE = tl.constexpr(MODE_ERASE)


@triton.jit
def _bucket_of(k, num_buckets):
    """int64 keys → bucket index in [0, num_buckets) (splitmix64-style mixer, multiply-shift range)."""
    x = k.to(tl.uint64, bitcast=True)
    x = (x ^ (x >> 30)) * 0x3F58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x14D049BB133111EB
    x = x ^ (x >> 31)
    return (((x >> 32) * num_buckets.to(tl.uint64)) >> 32).to(tl.int64)


@triton.jit
def _fence_pass(x, dep):
    """fence.acq_rel.gpu, returning `x` (int64); `dep` (int32) makes the fence wait for the loads
    that produced it, and users of the result are ordered after the fence."""
    return tl.inline_asm_elementwise("fence.acq_rel.gpu;\n\tmov.b64 $0, $1;", "=l,l,r", [x, dep],
                                     dtype=tl.int64, is_pure=False, pack=1)


@triton.jit(do_not_specialize=["n", "num_buckets"])
def bucket_kernel(k_ptr, out_ptr, n, num_buckets, BLOCK: tl.constexpr):
    """out[i] = bucket of k[i] (int64), the same function the cache and static kernels use."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    k = tl.load(k_ptr + offs, mask=m, other=0)
    tl.store(out_ptr + offs, _bucket_of(k, num_buckets), mask=m)


@triton.jit(do_not_specialize=["n", "num_buckets", "clock", "zero", "miss_slot"])
def find_kernel(q_ptr, n, keys_ptr, ver_ptr, scores_ptr, rows_ptr, special_ptr, out_ptr, found_ptr, scratch_ptr,
                num_buckets, clock, zero, miss_ptr, miss_slot,
                DIM: tl.constexpr, DIM_P2: tl.constexpr, W: tl.constexpr, BK: tl.constexpr,
                CHECK: tl.constexpr, TOUCH: tl.constexpr, LFU: tl.constexpr):
    """Probe `n` keys `q: (n,) int64`; write `out: (n, DIM) float32` and `found: (n,) int8`, and add
    the number of keys not found to the int64 word `miss_ptr[miss_slot]` (one atomic per program
    that has misses: an all-hit batch does no atomic at all; the caller zeroes the word).

    One bucket line per key (its W - 1 keys and its version word), BK keys per program.
    CHECK: seqlock validation (no torn rows). TOUCH: mark hits used (LRU bit, or LFU count + 1).
    `ver_ptr` is `keys_ptr` seen as int32 words."""
    offs = tl.program_id(0).to(tl.int64) * BK + tl.arange(0, BK)
    inb = offs < n
    k = tl.load(q_ptr + offs, mask=inb, other=0)
    is_sp = k == _EMPTY
    b = tl.where(is_sp, num_buckets, _bucket_of(k, num_buckets))
    ways = tl.arange(0, W)
    is_ver = ways == W - 1
    # evict_last: the second reads below come back to this line
    line = tl.load(keys_ptr + (b * W)[:, None] + ways[None, :], mask=inb[:, None], other=_EMPTY,
                   eviction_policy="evict_last")
    eq = (line == k[:, None]) & ~is_ver[None, :] & ~is_sp[:, None]
    hit = tl.max(eq.to(tl.int32), axis=1) > 0
    way = tl.argmax(eq.to(tl.int32), axis=1).to(tl.int64)
    slot = b * W + tl.where(is_sp, 0, way)
    sp = tl.load(special_ptr)
    hit = tl.where(is_sp, sp != 0, hit) & inb
    ok = hit
    if CHECK or TOUCH:
        v1 = tl.sum(tl.where(is_ver[None, :], line, 0), axis=1) & 0xFFFFFFFF
    if CHECK:
        # Triton spreads a row's columns over several threads, each holding its own copy of the key's
        # slot and version. One thread writes the key's (slot, version) record, all read it back, so
        # every thread loads columns of the same slot under the same version.
        rec = tl.where(hit, slot * 4294967296 + v1, -1)
        tl.store(scratch_ptr + offs, rec, mask=inb)
        tl.debug_barrier()
        rec = tl.load(scratch_ptr + offs, mask=inb, other=-1, volatile=True)
        hit = rec >= 0
        slot = tl.where(hit, rec >> 32, 0)
        v1 = rec & 0xFFFFFFFF
        ok = hit & ((v1 & 1) == 0)
    cols = tl.arange(0, DIM_P2)
    if DIM == DIM_P2:  # no column mask: lets the row load and the output store use 16-byte vectors
        row_mask = ok[:, None]
        out_mask = inb[:, None]
    else:
        row_mask = ok[:, None] & (cols < DIM)[None, :]
        out_mask = inb[:, None] & (cols < DIM)[None, :]
    row_of = slot - slot // W  # rows skip the version word of each bucket line
    row = tl.load(rows_ptr + (row_of * DIM)[:, None] + cols[None, :], mask=row_mask, other=0.0,
                  cache_modifier=".cv")
    row = row.to(tl.float32)
    if CHECK:
        # The second reads must not start before every column has arrived: their addresses depend on
        # all of them (`zero` is a run-time 0 the compiler cannot fold away).
        dep = tl.max(row.to(tl.int32, bitcast=True), axis=1).to(tl.uint32, bitcast=True).to(tl.int64)
        slot2 = slot + ((dep + zero) >> 40)
        v2 = tl.load(keys_ptr + (slot2 // W) * W + W - 1, mask=ok, other=1, volatile=True)
        k2 = tl.load(keys_ptr + slot2, mask=ok, other=0, volatile=True)
        sp2 = tl.load(special_ptr + slot2 * 0, mask=ok & is_sp, other=1, volatile=True)
        k2 = tl.where(is_sp, k, k2)
        ok = ok & ((v2 & 0xFFFFFF) == (v1 & 0xFFFFFF)) & (k2 == k) & (sp2 != 0)
    # .cs (streaming): the output is written once and must not push bucket lines out of L2
    tl.store(out_ptr + (offs * DIM)[:, None] + cols[None, :], row, mask=out_mask, cache_modifier=".cs")
    tl.store(found_ptr + offs, ok.to(tl.int8), mask=inb, cache_modifier=".cs")
    misses = tl.sum((inb & ~ok).to(tl.int64), axis=0)
    tl.atomic_add(miss_ptr + miss_slot, misses, mask=misses > 0, sem="relaxed")
    if TOUCH:
        if LFU:
            tl.atomic_add(scores_ptr + slot, 1, mask=ok, sem="relaxed")
        else:
            # LRU: set the slot's reference bit (bit 24 + way % 8 of the bucket's version word) unless
            # it is set already; the next writer to lock the bucket folds set bits into the clocks.
            bit = 24 + (slot % W) % 8
            unset = ((v1 >> bit) & 1) == 0
            tl.atomic_or(ver_ptr + ((slot // W) * W + W - 1) * 2, (tl.full([BK], 1, tl.int64) << bit).to(tl.int32),
                         mask=ok & ~is_sp & unset, sem="relaxed")


@triton.jit(do_not_specialize=["n", "num_buckets", "base_clock"])
def write_kernel(k_ptr, v_ptr, n, keys_ptr, ver_ptr, scores_ptr, rows_ptr, special_ptr, scratch_ptr,
                 num_buckets, base_clock,
                 DIM: tl.constexpr, DIM_P2: tl.constexpr, W: tl.constexpr, BK: tl.constexpr,
                 MODE: tl.constexpr, LFU: tl.constexpr, ASM: tl.constexpr):
    """Insert-or-assign (MODE 0), assign-if-present (1) or erase (2) `n` keys `k: (n,) int64` with
    rows `v: (n, DIM) float32`.

    Each lane locks its bucket (atomic OR of the version's odd bit), decides under the lock, writes,
    fences and releases (atomic add: version + 2). Lanes that find the bucket locked retry in the next
    round. MODE 0 with LRU gives key i the score base_clock + i and replaces the lowest-score slot of
    a full bucket only if that score is lower, so the result equals inserting the batch in order."""
    offs = tl.program_id(0).to(tl.int64) * BK + tl.arange(0, BK)
    inb = offs < n
    k = tl.load(k_ptr + offs, mask=inb, other=0)
    is_sp = k == _EMPTY
    b = tl.where(is_sp, num_buckets, _bucket_of(k, num_buckets))
    vword = (b * W + W - 1) * 2  # the bucket's version, as an int32 index into the keys
    ways = tl.arange(0, W)
    usable = ways < W - 1
    cols = tl.arange(0, DIM_P2)
    cm = cols < DIM
    if MODE != _MODE_ERASE:
        vec = tl.load(v_ptr + (offs * DIM)[:, None] + cols[None, :], mask=inb[:, None] & cm[None, :], other=0.0)
        vec = vec.to(rows_ptr.dtype.element_ty)
    my_score = base_clock + offs
    pending = inb
    while tl.max(pending.to(tl.int32), axis=0) > 0:
        # lock: set the odd bit; the lane owns the bucket if the bit was clear
        old = tl.atomic_or(ver_ptr + vword, 1, mask=pending, sem="acquire")
        got = pending & ((old & 1) == 0)
        if ASM:
            got = _fence_pass(got.to(tl.int64), got.to(tl.int32)) != 0
        normal = got & ~is_sp
        line_mask = normal[:, None] & usable[None, :]
        bk = tl.load(keys_ptr + (b * W)[:, None] + ways[None, :], mask=line_mask, other=0, volatile=True)
        sc = tl.load(scores_ptr + (b * W)[:, None] + ways[None, :], mask=line_mask, other=0, volatile=True)
        if not LFU:
            # fold the reference bits finds set since the last writer into the clocks: those slots were
            # used after every earlier insert and before this batch
            refs = tl.atomic_and(ver_ptr + vword, 0x00FFFFFF, mask=normal, sem="relaxed").to(tl.int64)
            used = (((refs[:, None] >> (24 + ways % 8)[None, :]) & 1) == 1) & line_mask
            sc = tl.where(used, base_clock - 1, sc)
            tl.store(scores_ptr + (b * W)[:, None] + ways[None, :], sc, mask=used)
        eq = (bk == k[:, None]) & line_mask
        present = tl.max(eq.to(tl.int32), axis=1) > 0
        way_k = tl.argmax(eq.to(tl.int32), axis=1).to(tl.int64)
        empty = (bk == _EMPTY) & usable[None, :]
        has_empty = tl.max(empty.to(tl.int32), axis=1) > 0
        way_e = tl.argmax(empty.to(tl.int32), axis=1).to(tl.int64)
        sc = tl.where(usable[None, :], sc, 9223372036854775807)
        way_v = tl.argmin(sc, axis=1).to(tl.int64)
        low = tl.min(sc, axis=1)
        sp_present = tl.load(special_ptr + offs * 0, mask=got & is_sp, other=0, volatile=True) != 0
        present = tl.where(is_sp, sp_present, present)
        way = tl.where(is_sp, 0, tl.where(present, way_k, tl.where(has_empty, way_e, way_v)))
        slot = b * W + way
        if MODE == _MODE_UPSERT:
            if LFU:
                act = got
            else:
                act = got & (present | has_empty | is_sp | (low < my_score))
        else:
            act = got & present
        # One decision per key, broadcast through memory: scores change under concurrent finds, so
        # the threads sharing a key could otherwise pick different victims.
        rec = tl.where(act, slot * 2 + present.to(tl.int64), -1)
        tl.store(scratch_ptr + offs, rec, mask=got)
        tl.debug_barrier()
        rec = tl.load(scratch_ptr + offs, mask=got, other=-1, volatile=True)
        act = rec >= 0
        present = (rec & 1) == 1
        slot = tl.where(act, rec >> 1, 0)
        row_of = slot - slot // W
        if MODE == _MODE_UPSERT:
            tl.store(keys_ptr + slot, k, mask=act & ~is_sp)
            tl.store(rows_ptr + (row_of * DIM)[:, None] + cols[None, :], vec, mask=act[:, None] & cm[None, :])
            if LFU:
                old_sc = tl.load(scores_ptr + slot, mask=act, other=0)
                tl.store(scores_ptr + slot, tl.where(present, old_sc + 1, 1), mask=act)
            else:
                tl.store(scores_ptr + slot, my_score, mask=act)
            tl.store(special_ptr + offs * 0, tl.zeros_like(offs) + 1, mask=act & is_sp)
        elif MODE == _MODE_ASSIGN:
            tl.store(rows_ptr + (row_of * DIM)[:, None] + cols[None, :], vec, mask=act[:, None] & cm[None, :])
        else:
            tl.store(keys_ptr + slot, tl.zeros_like(k) + _EMPTY, mask=act & ~is_sp)
            tl.store(scores_ptr + slot, tl.zeros_like(offs), mask=act)
            tl.store(special_ptr + offs * 0, tl.zeros_like(offs), mask=act & is_sp)
        if ASM:
            got = _fence_pass(got.to(tl.int64), act.to(tl.int32)) != 0
        tl.debug_barrier()
        tl.atomic_add(ver_ptr + vword, 1, mask=got, sem="release")  # odd -> even: unlock, new version
        pending = pending & ~got


@triton.jit
def _e4m3_to_f32(bits):
    """e4m3fn bit patterns (uint8 widened to int32, 0..255) → float32 values: sign, 4 exponent bits
    (bias 7), 3 mantissa bits; exponent 0 is subnormal (m × 2^-9). NaN patterns are never stored.
    Plain integer and float arithmetic: runs on every GPU and in the CPU interpreter."""
    b = bits.to(tl.uint32)
    sign = (b & 0x80) << 24
    e = (b >> 3) & 0xF
    m = b & 0x7
    normal = (sign | ((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)  # float32 bias 127 = 7 + 120
    sub = m.to(tl.float32) * 0.001953125
    sub = tl.where(sign != 0, -sub, sub)
    return tl.where(e == 0, sub, normal)


@triton.jit(do_not_specialize=["n", "num_slots", "hot_rows"])
def static_find_kernel(q_ptr, n, skeys_ptr, sidx_ptr, num_slots, special_idx_ptr,
                       dev_rows_ptr, host_rows_ptr, scales_ptr, hot_rows, default_value, out_ptr, found_ptr,
                       DIM: tl.constexpr, DIM_P2: tl.constexpr, BK: tl.constexpr, TWO_TIERS: tl.constexpr,
                       FP8: tl.constexpr):
    """Static / uvm lookup: linear probing over `skeys: (num_slots,) int64` (_EMPTY = free), row index
    `sidx: (num_slots,) int32`; row r < hot_rows is `dev_rows[r]`, else `host_rows[r - hot_rows]`
    (pinned host memory, read over the bus). Misses get `default_value`.
    FP8: rows are `uint8` e4m3fn bits and row r's value is decode(bits) × `scales[r]` (float32, device)."""
    offs = tl.program_id(0).to(tl.int64) * BK + tl.arange(0, BK)
    inb = offs < n
    k = tl.load(q_ptr + offs, mask=inb, other=0)
    is_sp = k == _EMPTY
    pos = _bucket_of(k, num_slots)
    idx = tl.full([BK], -1, tl.int64)
    active = inb & ~is_sp
    while tl.max(active.to(tl.int32), axis=0) > 0:
        sk = tl.load(skeys_ptr + pos, mask=active, other=_EMPTY)
        m = active & (sk == k)
        idx = tl.where(m, tl.load(sidx_ptr + pos, mask=m, other=-1).to(tl.int64), idx)
        active = active & (sk != k) & (sk != _EMPTY)
        pos = tl.where(pos + 1 == num_slots, 0, pos + 1)
    spi = tl.load(special_idx_ptr)
    idx = tl.where(is_sp & inb, spi, idx)
    hit = idx >= 0
    cols = tl.arange(0, DIM_P2)
    cm = cols < DIM
    if TWO_TIERS:
        hot = hit & (idx < hot_rows)
        cold = hit & (idx >= hot_rows)
        r1 = tl.load(dev_rows_ptr + (idx * DIM)[:, None] + cols[None, :], mask=hot[:, None] & cm[None, :], other=0)
        r2 = tl.load(host_rows_ptr + ((idx - hot_rows) * DIM)[:, None] + cols[None, :],
                     mask=cold[:, None] & cm[None, :], other=0)
        if FP8:
            row = _e4m3_to_f32(tl.where(hot[:, None], r1.to(tl.int32), r2.to(tl.int32)))
        else:
            row = tl.where(hot[:, None], r1.to(tl.float32), r2.to(tl.float32))
    else:
        row = tl.load(dev_rows_ptr + (idx * DIM)[:, None] + cols[None, :], mask=hit[:, None] & cm[None, :],
                      other=0)
        if FP8:
            row = _e4m3_to_f32(row.to(tl.int32))
        else:
            row = row.to(tl.float32)
    if FP8:
        row = row * tl.load(scales_ptr + idx, mask=hit, other=0.0)[:, None]
    row = tl.where(hit[:, None], row, default_value)
    tl.store(out_ptr + (offs * DIM)[:, None] + cols[None, :], row, mask=inb[:, None] & cm[None, :])
    tl.store(found_ptr + offs, hit.to(tl.int8), mask=inb)
