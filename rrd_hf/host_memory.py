"""Keep freed host memory in the process, so that a training step reuses the pages of the step before.

glibc's malloc serves a block above its mmap threshold with fresh pages from the OS and returns them on free, and it
moves that threshold as the program frees large blocks. A CPU training step allocates and frees the same
activations every step: when they land above the threshold, every step faults on all of their pages again. Which
side a run lands on depends on its history. On resnet20 -> resnet8, batch 64: the plain loop of
benchmarks/plain_loop.py faulted ~19,000 pages per step after decoding 6,400 images and ~20 after decoding 50,000;
`rrd-hf train`'s KD step faulted 100 to 13,000 from run to run, and was ~16 % slower when it did. Fixed thresholds
(mmap only above 32 MiB, trim only above 1 GiB of free top-of-heap) make every run take the fast side.
The cost: up to the run's peak of freed memory stays with the process instead of going back to the OS.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

__all__ = ["keep_freed_host_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value: bigger blocks are always mapped
TRIM_THRESHOLD = 2**30

_applied = False


def keep_freed_host_memory() -> bool:
    """Fix glibc malloc's mmap and trim thresholds for this process (once); False where there is no glibc."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc only: musl and other C libraries have no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if _applied:
        logger.info("host malloc: mmap threshold %d MiB, trim threshold %d MiB (keep_host_memory=True)",
                    MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    return _applied
