"""Keep the daemon's resident memory close to what its transfers actually hold.

A transfer moves ~1 MiB chunks through several threads (a prefetch reader, the
upload, block hashing, paramiko's transport). glibc gives threads their own
arenas (up to eight per core), and once a large chunk has been freed it raises
its mmap threshold above that size, so later chunks come from the arenas and
what they freed stays resident there. With a fixed threshold every chunk of
256 KiB or more is mapped on allocation and unmapped on free; two arenas bound
what the small allocations of many threads keep.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024
ARENA_MAX = 2


def limit_malloc_retention() -> bool:
    """Tune glibc's malloc (before the daemon starts its threads); False where
    the C library is not glibc, which is left as it is."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, ARENA_MAX)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if not done:
        log.debug("mallopt refused the arena and mmap settings")
    return done
