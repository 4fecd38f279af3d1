"""The host-shared hash map tier: `volatile_db.type` multi_process_hash_map.

One copy of each table for every process on a host (HugeCTR's `MultiProcessHashMapBackend`):
the in-process hash map's arrays (`hps.storage.hash_map_kernels`: 16-byte slots, a float32 value
slab, the size / free-list state, per-partition counts) live in files under /dev/shm that every
process maps. The probe, insert and erase code is the in-process map's, called on those mappings.

**Files** (per table; `<name>` is `shared_memory_name`, `<tag>` is `hps_et.<model>.<table>`):

- `/dev/shm/<name>.<tag>` — the header (4 KiB): dim, partitions, load state, the current
  generation and the seqlock word. Its `flock` is the cross-process writer lock.
- `/dev/shm/<name>.<tag>.<generation>` — the data: state, partition counts, slots, value slab.
- `/dev/shm/<name>.<tag>.users` — every attached process holds a shared `flock` on it, so the
  last one to detach knows it is the last (a process that dies releases it too).

**Who writes.** The owner (the process with `initialize_after_startup: true`, which creates the
table if it does not exist) loads the sparse files. Any process may write (updates from Kafka,
`cache_missed_embeddings`): every write takes a thread lock and the writer `flock`, then brackets
its changes with the seqlock (odd while writing, even after). Readers take no lock: they probe a
chunk of keys between two reads of the seqlock and redo the chunk when it changed
(`hps.storage.shared_hash_map_kernels.seq_find`), so no reader ever returns a torn row. Finds
write no access metadata (a reader writing shared slots would need the writer lock): under
`evict_oldest` the age of a row is its last write, under `evict_least_used` every row counts 0
and the victims are arbitrary.

**Growth by generation.** A mapping cannot be resized under other processes, so a write that
needs more room (slab rows or slots at load > 0.75) creates generation g + 1 (sized like the
in-process map: slab to what is needed or +25 %, slots to load 0.6 or ×1.5), copies the table
into it, publishes g + 1 in the header and unlinks generation g. Readers compare the header's
generation with theirs at every chunk and map the new one when it changed; the unlinked file stays
valid for a mapping that still holds it, until that process's next call drops it. The loader calls
`reserve(tag, rows)` first, so a load makes one segment of the final size and copies nothing.

**Size.** The segments of all tables of one `shared_memory_name` must fit `shared_memory_size`
bytes, and each new segment must fit /dev/shm's free space: it is allocated up front
(`posix_fallocate`), so a full /dev/shm is a `BackendError` naming both figures when the segment is
made, never a SIGBUS later (Docker's default /dev/shm is 64 MiB: `docker run --shm-size`).

**Pages.** On a table far larger than the TLB's reach, random finds on 4 KiB pages cost ~1.3-1.6x
the in-process map's, whose large numpy arrays get 2 MiB transparent huge pages (the in-process
map on 4 KiB pages is as slow). /dev/shm gives its files 4 KiB pages unless mounted with `huge=`,
so each segment is collapsed into 2 MiB pages when it is made (`madvise(MADV_COLLAPSE)`, Linux ≥
6.1, whatever the mount's option) and every process maps it at a 2 MiB-aligned address
(`hps.storage.shared_hash_map_pages`; `HPS_SHM_HUGE_PAGES=0` turns it off). Where the kernel
refuses (older kernels, `shmem_enabled` deny), a tmpfs mounted `-o huge=always` named by
`HPS_SHM_DIR` gives 2 MiB pages too. `huge_page_bytes(tag)` says what this process got
(benchmarks/results/shared-hash-map.md).

**Starting and stopping.** A process with `initialize_after_startup: false` (a secondary) waits in
`create_table` until the owner has created and loaded the table (`mark_loaded`), at most
`attach_timeout_s` (default `ATTACH_TIMEOUT_S`), then raises a `BackendError` saying what it saw.
A process that outlives the owner keeps answering, and may write: the files stay while anyone has
them attached. With `shared_memory_auto_remove` (the default) the last process to detach a table
(`close` or `drop_table`) removes its files; a process that dies removes nothing (its attachment
ends with it), and the next one to attach and detach does. With it false the files stay for the
next start: a secondary then attaches at once to the rows left there, and an owner loads over them.
`drop_table` removes the table's files only when no other process has it attached. A table is
created whole: its first segment gets a random generation number and its header is written under a
temporary name, then linked into place, so two owners starting at once end up sharing one table.

A writer that dies mid-write leaves the seqlock odd: readers wait for it for up to
`WRITER_STALL_S`, then, if no process holds the writer lock, raise a `BackendError` naming the
files to remove (the table may hold a torn row; nothing is served from it).

The seqlock's ordering relies on the kernels' acquire loads and fences on the reader side and on
x86's in-order stores on the writer side (the writer's stores are made by separate compiled
calls, in program order).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import mmap
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from hps.config.schema import HashMapConfig
from hps.errors import BackendError, ClosedError
from hps.storage import hash_map_kernels as K
from hps.storage import shared_hash_map_kernels as S
from hps.storage import shared_hash_map_pages as P
from hps.storage.base import check_keys, check_vectors
from hps.storage.hash_map import (BATCH_LOAD, MAX_LOAD, MAX_ROWS, MIN_ROWS, MIN_SLOTS, SLOT_GROWTH,
                                  _on_all_cores, _output)

log = logging.getLogger(__name__)

#: Where the segments live: /dev/shm, or the tmpfs named by $HPS_SHM_DIR (every process of the host
#: must see the same one), e.g. one mounted with `-o huge=always` for 2 MiB pages.
SHM_DIR = os.environ.get("HPS_SHM_DIR", "/dev/shm")
#: How long a secondary waits in `create_table` for the owner to create and load a table.
ATTACH_TIMEOUT_S = 60.0
#: How long readers wait on a seqlock left odd before checking that its writer is still alive.
WRITER_STALL_S = 1.0
#: Keys per seqlock-checked chunk of a find (a write racing a find makes it redo one chunk).
FIND_CHUNK_KEYS = 8192
#: Seqlock polls inside the compiled find before it hands back to Python to sleep.
_MAX_SPINS = 20000
#: Slab growth when a write needs more rows than are free (segments are copied whole to grow).
ROW_GROWTH = 1.25
_POLL_S = 0.01

_MAGIC = 0x3130_4D48_5353_5048  # "HPSSHM01" little-endian
_HEADER_BYTES = 4096
# header words (int64)
H_MAGIC, H_DIM, H_PARTITIONS, H_STATE, H_OWNER_PID, H_EXPECTED_ROWS, H_GEN, H_CLOCK = range(8)
H_WRITER_PID, H_OWNER_TOKEN = 9, 10
H_SEQ = 16  # its own cache line
# load states
CREATED, LOADING, READY = 0, 1, 2
_STATE_NAMES = {CREATED: "created, not loaded yet", LOADING: "being loaded", READY: "loaded"}
# data segment: words 0..7, then state (4 int64) at byte 64, partition counts at byte 128
D_MAGIC, D_NUM_SLOTS, D_CAPACITY, D_DIM, D_PARTITIONS = range(5)
_STATE_OFFSET = 64
_PARTS_OFFSET = 128
_CLOCK_MAX = 2**32 - 2


def _align64(n: int) -> int:
    return -(-n // 64) * 64


def segment_bytes(num_slots: int, capacity_rows: int, dim: int, num_partitions: int) -> int:
    """Bytes of a data segment holding `num_slots` slots and `capacity_rows` rows of `dim` floats."""
    slots_offset = _align64(_PARTS_OFFSET + 8 * num_partitions)
    return slots_offset + 16 * num_slots + _align64(4 * dim * capacity_rows)


def _gib(n: int) -> str:
    return f"{n} B ({n / 2**30:.2f} GiB)" if n >= 2**30 else f"{n} B ({n / 2**20:.1f} MiB)"


class _Generation:
    """One mapped data segment: views of its state, partition counts, slots and slab."""

    def __init__(self, path: str, generation: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            # 2 MiB-aligned where huge pages are on, page tables filled up front: a secondary's first
            # lookups take no page faults (`hps.storage.shared_hash_map_pages`)
            self.mapping = P.map_segment(fd, size)
        finally:
            os.close(fd)
        self.mm = self.mapping.buffer
        self.path, self.gen, self.nbytes = path, generation, size
        words = np.frombuffer(self.mm, np.int64, 8, 0)
        if int(words[D_MAGIC]) != _MAGIC:
            raise BackendError(f"shared hash map: {path} is not an hps shared hash map segment")
        self.num_slots = int(words[D_NUM_SLOTS])
        capacity, self.dim, parts = int(words[D_CAPACITY]), int(words[D_DIM]), int(words[D_PARTITIONS])
        self.state = np.frombuffer(self.mm, np.int64, 4, _STATE_OFFSET)
        self.part_counts = np.frombuffer(self.mm, np.int64, parts, _PARTS_OFFSET)
        slots_offset = _align64(_PARTS_OFFSET + 8 * parts)
        self.slots = np.frombuffer(self.mm, np.uint64, 2 * self.num_slots, slots_offset)
        self.values = np.frombuffer(self.mm, np.float32, capacity * self.dim,
                                    slots_offset + 16 * self.num_slots).reshape(capacity, self.dim)
        self.values_i32 = self.values.view(np.int32)
        self.block = K.BLOCK_CACHE_RESIDENT if size <= 4 << 20 else K.BLOCK_DRAM

    @property
    def capacity_rows(self) -> int:
        return self.values.shape[0]

    @property
    def size(self) -> int:
        return int(self.state[K.ST_SIZE])

    def free_rows(self) -> int:
        return self.capacity_rows - int(self.state[K.ST_HWM]) + int(self.state[K.ST_FREE_COUNT])


class _SharedTable:
    """This process's attachment to one shared table: header mapping, current generation, locks."""

    def __init__(self, tag: str, base: str, header_fd: int, users_fd: int) -> None:
        self.tag, self.base = tag, base
        self.header_fd, self.users_fd = header_fd, users_fd
        self.header_mm = mmap.mmap(header_fd, _HEADER_BYTES)
        self.header = np.frombuffer(self.header_mm, np.int64, _HEADER_BYTES // 8, 0)
        self.dim = int(self.header[H_DIM])
        self.thread_lock = threading.Lock()
        self.gen: _Generation | None = None
        #: Another owner is loading this table: this process's load writes are skipped (see `reserve`).
        self.skip_load = False
        #: Row count last seen while waiting for another process's load (progress extends the wait).
        self.rows_seen: int | None = None

    def loaded_rows(self) -> int:
        """Rows in the table now, read from its data file without mapping it (-1 when it is being replaced)."""
        try:
            with open(self.data_path(int(self.header[H_GEN])), "rb") as f:
                f.seek(_STATE_OFFSET + 8 * K.ST_SIZE)
                return int.from_bytes(f.read(8), "little", signed=True)
        except FileNotFoundError:
            return -1

    def removed(self) -> bool:
        """True when the header file was removed since we opened it (the table was dropped)."""
        return os.fstat(self.header_fd).st_nlink == 0

    def data_path(self, generation: int) -> str:
        return f"{self.base}.{generation}"

    def paths(self) -> list[str]:
        return [self.base, self.data_path(int(self.header[H_GEN])), f"{self.base}.users"]

    def remap(self) -> _Generation:
        """The current generation, mapped anew if the header names another one than ours."""
        for _ in range(1000):
            generation = int(self.header[H_GEN])
            current = self.gen
            if current is not None and current.gen == generation:
                return current
            try:
                self.gen = _Generation(self.data_path(generation), generation)
                return self.gen
            except FileNotFoundError:  # replaced again between our read and the open
                time.sleep(0.001)
        raise BackendError(f"shared hash map: table {self.tag}: cannot map its data segment "
                           f"{self.data_path(int(self.header[H_GEN]))}")

    def current(self) -> _Generation:
        gen = self.gen
        if gen is None or gen.gen != int(self.header[H_GEN]):
            gen = self.remap()
        return gen

    @contextmanager
    def writing(self) -> Iterator[_Generation]:
        """Hold the thread lock and the cross-process writer lock; yields the current generation."""
        with self.thread_lock:
            fcntl.flock(self.header_fd, fcntl.LOCK_EX)
            try:
                yield self.remap()
            finally:
                fcntl.flock(self.header_fd, fcntl.LOCK_UN)

    @contextmanager
    def seq_write(self) -> Iterator[None]:
        """Bracket changes to the slots or slab with the seqlock (callers hold `writing()`)."""
        header = self.header
        header[H_WRITER_PID] = os.getpid()
        header[H_SEQ] += 1  # odd: readers wait / retry
        try:
            yield
        finally:
            header[H_SEQ] += 1  # even: stable

    def writer_died(self) -> bool:
        """True when the seqlock is odd and no thread or process holds the writer lock."""
        if not int(self.header[H_SEQ]) & 1 or self.thread_lock.locked():
            return False
        fd = os.open(self.base, os.O_RDWR)  # a new open file description: our own lock conflicts with it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return bool(int(self.header[H_SEQ]) & 1)
        finally:
            os.close(fd)

    def find_into(self, keys: np.ndarray, out: np.ndarray, found: np.ndarray) -> int:
        """Seqlock-checked find of `keys: (n,) int64` into `out: (n, dim) float32`, `found: (n,) bool`;
        returns the number found."""
        start, total, stalled_since = 0, 0, None
        while True:
            gen = self.current()
            got, start, status = S.seq_find(self.header, H_SEQ, H_GEN, gen.gen, gen.slots, gen.num_slots,
                                            gen.values, keys, out, found, start, FIND_CHUNK_KEYS, gen.block,
                                            _MAX_SPINS)
            total += got
            if status == S.DONE:
                return total
            if status == S.GENERATION_CHANGED:
                continue
            now = time.monotonic()
            if stalled_since is None:
                stalled_since = now
            elif now - stalled_since > WRITER_STALL_S and self.writer_died():
                raise BackendError(
                    f"shared hash map: table {self.tag}: a writer (pid {int(self.header[H_WRITER_PID])}) died while "
                    f"writing it, so a row may be torn; nothing is served from it. Stop every process using it, "
                    f"remove {', '.join(self.paths())} and start the owner again")
            time.sleep(0.00005)

    def detach(self) -> bool:
        """Release this process's attachment; returns True when no other process has the table attached
        (the caller may then remove its files; the users lock is held until `close_files`)."""
        fcntl.flock(self.users_fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(self.users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def close_files(self) -> None:
        self.gen = None
        for fd in (self.header_fd, self.users_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class SharedHashMapBackend:
    """Host-shared hash map tier (HugeCTR `multi_process_hash_map`): one copy of each table in
    /dev/shm for every process on the host. See the module docstring for files, locking and growth."""

    name = "multi_process_hash_map"
    #: Filled by one process, read by all: a secondary with initialize_after_startup false is not
    #: given rows of its own (`hps.lookup.row_home`).
    is_shared = True
    #: Shared by the processes of one host only: Kafka updates go to one consumer group per host
    #: (`hps.volatile.<hostname>`), not one for every server as for Redis (`hps.update`).
    host_local = True

    def __init__(self, config: HashMapConfig, *, attach_timeout_s: float | None = None,
                 shm_dir: str | None = None) -> None:
        shm_name = config.shared_memory_name
        if not shm_name or "/" in shm_name or "\0" in shm_name or shm_name.startswith("."):
            raise BackendError(f"volatile_db.shared_memory_name must be a plain file name (no '/', not empty, not "
                               f"starting with '.'), got {shm_name!r}")
        shm_dir = SHM_DIR if shm_dir is None else shm_dir
        if not os.path.isdir(shm_dir):
            raise BackendError(f"shared hash map: {shm_dir} does not exist; multi_process_hash_map needs a tmpfs "
                               f"there (Linux shared memory)")
        self.config = config
        self._dir = shm_dir
        self._shm_name = shm_name
        self._limit_bytes = int(config.shared_memory_size)
        self._auto_remove = bool(config.shared_memory_auto_remove)
        self._owner = bool(config.initialize_after_startup)
        self._timeout_s = ATTACH_TIMEOUT_S if attach_timeout_s is None else float(attach_timeout_s)
        self._num_partitions = int(config.num_partitions)
        self._batch_rows = int(config.max_batch_size)
        margin = int(config.overflow_margin)
        self._margin = margin if margin < 2**62 else None
        self._target_rows = int(config.overflow_target_rows) if self._margin is not None else 0
        self._meta_mode = K.META_CLOCK if config.overflow_policy == "evict_oldest" else K.META_NONE
        self._rng = np.random.default_rng()
        self._tables: dict[str, _SharedTable] = {}
        self._lock = threading.Lock()
        self._closed = False
        #: Names this backend as a table's loader in its header (pids are shared by a process's backends).
        self._token = int.from_bytes(os.urandom(7), "little") + 1

    # -- attaching ----------------------------------------------------------------------------

    def base_path(self, tag: str) -> str:
        """The header file of table `tag`: `<shm_dir>/<shared_memory_name>.<tag>`."""
        if "/" in tag or "\0" in tag:
            raise BackendError(f"shared hash map: table tag {tag!r} cannot name a file")
        return os.path.join(self._dir, f"{self._shm_name}.{tag}")

    def _table(self, tag: str) -> _SharedTable:
        if self._closed:
            raise ClosedError(f"shared hash map backend is closed (table {tag})")
        try:
            return self._tables[tag]
        except KeyError:
            raise BackendError(f"shared hash map: unknown table {tag}; open tables: {sorted(self._tables)}") from None

    def create_table(self, tag: str, dim: int) -> None:
        """Attach table `tag` of `dim`-float rows; idempotent for the same dim.

        The owner (initialize_after_startup true) creates it when it does not exist; a secondary
        waits up to `attach_timeout_s` for the owner to create and load it. Raises `BackendError`
        naming the table and the file when it exists with another dim or the wait times out."""
        if self._closed:
            raise ClosedError(f"shared hash map backend is closed (table {tag})")
        if not isinstance(dim, (int, np.integer)) or int(dim) < 1:
            raise BackendError(f"shared hash map: table {tag}: dim must be a positive integer, got {dim!r}")
        dim = int(dim)
        with self._lock:
            table = self._tables.get(tag)
            if table is None:
                table = self._tables[tag] = self._attach(tag, dim)
        if table.dim != dim:
            raise BackendError(f"shared hash map: table {tag} exists with dim {table.dim}, not {dim} "
                               f"({table.base})")

    def _attach(self, tag: str, dim: int) -> _SharedTable:
        """Attach table `tag`: the owner at once (creating it if needed), a secondary once it is loaded."""
        base = self.base_path(tag)
        users_fd = self._hold_users_lock(base)
        table: _SharedTable | None = None
        try:
            deadline = time.monotonic() + self._timeout_s
            while True:
                if table is not None and table.removed():
                    os.close(table.header_fd)
                    table = None
                if table is None:
                    header_fd = self._open_header(base, dim)
                    if header_fd is not None:
                        table = _SharedTable(tag, base, header_fd, users_fd)
                if table is not None:
                    moved = [deadline]
                    if self._owner or table.dim != dim or self._loaded(table, self._timeout_s, moved):
                        table.remap()
                        return table
                    deadline = moved[0]
                if time.monotonic() >= deadline:
                    raise BackendError(self._wait_failure(tag, base))
                time.sleep(_POLL_S)
        except BaseException:
            if table is not None:
                os.close(table.header_fd)
            os.close(users_fd)
            raise

    def _loaded(self, table: _SharedTable, timeout_s: float, deadline: list[float]) -> bool:
        """True once `table` is loaded. While its loader is alive and the row count grows, `deadline[0]`
        moves to `timeout_s` from now (a long load is waited for; a stalled one is not)."""
        if int(table.header[H_STATE]) == READY:
            return True
        if int(table.header[H_STATE]) == LOADING and _pid_alive(int(table.header[H_OWNER_PID])):
            rows = table.loaded_rows()
            if rows != table.rows_seen:
                table.rows_seen = rows
                deadline[0] = time.monotonic() + timeout_s
        return False

    def _hold_users_lock(self, base: str) -> int:
        """Open `<base>.users` and hold a shared flock on it (retrying when the file was removed by a
        last user detaching meanwhile)."""
        path = f"{base}.users"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o660)
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.fstat(fd).st_nlink > 0:
                return fd
            os.close(fd)

    def _open_header(self, base: str, dim: int) -> int | None:
        """The header's fd; the owner creates the table when it is missing. None when there is nothing
        to attach to yet. A header is published whole (written under a temporary name, then linked to
        its name), so one that exists is always complete."""
        while True:
            try:
                fd = os.open(base, os.O_RDWR)
            except FileNotFoundError:
                if not self._owner or not self._create(base, dim):
                    return None
                continue  # created (or another owner was faster): open it
            if os.fstat(fd).st_size < _HEADER_BYTES or int(np.fromfile(base, np.int64, 1)[0]) != _MAGIC:
                os.close(fd)
                raise BackendError(f"shared hash map: {base} exists but is not an hps shared hash map table; "
                                   f"remove it or pick another volatile_db.shared_memory_name")
            return fd

    def _create(self, base: str, dim: int) -> bool:
        """Create table `base`: its first data segment, then its header under a temporary name, linked to
        `base` at the end. Returns False when another process created it first (ours is removed)."""
        generation = int.from_bytes(os.urandom(4), "little") + 1  # racing creators never share a segment
        data = f"{base}.{generation}"
        temp = f"{base}.{os.getpid()}-{generation}.creating"
        self._new_segment(data, base, MIN_SLOTS, MIN_ROWS, dim, self._num_partitions)
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o660)
            try:
                os.ftruncate(fd, _HEADER_BYTES)
                mm = mmap.mmap(fd, _HEADER_BYTES)
                header = np.frombuffer(mm, np.int64, _HEADER_BYTES // 8, 0)
                header[H_DIM], header[H_PARTITIONS], header[H_STATE] = dim, self._num_partitions, CREATED
                header[H_OWNER_PID], header[H_EXPECTED_ROWS], header[H_OWNER_TOKEN] = os.getpid(), -1, 0
                header[H_GEN], header[H_CLOCK], header[H_MAGIC] = generation, 1, _MAGIC
                del header
                mm.close()
            finally:
                os.close(fd)
            try:
                os.link(temp, base)
                return True
            except FileExistsError:
                os.unlink(data)
                return False
        except BaseException:
            for path in (data,):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            raise
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass

    def _wait_failure(self, tag: str, base: str, loading_owner: bool = False) -> str:
        """Why a secondary (or an owner using another's load) gave up waiting for table `tag`."""
        waited = f"waited for table {tag} in shared memory {base} (attach_timeout_s {self._timeout_s:g} s)"
        try:
            header = np.fromfile(base, np.int64, 16)
        except (FileNotFoundError, ValueError):
            header = None
        if header is None or header.shape[0] < 16 or int(header[H_MAGIC]) != _MAGIC:
            return (f"shared hash map: {waited}, but no process created it: start the owner (a process with "
                    f"volatile_db.initialize_after_startup true and the same shared_memory_name)")
        pid, state = int(header[H_OWNER_PID]), int(header[H_STATE])
        alive = _pid_alive(pid)
        rows = f" ({int(np.fromfile(f'{base}.{int(header[H_GEN])}', np.int64, 12)[8])} of " \
               f"{int(header[H_EXPECTED_ROWS])} rows)" if state == LOADING and alive else ""
        who = f"its owner, pid {pid}, " + ("is loading it, with no new row for attach_timeout_s" if alive
                                           else "exited before loading it completed")
        return f"shared hash map: {waited}; it is {_STATE_NAMES.get(state, state)}{rows}: {who}"

    # -- segments -----------------------------------------------------------------------------

    def _new_segment(self, path: str, base: str, num_slots: int, capacity_rows: int, dim: int,
                     num_partitions: int) -> None:
        """Create data segment `path`, allocated up front and initialised empty (checks the budget)."""
        nbytes = segment_bytes(num_slots, capacity_rows, dim, num_partitions)
        self._check_room(path, base, nbytes, capacity_rows, dim)
        try:
            os.unlink(path)  # a leftover of a writer that died growing the table
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o660)
        try:
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    why = f"{self._dir} could not allocate it ({os.strerror(exc.errno)})"
                    raise BackendError(self._no_room(base, nbytes, capacity_rows, dim, why)) from exc
                raise
            mm = P.map_segment(fd, nbytes, collapse=True).buffer  # its pages made 2 MiB ones before use
            words = np.frombuffer(mm, np.int64, 8, 0)
            state = np.frombuffer(mm, np.int64, 4, _STATE_OFFSET)
            state[:] = (0, 0, -1, 0)
            slots_offset = _align64(_PARTS_OFFSET + 8 * num_partitions)
            np.frombuffer(mm, np.uint64, 2 * num_slots, slots_offset)[1::2] = K.EMPTY_WORD
            words[D_NUM_SLOTS], words[D_CAPACITY], words[D_DIM], words[D_PARTITIONS] = (
                num_slots, capacity_rows, dim, num_partitions)
            words[D_MAGIC] = _MAGIC
            del words, state, mm
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)

    def _used_bytes(self, except_path: str) -> int:
        """Bytes of the data segments of every table of this shared_memory_name, but `except_path`."""
        prefix = f"{self._shm_name}."
        used = 0
        with os.scandir(self._dir) as entries:
            for entry in entries:
                name = entry.name
                if (name.startswith(prefix) and name.rsplit(".", 1)[-1].isdigit()
                        and entry.path != except_path):
                    try:
                        used += entry.stat().st_size
                    except FileNotFoundError:
                        pass
        return used

    def _check_room(self, path: str, base: str, nbytes: int, rows: int, dim: int) -> None:
        used = self._used_bytes(path)
        if used + nbytes > self._limit_bytes:
            raise BackendError(self._no_room(
                base, nbytes, rows, dim,
                f"volatile_db.shared_memory_size is {_gib(self._limit_bytes)} and the tables of "
                f"{self._shm_name!r} already use {_gib(used)}"))
        vfs = os.statvfs(self._dir)
        free = vfs.f_bavail * vfs.f_frsize
        if nbytes > free:
            raise BackendError(self._no_room(
                base, nbytes, rows, dim,
                f"{self._dir} has {_gib(free)} free of {_gib(vfs.f_blocks * vfs.f_frsize)}"))

    def _no_room(self, base: str, nbytes: int, rows: int, dim: int, why: str) -> str:
        return (f"shared hash map: table segment {base} needs {_gib(nbytes)} for {rows} rows of dim {dim}, but {why} "
                f"(Docker's default /dev/shm is 64 MiB: raise it with `docker run --shm-size`, and "
                f"volatile_db.shared_memory_size with it)")

    def _grow(self, table: _SharedTable, gen: _Generation, live_rows: int, new_rows: int) -> _Generation:
        """Move `table` to a new generation with room for `new_rows` more rows and `live_rows` live
        rows at load ≤ MAX_LOAD (callers hold `writing()`). Returns the new generation."""
        if live_rows > MAX_ROWS:
            raise BackendError(f"shared hash map: table {table.tag}: {live_rows} rows exceed the limit of {MAX_ROWS}")
        capacity, num_slots = gen.capacity_rows, gen.num_slots
        missing = new_rows - gen.free_rows()
        if missing > 0:
            capacity = min(MAX_ROWS, max(capacity + missing, math.ceil(capacity * ROW_GROWTH), MIN_ROWS))
        if live_rows > MAX_LOAD * num_slots:
            num_slots = max(math.ceil(live_rows / BATCH_LOAD), math.ceil(num_slots * SLOT_GROWTH))
            num_slots = -(-num_slots // K.GROUP) * K.GROUP
            if num_slots >= 2**32:
                raise BackendError(f"shared hash map: table {table.tag}: {live_rows} rows need more than 2^32 slots")
        if (capacity, num_slots) == (gen.capacity_rows, gen.num_slots):
            return gen
        next_gen = gen.gen + 1
        path = table.data_path(next_gen)
        self._new_segment(path, table.base, num_slots, capacity, table.dim, gen.part_counts.shape[0])
        try:
            new = _Generation(path, next_gen)
            new.state[:] = gen.state
            new.part_counts[:] = gen.part_counts
            if num_slots == gen.num_slots:
                new.slots[:] = gen.slots
            else:
                K.rehash(gen.slots, gen.num_slots, new.slots, num_slots)
            hwm = int(gen.state[K.ST_HWM])
            new.values[:hwm] = gen.values[:hwm]
        except BaseException:
            os.unlink(path)
            raise
        with table.seq_write():
            table.header[H_GEN] = next_gen
        table.gen = new
        try:
            os.unlink(gen.path)  # mappings that still hold it keep it until they drop it
        except FileNotFoundError:
            pass
        return new

    # -- queries ------------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """Tags of the tables this backend has attached."""
        if self._closed:
            raise ClosedError("shared hash map backend is closed")
        return list(self._tables)

    def size(self, tag: str) -> int:
        """Rows currently held in table `tag` (by every process together)."""
        return self._table(tag).current().size

    def memory_bytes(self, tag: str) -> int:
        """Bytes of table `tag`'s data segment (slots + slab capacity + counters), shared by every process."""
        return self._table(tag).current().nbytes

    def huge_page_bytes(self, tag: str) -> int:
        """Bytes of table `tag`'s data segment this process maps with 2 MiB pages (0: all on 4 KiB pages;
        the last partial 2 MiB always is). Read from /proc/self/smaps: for diagnostics, not hot paths."""
        return self._table(tag).current().mapping.huge_page_bytes()

    def segment_paths(self, tag: str) -> list[str]:
        """The files of table `tag`: header, current data segment, users lock file."""
        return self._table(tag).paths()

    def load_state(self, tag: str) -> str:
        """"created", "loading" or "loaded": how far the owner got loading table `tag`."""
        return {CREATED: "created", LOADING: "loading", READY: "loaded"}[int(self._table(tag).header[H_STATE])]

    def partition_sizes(self, tag: str) -> np.ndarray:
        """Rows per partition of table `tag`: `(num_partitions,) int64`."""
        table = self._table(tag)
        with table.writing() as gen:
            return gen.part_counts.copy()

    def find(self, tag: str, keys: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Look up `keys: (n,) int64` (duplicates allowed).

        Returns `(vectors: (n, dim) float32, found: (n,) bool)`; rows of missing keys are zeros.
        `out`, a C-contiguous `(n, dim) float32` array, receives the vectors instead of a new array.
        Lock-free: each chunk of keys is checked against the table's seqlock and redone if a writer
        (in any process) changed the table meanwhile. No access metadata is written."""
        vectors, found, _ = self.find_counted(tag, keys, out)
        return vectors, found

    def find_counted(self, tag: str, keys: np.ndarray,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """`find`, plus the number of keys found: `(vectors, found, num_found)`."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        out = _output(tag, out, keys.shape[0], table.dim)
        found = np.empty(keys.shape[0], dtype=np.bool_)
        if keys.shape[0] == 0:
            return out, found, 0

        def find_part(part: slice) -> int:
            return table.find_into(keys[part], out[part], found[part])

        return out, found, _on_all_cores(find_part, keys.shape[0])

    def items(self, tag: str, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate table `tag` as `(keys: (m,) int64, vectors: (m, dim) float32)` batches, m ≤ batch_rows.

        The keys are snapshotted under the writer lock; each batch is a seqlock-checked find, so keys
        erased meanwhile are skipped and no row is torn."""
        table = self._table(tag)
        if batch_rows < 1:
            raise BackendError(f"shared hash map: table {tag}: batch_rows must be ≥ 1, got {batch_rows}")
        with table.writing() as gen:
            snapshot, _ = K.live_entries(gen.slots, gen.num_slots, gen.size)
        for start in range(0, snapshot.shape[0], batch_rows):
            keys = snapshot[start:start + batch_rows]
            out = np.empty((keys.shape[0], table.dim), dtype=np.float32)
            found = np.empty(keys.shape[0], dtype=np.bool_)
            table.find_into(keys, out, found)
            if found.all():
                yield keys, out
            elif found.any():
                yield keys[found], out[found]

    # -- updates ------------------------------------------------------------------------------

    def reserve(self, tag: str, rows: int) -> None:
        """Size table `tag` for `rows` live rows in total before a load (one segment of the final size,
        no copies while loading) and claim its load until `mark_loaded`.

        When another owner that is still attached has claimed it (Triton's model instances all start
        with initialize_after_startup true), this process does not load it again: its writes until
        `mark_loaded` are skipped and `mark_loaded` waits for the other's load. Owners loading one table
        at once must load the same rows (the first one's are kept)."""
        table = self._table(tag)
        if self._margin is not None:
            rows = min(rows, self._margin * self._num_partitions + self._batch_rows)
        with table.writing() as gen:
            header = table.header
            token, pid = int(header[H_OWNER_TOKEN]), int(header[H_OWNER_PID])
            if (int(header[H_STATE]) in (LOADING, READY) and token not in (0, self._token)
                    and _pid_alive(pid)):
                table.skip_load = True
                log.info("shared hash map: table %s is %s by pid %d; this process (pid %d) uses its rows instead "
                         "of loading them again", tag, _STATE_NAMES[int(header[H_STATE])], pid, os.getpid())
                return
            header[H_OWNER_PID], header[H_OWNER_TOKEN] = os.getpid(), self._token
            header[H_EXPECTED_ROWS] = rows
            header[H_STATE] = LOADING
            if rows > gen.size:
                self._grow(table, gen, rows, rows - gen.size)

    def mark_loaded(self, tag: str) -> None:
        """This process has written every row of table `tag`: secondaries waiting for it attach now.
        When another owner's load was used instead (`reserve`), waits for that load to finish
        (`BackendError` if its loader exits first, or stalls for `attach_timeout_s`)."""
        table = self._table(tag)
        if table.skip_load:
            deadline = [time.monotonic() + self._timeout_s]
            while not self._loaded(table, self._timeout_s, deadline):
                if (time.monotonic() >= deadline[0] or not _pid_alive(int(table.header[H_OWNER_PID]))
                        or int(table.header[H_OWNER_TOKEN]) == 0):  # 0: its loader detached unfinished
                    raise BackendError(self._wait_failure(tag, table.base, loading_owner=True))
                time.sleep(_POLL_S)
            table.skip_load = False
            return
        with table.writing():
            table.header[H_STATE] = READY
            table.header[H_OWNER_PID], table.header[H_OWNER_TOKEN] = os.getpid(), self._token

    def insert_or_assign(self, tag: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert `keys: (n,) int64` → `vectors: (n, dim) float32` (later duplicates win), from any
        process: under the writer lock, in `max_batch_size` chunks each bracketed by the seqlock.
        The table grows by generation when it needs room (`BackendError` when the segment does not
        fit shared_memory_size or /dev/shm: nothing written then). Nothing is written if validation fails."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        vectors = check_vectors(tag, vectors, keys.shape[0], table.dim)
        n = keys.shape[0]
        if n == 0 or table.skip_load:  # skip_load: another owner loads these rows (`reserve`)
            return
        with table.writing() as gen:
            clock = 0
            if self._meta_mode == K.META_CLOCK:
                if int(table.header[H_CLOCK]) >= _CLOCK_MAX:
                    with table.seq_write():
                        K.halve_meta(gen.slots, gen.num_slots)
                    table.header[H_CLOCK] //= 2
                table.header[H_CLOCK] += 1
                clock = int(table.header[H_CLOCK])
            gen = self._room_for(table, gen, keys)
            for start in range(0, n, self._batch_rows):
                chunk = slice(start, start + self._batch_rows)
                gen = self._room_for(table, gen, keys[chunk])
                with table.seq_write():
                    K.insert_rows(gen.slots, gen.num_slots, gen.values, gen.values_i32, gen.state, gen.part_counts,
                                  keys[chunk], vectors[chunk], self._meta_mode, clock)
                    self._resolve_overflow(gen)

    def erase(self, tag: str, keys: np.ndarray) -> int:
        """Remove `keys: (n,) int64` from table `tag` (for every process); returns how many were present."""
        table = self._table(tag)
        keys = check_keys(keys, f"table {tag}")
        if keys.shape[0] == 0:
            return 0
        with table.writing() as gen, table.seq_write():
            return int(K.erase_keys(gen.slots, gen.num_slots, gen.values_i32, gen.state, gen.part_counts, keys))

    def _room_for(self, table: _SharedTable, gen: _Generation, keys: np.ndarray) -> _Generation:
        """`gen`, or a bigger generation, with room for every key of `keys` as a new row (capped by the
        overflow margin)."""
        n = keys.shape[0]
        if n <= gen.free_rows() and gen.size + n <= MAX_LOAD * gen.num_slots:
            return gen
        new_rows = int(K.count_absent(gen.slots, gen.num_slots, keys))
        if self._margin is not None:
            new_rows = max(0, min(new_rows, self._margin * self._num_partitions + self._batch_rows - gen.size))
        if new_rows <= gen.free_rows() and gen.size + new_rows <= MAX_LOAD * gen.num_slots:
            return gen
        return self._grow(table, gen, gen.size + new_rows, new_rows)

    def _resolve_overflow(self, gen: _Generation) -> None:
        """Shrink every partition holding ≥ overflow_margin rows to the resolution target (inside the
        caller's seqlock bracket)."""
        if self._margin is None:
            return
        wanted = gen.part_counts >= self._margin
        if not wanted.any():
            return
        keys, metas, parts = K.partition_members(gen.slots, gen.num_slots, gen.part_counts.shape[0], wanted)
        for p in np.flatnonzero(wanted):
            members = parts == p
            part_keys = keys[members]
            excess = part_keys.shape[0] - self._target_rows
            if excess <= 0:
                continue
            if self._meta_mode == K.META_NONE:
                victims = part_keys[self._rng.choice(part_keys.shape[0], size=excess, replace=False)]
            elif excess >= part_keys.shape[0]:
                victims = part_keys
            else:
                victims = part_keys[np.argpartition(metas[members], excess - 1)[:excess]]
            K.erase_keys(gen.slots, gen.num_slots, gen.values_i32, gen.state, gen.part_counts, victims)

    # -- detaching ----------------------------------------------------------------------------

    def drop_table(self, tag: str) -> None:
        """Detach table `tag`; its files are removed when no other process has it attached."""
        table = self._table(tag)
        with self._lock:
            self._tables.pop(tag, None)
        self._detach(table, remove=True)

    def close(self) -> None:
        """Detach every table (removing the files of those no other process has attached, with
        shared_memory_auto_remove); later calls raise `ClosedError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            tables, self._tables = self._tables, {}
        for table in tables.values():
            self._detach(table, remove=self._auto_remove)

    def _detach(self, table: _SharedTable, remove: bool) -> None:
        with table.thread_lock:  # no write of this process in flight
            if int(table.header[H_OWNER_TOKEN]) == self._token:
                table.header[H_OWNER_TOKEN] = 0  # its loader is gone: a later owner loads it again
            last = table.detach()
            try:
                if last and remove:
                    for path in table.paths():
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
            finally:
                table.close_files()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` (of this PID namespace) exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
