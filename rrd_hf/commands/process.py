"""Process tuning for the processes rrd_hf's own command line starts, and for those only.

A library must leave its caller's process as it found it, so nothing here runs on `import rrd_hf` or inside
`RRDTrainer`: `rrd-hf ...`, `python -m rrd_hf.train` and `python -m rrd_hf.commands.demo` call `run_command`, which

* freezes what is already imported (`gc.freeze()`), so the cyclic collector does not walk the hundreds of
  thousands of long-lived objects of torch, transformers and datasets again and again, nor at exit. Everything
  that must happen at exit still happens (atexit handlers, `weakref.finalize`, the flush of the standard streams);
  what does not is the `__del__` of an object kept alive only by a reference cycle, and the commands write
  nothing from finalisers;
* fixes glibc malloc's mmap and trim thresholds, so that a CPU training step reuses the pages the step before
  freed instead of faulting fresh ones in: its activations are allocated and freed at every step, and glibc's
  moving thresholds otherwise decide from the process's history whether they come back from the OS each time.
  Freed memory then stays with the command's process until it ends. `RRD_HF_KEEP_HOST_MEMORY=0` turns it off;
  it does nothing without glibc.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
from collections.abc import Callable

__all__ = ["run_command", "keep_freed_host_memory", "KEEP_HOST_MEMORY_ENV"]

logger = logging.getLogger(__name__)

#: Set to 0 to leave glibc's malloc thresholds alone in rrd_hf's command-line processes.
KEEP_HOST_MEMORY_ENV = "RRD_HF_KEEP_HOST_MEMORY"

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value: bigger blocks are always mapped
TRIM_THRESHOLD = 2**30


def keep_freed_host_memory() -> bool:
    """Fix glibc malloc's mmap and trim thresholds for this process; False where there is no glibc or it is off."""
    if os.environ.get(KEEP_HOST_MEMORY_ENV, "1").strip() in ("0", "false", "False", "no"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc only: musl and other C libraries have no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


def run_command(main: Callable[[], object]) -> None:
    """Run a command-line entry point in a tuned process (see the module docstring), whichever way it ends."""
    keep_freed_host_memory()
    gc.freeze()
    try:
        main()
    finally:
        gc.freeze()
