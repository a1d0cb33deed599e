"""Large CPU buffers without a page fault per call: glibc's malloc told to keep freed memory for reuse.

Why: on a CPU, PyTorch takes every tensor's memory from the C library's ``malloc``. glibc serves a large
request (above ``M_MMAP_THRESHOLD``, which it moves up to at most 32 MiB) with a fresh ``mmap`` and gives it
back to the system on ``free``; a medium one comes from the heap, whose top is given back as soon as more
than ``M_TRIM_THRESHOLD`` (twice the former) lies free there. Either way the next call's buffer is memory the
system has to map again, one page fault per 4 KiB page, zeroed: about a millisecond per 8 MiB. A recurrent
step returns a new state of that size per layer (the old one stays the caller's), and the chunkwise form
makes temporaries of 16-64 MiB per call, so these faults were a third of a decoding step at batch 8 and
much of a training step (see ``python -m retnet_mini.bench``).

What: when the package is imported on Linux with glibc, :func:`keep_freed_memory` raises both thresholds
(requests up to 256 MiB come from the heap; up to 1 GiB of freed memory stays mapped for the next call).
The cost is that the process's resident memory stays near its peak instead of shrinking after each call.
It changes ``malloc`` for the whole process, so it can be refused: set ``RETNET_MINI_KEEP_FREED_MEMORY=0``
before importing ``retnet_mini``. On other C libraries and systems it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "OPT_OUT", "keep_freed_memory", "kept"]

MMAP_THRESHOLD = 256 * 2**20   # requests up to this size come from the heap, not from a fresh mmap
TRIM_THRESHOLD = 2**30         # this much freed memory at the heap's top stays mapped for reuse
OPT_OUT = "RETNET_MINI_KEEP_FREED_MEMORY"

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameter numbers (malloc.h)
_kept = False


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (bytes); True if both were set.

    False, with nothing changed, on systems without glibc. Setting either also stops glibc from moving
    the thresholds by itself (its "dynamic" thresholds), for the rest of the process.
    """
    global _kept
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise ValueError(f"{name} must be an int of bytes in (0, 2**31), got {value!r}")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    done = (libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold)) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold)) == 1)
    _kept = _kept or done
    return done


def kept() -> bool:
    """Whether :func:`keep_freed_memory` has changed this process's malloc (at import, or since)."""
    return _kept


def _at_import() -> None:
    if os.environ.get(OPT_OUT, "1").strip().lower() not in ("0", "false", "no", "off"):
        keep_freed_memory()
