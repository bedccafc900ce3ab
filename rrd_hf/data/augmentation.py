"""Stateless augmentation: the crop and flip of a training image are a pure function of (seed, epoch, sample index).

Random generators carry state, so the augmentation a sample gets would depend on everything drawn before it:
on the number of DataLoader workers, on how many processes share the data, and on whether the run was resumed.
Here nothing is drawn. :func:`augmentation_params` hashes ``(seed, epoch, index)`` with a 32-bit integer mixer
written in plain torch integer ops, so that:

* the per-sample transform (in DataLoader workers) and the batched :class:`~rrd_hf.data.DeviceAugmentation`
  (on the accelerator) compute the same offsets for the same sample, bitwise;
* CPU and CUDA agree: only integer ops, and every product stays below 2**63 in magnitude in int64, so no step
  relies on overflow or on a device's rounding;
* resuming at any step, any worker count and any number of processes give each sample the crop it would have
  had in an uninterrupted single-process run.

The epoch reaches DataLoader workers through :class:`SharedEpoch`, an integer in shared memory that forked and
spawned workers read at every batch; :func:`set_epoch` finds it on a prepared dataset.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

__all__ = ["mix32", "mix32_int", "augmentation_params", "SharedEpoch", "set_epoch", "transform_of"]

_MASK32 = 0xFFFFFFFF
# Distinct constants separate the three draws made from one sample's hash (top, left, flip).
_STREAM_TOP, _STREAM_LEFT, _STREAM_FLIP = 0x68E31DA4, 0xB5297A4D, 0x1B56C4E9


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``(x * constant) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow: the constant is used as the
    signed 32-bit value with the same low bits (``|c| < 2**31``), so ``|x·c| < 2**63``, and ``& 0xFFFFFFFF``
    keeps the low 32 bits of the two's-complement product."""
    signed = constant - 2**32 if constant >= 2**31 else constant
    return (x * signed) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mixer (Wellons' "lowbias32") on an int64 tensor; the input is reduced mod 2**32.

    Every output bit depends on every input bit with near-ideal avalanche, which makes consecutive sample indices
    and consecutive epochs look independent.
    """
    x = x.long() & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def mix32_int(x: int) -> int:
    """`mix32` of one Python int, in Python arithmetic (the same function; tests check they agree)."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


@functools.lru_cache(maxsize=64)
def _key(seed: int, epoch: int) -> int:
    """The 32-bit hash of (seed, epoch), in Python integers once per epoch: no tensor, no device involved."""
    state = 0
    for value in (int(seed), int(epoch)):
        value %= 2**64  # negative and large seeds are folded into 64 bits, then hashed as two 32-bit words
        for word in (value & _MASK32, value >> 32):
            state = mix32_int(state ^ word)
    return state


def augmentation_params(
    seed: int,
    epoch: int,
    index: torch.Tensor | Sequence[int],
    padding: int = 4,
    flip_prob: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The crop offsets and flips of samples ``index`` at ``epoch``: ``(top, left, flip)``, computed on ``index``'s
    device with no host-device synchronisation.

    One 32-bit hash ``h = mix32((index mod 2**32) XOR key(seed, epoch))`` per sample is read in mixed radix
    ``n = 2·padding + 1``: ``top = h mod n``, ``left = (h div n) mod n``,
    ``flip = (h div n²) < flip_prob·⌈2**32/n²⌉``.
    ``top`` and ``left`` are int64 in ``[0, 2·padding]`` (the window's corner in the zero-padded image), uniform
    and independent to within ``n²/2**32``; ``flip`` is bool, true with probability ``flip_prob`` to the same
    precision (exactly never for 0, always for 1). Sample ids are taken mod 2**32.
    """
    if padding < 0 or not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"need padding >= 0 and 0 <= flip_prob <= 1, got padding={padding}, flip_prob={flip_prob}.")
    index = torch.as_tensor(index)
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"index must hold integer sample ids, got dtype {index.dtype}.")
    state = mix32(index.long() ^ _key(seed, epoch))
    count = 2 * int(padding) + 1
    span = (2**32 - 1) // count**2 + 1  # the values h div n² takes
    top = state % count
    left = (state // count) % count
    flip = state // count**2 < int(round(float(flip_prob) * span))
    return top, left, flip


class SharedEpoch:
    """The current epoch as an int64 in shared memory: set in the main process, read in DataLoader workers.

    Forked workers map the same memory; spawned workers receive it through torch's shared-memory pickling, so a
    ``set`` is seen by persistent workers too. A deep copy (``datasets`` copies formats) gets its own memory.
    """

    def __init__(self, epoch: int = 0):
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()
        self.set(epoch)

    def set(self, epoch: int) -> None:
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"the epoch must be >= 0, got {epoch}.")
        self._value.fill_(epoch)

    def get(self) -> int:
        return int(self._value)

    def __deepcopy__(self, memo):
        return SharedEpoch(self.get())

    def __repr__(self) -> str:
        return f"SharedEpoch({self.get()})"


def transform_of(dataset):
    """The per-sample transform a prepared ``datasets.Dataset`` runs (``with_transform``), if any."""
    format_ = getattr(dataset, "format", None)
    if isinstance(format_, dict):
        return (format_.get("format_kwargs") or {}).get("transform")
    return None


def set_epoch(dataset, epoch: int) -> bool:
    """Tell a dataset's augmentation the (0-based) epoch; returns whether anything took it.

    Handles a ``datasets.Dataset`` prepared by :func:`prepare_dataset` (its transform's :meth:`set_epoch`), a
    ``DatasetDict`` (every split), a ``torch.utils.data.Subset`` of those, and any object with a ``set_epoch``
    method (``datasets.IterableDataset``, a sampler-aware dataset). Call it before the epoch's DataLoader iterator
    is created, so that no batch of the new epoch is prepared with the old one. An in-memory dataset returns
    ``False``: its augmentation runs in :class:`DeviceAugmentation`, which takes ``epoch=`` on every call.
    """
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        return any([set_epoch(split, epoch) for split in dataset.values()])
    transform = transform_of(dataset)
    if transform is not None and callable(getattr(transform, "set_epoch", None)):
        transform.set_epoch(epoch)
        return True
    method = getattr(dataset, "set_epoch", None)
    if callable(method):
        method(epoch)
        return True
    inner = getattr(dataset, "dataset", None)  # torch.utils.data.Subset and similar wrappers
    return set_epoch(inner, epoch) if inner is not None and inner is not dataset else False
