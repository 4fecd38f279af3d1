"""How the shared hash map's data segments are mapped: on 2 MiB pages where the kernel allows it.

A find of random keys in a table far larger than the TLB's reach takes a TLB miss per slot and per
row. The in-process hash map's large numpy arrays get 2 MiB transparent huge pages (numpy asks for
them with `madvise(MADV_HUGEPAGE)`; /sys/kernel/mm/transparent_hugepage/enabled `madvise` or
`always`), but files in a tmpfs such as /dev/shm get 4 KiB pages unless the tmpfs is mounted with
`huge=` (the sysfs `shmem_enabled` governs only the kernel's internal shm mount), and on 4 KiB pages
the same finds cost ~1.3-1.6x (benchmarks/results/shared-hash-map.md). So each data segment is:

- **collapsed into huge pages when it is made** (`madvise(MADV_COLLAPSE)`, Linux ≥ 6.1): the file's
  own pages become 2 MiB folios whatever the mount's `huge=` option, and every process mapping the
  file shares them. The kernel refuses only when `shmem_enabled` is `deny`, or when it finds no free
  2 MiB block (fragmented memory): the segment then stays on 4 KiB pages, logged once, and works.
- **mapped at a 2 MiB-aligned address** in every process, so that those folios are mapped by
  2 MiB page-table entries (a misaligned mapping of the same file would take 4 KiB entries), with
  `MADV_HUGEPAGE` (which also gives huge pages on a tmpfs mounted `huge=advise`) and the page
  tables filled up front (`MAP_POPULATE`: a secondary's first finds take no page faults).

`HPS_SHM_HUGE_PAGES=0` turns both off (plain `mmap`, `MADV_NOHUGEPAGE`: 4 KiB page-table entries
even for huge folios); the benchmark uses it to compare the two in one run. A tmpfs that gives
huge pages by itself (`mount -t tmpfs -o huge=always,size=8G tmpfs /mnt/hps_shm`, then
`HPS_SHM_DIR=/mnt/hps_shm` for every process) needs no collapse: its pages are 2 MiB from the start.

Segments smaller than 2 MiB, and the last partial 2 MiB of a segment, stay on 4 KiB pages.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import weakref
from typing import Any

log = logging.getLogger(__name__)

#: The x86-64 / arm64 (4 KiB base page) PMD page size.
HUGE_PAGE_BYTES = 2 << 20
#: Collapse and align the segments (see the module docstring); `HPS_SHM_HUGE_PAGES=0` turns it off.
HUGE_PAGES = os.environ.get("HPS_SHM_HUGE_PAGES", "1").strip().lower() not in ("0", "false", "no", "off")

_MADV_HUGEPAGE, _MADV_NOHUGEPAGE, _MADV_POPULATE_WRITE, _MADV_COLLAPSE = 14, 15, 23, 25
_PROT_NONE, _MAP_FIXED, _MAP_NORESERVE = 0, 0x10, 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value
_libc: Any = None
_warned = False


def _lib() -> Any:
    """libc with mmap / munmap / madvise typed, or None where it cannot be loaded (not Linux)."""
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_long]
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def _munmap(address: int, nbytes: int) -> None:
    _lib().munmap(address, nbytes)


class SegmentMapping:
    """One shared read-write mapping of a segment file.

    `buffer` exposes the `nbytes` bytes to `numpy.frombuffer`; the mapping lasts as long as any
    array made from it (the last one to go unmaps it). `address` is where it starts."""

    def __init__(self, buffer: Any, address: int, nbytes: int, aligned: bool) -> None:
        self.buffer, self.address, self.nbytes, self.aligned = buffer, address, nbytes, aligned

    def huge_page_bytes(self) -> int:
        """Bytes of this mapping that this process maps with 2 MiB page-table entries (from
        /proc/self/smaps: `ShmemPmdMapped` + `FilePmdMapped`); 0 where smaps is not readable."""
        start = f"{self.address:x}-"
        total, inside = 0, False
        try:
            with open("/proc/self/smaps") as smaps:
                for line in smaps:
                    if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                        if inside:
                            break
                        inside = line.startswith(start)
                    elif inside and line.startswith(("ShmemPmdMapped:", "FilePmdMapped:")):
                        total += int(line.split()[1]) * 1024
        except OSError:
            return 0
        return total


def map_segment(fd: int, nbytes: int, *, collapse: bool = False, huge: bool | None = None) -> SegmentMapping:
    """Map `nbytes` of the tmpfs file `fd` shared, read-write, page tables filled.

    With huge pages on (`huge`, default `HUGE_PAGES`) and `nbytes` ≥ 2 MiB: at a 2 MiB-aligned
    address, `MADV_HUGEPAGE`, and with `collapse` (the segment's creator, before writing it) the
    file's whole 2 MiB ranges collapsed into huge pages. Otherwise a plain `mmap` advised
    `MADV_NOHUGEPAGE`. Never fails for want of huge pages: they are an optimisation."""
    huge = HUGE_PAGES if huge is None else huge
    libc = _lib()
    if huge and libc is not None and nbytes >= HUGE_PAGE_BYTES:
        mapping = _map_aligned(libc, fd, nbytes, collapse)
        if mapping is not None:
            return mapping
    mm = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED)
    buffer = (ctypes.c_char * 1).from_buffer(mm)  # only for the address
    address = ctypes.addressof(buffer)
    del buffer
    if hasattr(mm, "madvise"):
        try:
            mm.madvise(_MADV_NOHUGEPAGE)
        except OSError:
            pass
        try:
            mm.madvise(_MADV_POPULATE_WRITE)  # Linux ≥ 5.14; else the first finds fault the pages in
        except OSError:
            pass
    return SegmentMapping(mm, address, nbytes, aligned=False)


def _map_aligned(libc: Any, fd: int, nbytes: int, collapse: bool) -> SegmentMapping | None:
    """`fd` mapped at a 2 MiB-aligned address (a reservation 2 MiB larger, the file mapped over its
    aligned part, the rest given back), `MADV_HUGEPAGE`, collapsed (`collapse`), then populated; None
    when mmap refuses."""
    span = nbytes + HUGE_PAGE_BYTES
    reserved = libc.mmap(None, span, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
    if reserved in (None, _MAP_FAILED):
        return None
    address = -(-reserved // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    got = libc.mmap(address, nbytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
    if got != address:
        libc.munmap(reserved, span)
        return None
    page = mmap.PAGESIZE
    end = address + -(-nbytes // page) * page
    if address > reserved:
        libc.munmap(reserved, address - reserved)
    if reserved + span > end:
        libc.munmap(end, reserved + span - end)
    libc.madvise(address, nbytes, _MADV_HUGEPAGE)  # huge pages on a tmpfs mounted huge=advise
    buffer = type("SharedSegment", (ctypes.c_char * nbytes,), {}).from_address(address)
    weakref.finalize(buffer, _munmap, address, end - address).atexit = False  # the OS unmaps at exit
    mapping = SegmentMapping(buffer, address, nbytes, aligned=True)
    if collapse:
        _collapse(libc, mapping)
    if libc.madvise(address, nbytes, _MADV_POPULATE_WRITE) != 0:  # Linux < 5.14: read a byte per page
        import numpy as np

        np.frombuffer(buffer, np.uint8)[::page].sum()
    return mapping


def _collapse(libc: Any, mapping: SegmentMapping) -> bool:
    """Collapse the whole 2 MiB ranges of `mapping`'s file into huge pages; False (logged once) when
    the kernel refuses."""
    global _warned
    length = mapping.nbytes // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if libc.madvise(mapping.address, length, _MADV_COLLAPSE) == 0:
        return True
    err = ctypes.get_errno()
    if not _warned:
        _warned = True
        log.info("shared hash map: segments stay on 4 KiB pages (madvise MADV_COLLAPSE: %s); random finds in "
                 "large tables cost more than the in-process map's. A tmpfs mounted with huge=always "
                 "(HPS_SHM_DIR) gives 2 MiB pages", os.strerror(err) if err else "refused")
    return False
