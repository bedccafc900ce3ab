"""Keep CPython's cyclic garbage collector from walking the import graph of torch, transformers and datasets.

Importing rrd_hf creates over 400,000 long-lived objects (modules, classes, functions). The collector runs a full
collection whenever the long-lived objects have grown by a quarter since the last one, so an import of that size
triggers eight, each walking every object so far, and none finds anything to free. When the process ends it
walks them all again, four times. On this project's 2-core CPU (`benchmarks/process_overhead.py`, medians of 5):

* `import rrd_hf` took 3.67 s, and 2.80 s with the collector paused during the import and what it created moved to
  the oldest generation;
* from the last statement of a process that had imported rrd_hf to its end: 1.30 s, and 0.20 s after
  `gc.freeze()`;
* a whole two-step `python -m rrd_hf.train` process: 5.68 s, and 3.26 s with all of it.

So the package pauses the collector while it imports its dependencies (`paused`), then moves what the import
created to the oldest generation without walking it: the same objects exist afterwards, and the collector runs as
before (its next full collection walks them once). Left in the youngest generation, they were walked by the first
young collection after the import (0.29 s, measured with `gc.callbacks`), again by the next middle one, and then by a
full collection. The command-line entry points
(`run_command`) also freeze what exists when they start and when they end. `gc.freeze()` moves every live object to
the permanent generation, which collections skip: what was imported lives until the process ends anyway, and at the
end the operating system reclaims the memory. Everything that must happen at exit still happens: the atexit handlers
(logging's flush and close, `weakref.finalize`, multiprocessing's cleanup of its children) and the flush of the
standard streams. What does not happen is the `__del__` of an object that only a reference cycle keeps alive; rrd_hf
closes its files itself and writes nothing from a finaliser. A program that imports rrd_hf gets the paused import
only: freezing is for processes that rrd_hf's entry points start.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["paused", "run_command"]


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block; the collector's previous state afterwards.

    What the block created is then moved to the oldest generation (`gc.freeze()` + `gc.unfreeze()`, no walk),
    unless the program keeps objects frozen itself: left in the youngest generation, the first young collection
    after the block would walk all of it (0.29 s after `import rrd_hf` on this project's CPU) and two more would
    follow as it ages. It is still collected, by the next full collection.
    """
    enabled = gc.isenabled()
    frozen_before = gc.get_freeze_count()
    gc.disable()
    try:
        yield
    finally:
        if frozen_before == 0:  # unfreeze() would also release what the program froze on purpose
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def run_command(main: Callable[[], object]) -> None:
    """Run a command-line entry point with what is already imported frozen, and skip the process's final
    collections whichever way the command ends (return, `sys.exit`, an exception)."""
    gc.freeze()
    try:
        main()
    finally:
        gc.freeze()
