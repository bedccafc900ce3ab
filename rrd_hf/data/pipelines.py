"""Which data path a run takes: decode once into memory and augment whole batches, or transform per sample.

Decoding every image once into a uint8 tensor and augmenting batches on the device removes the per-sample Pillow
work from every epoch (the loop a researcher writes is data-bound on a GPU), at the price of holding the split in
memory: ``N·3·S·S`` bytes (CIFAR-100 train at 32×32: 154 MB; Tiny ImageNet train at 32×32: 307 MB; at 64×64:
1.2 GB). ``auto`` takes it when that fits in :func:`in_memory_budget`: at most a quarter of the machine's RAM and
at most 8 GiB, shared by the processes of this machine (``LOCAL_WORLD_SIZE``, set by torchrun and accelerate),
since each of them holds its own copy. Both paths give bitwise the same augmented images for the same seed.
"""

from __future__ import annotations

import os

from .errors import DataError

__all__ = [
    "DATA_PIPELINES",
    "MEMORY_FRACTION",
    "MEMORY_CAP_BYTES",
    "uint8_bytes",
    "total_memory_bytes",
    "in_memory_budget",
    "choose_data_pipeline",
]

DATA_PIPELINES = ("auto", "in_memory", "per_sample")
#: ``auto`` keeps the decoded train split in memory when it needs at most this fraction of the RAM ...
MEMORY_FRACTION = 0.25
#: ... and at most this many bytes (per machine, divided between its processes).
MEMORY_CAP_BYTES = 8 * 2**30
#: The RAM assumed when the operating system does not say (no ``sysconf``): a small machine's.
_UNKNOWN_MEMORY_BYTES = 8 * 2**30


def uint8_bytes(num_images: int, image_size: int, channels: int = 3) -> int:
    """Bytes of ``num_images`` decoded ``channels × image_size × image_size`` uint8 images."""
    return int(num_images) * int(channels) * int(image_size) ** 2


def total_memory_bytes() -> int | None:
    """Physical memory of this machine, or ``None`` when the operating system does not report it."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return int(pages) * int(page_size) if pages > 0 and page_size > 0 else None


def in_memory_budget(total_memory: int | None = None, processes: int | None = None) -> int:
    """Bytes one process may spend on a decoded train split under ``auto``:
    ``min(MEMORY_FRACTION · RAM, MEMORY_CAP_BYTES) / processes`` (processes: ``LOCAL_WORLD_SIZE``, default 1)."""
    total = total_memory if total_memory is not None else (total_memory_bytes() or _UNKNOWN_MEMORY_BYTES)
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return int(min(MEMORY_FRACTION * total, MEMORY_CAP_BYTES) // max(int(processes), 1))


def choose_data_pipeline(
    requested: str,
    num_images: int,
    image_size: int,
    *,
    total_memory: int | None = None,
    processes: int | None = None,
) -> str:
    """``"in_memory"`` or ``"per_sample"``: ``requested`` unless it is ``"auto"``, which picks ``in_memory`` when the
    decoded split (:func:`uint8_bytes`) fits in :func:`in_memory_budget`."""
    if requested not in DATA_PIPELINES:
        raise DataError(f"data_pipeline must be one of {list(DATA_PIPELINES)}, got {requested!r}.")
    if requested != "auto":
        return requested
    budget = in_memory_budget(total_memory, processes)
    return "in_memory" if uint8_bytes(num_images, image_size) <= budget else "per_sample"
