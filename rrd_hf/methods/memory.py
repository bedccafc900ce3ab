"""Memories of embeddings that RRD (and CRD's banks, in `crd.py`) compare every sample against.

Every update is out of place, as in MoCo's queue: the rows are written with `index_copy` (not `index_copy_`) into
a new tensor, which is then assigned to the buffer. So an update never modifies a tensor a previous loss read: a
loss computed before an update still backpropagates correctly through the memory it saw, whichever order enqueue
and loss run in, and two losses summed before one backward each keep their own memory. Writing in place would
invalidate the saved tensor of any loss not yet backpropagated ("modified by an inplace operation"). The cost is one
new tensor of the memory's size per update, which the allocator recycles once the last loss that read the old one
is gone. `load_state_dict` copies into the buffers in place, as for every PyTorch module: load a checkpoint between
steps, not while a loss that read the memory still awaits its backward.

Both memories are deterministic functions of a seed and of the keys they receive: under data parallelism every
process feeds them the keys gathered from all processes, so every process holds the identical memory.

No update or read waits for the accelerator: counters that decide random draws are mirrored on the host (restored
from the state dict when a checkpoint is loaded), random numbers are drawn on the memory's device, and nothing
data-dependent is read back. Index ranges are checked with asynchronous asserts (see `check_index_range`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FifoMemory", "MomentumMemory", "build_memory", "momentum_rows", "first_occurrence", "check_index_range",
           "MEMORY_TYPES"]

MEMORY_TYPES = ("fifo", "momentum")


def random_unit_rows(rows: int, dim: int, seed: int) -> torch.Tensor:
    # Rows (not columns, as in the reference code) have unit norm from the start, so the first steps already
    # compare against valid points on the sphere. The seed, not the global RNG, decides them: identical on every
    # process whatever else consumed random numbers before.
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=generator), dim=1)


_MEMORY_HINT = ("The memory is sized by the training set (its largest `index` + 1): train on the dataset the trainer "
                "was built with.")


def check_index_range(indices: torch.Tensor, size: int, what: str = "sample index", hint: str = _MEMORY_HINT) -> None:
    """Fail on an index outside `[0, size)` without waiting for the device: an asynchronous assert, which raises at
    once on CPU (as a ValueError with `hint`) and as a device-side assert on an accelerator."""
    if indices.numel() == 0:
        return
    inside = ((indices >= 0) & (indices < size)).all()
    try:
        torch._assert_async(inside, f"{what} out of range [0, {size}). {hint}")
    except RuntimeError as error:  # CPU: synchronous
        raise ValueError(str(error)) from None


def first_occurrence(indices: torch.Tensor) -> torch.Tensor:
    """For every position, the position of the first occurrence of its value (a batch-sized sort, no sync)."""
    sorted_values, order = torch.sort(indices, stable=True)
    positions = torch.arange(indices.numel(), device=indices.device)
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    group_start = torch.cummax(torch.where(starts, positions, 0), dim=0).values
    first = torch.empty_like(order)
    first[order] = order[group_start]  # the stable sort keeps the earliest copy at the start of its group
    return first


def momentum_rows(memory: torch.Tensor, keys: torch.Tensor, indices: torch.Tensor,
                  momentum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(indices, rows)`: the rows `normalize(momentum · memory[i] + (1 − momentum) · key)` to write at `indices`.

    With repeated indices (a padded last batch under data parallelism) every copy gets the value computed from the
    index's first occurrence, so the result does not depend on the order of duplicate writes.
    """
    keys = keys.detach().to(device=memory.device, dtype=memory.dtype)
    indices = indices.detach().to(device=memory.device, dtype=torch.long).reshape(-1)
    if keys.dim() != 2 or keys.shape[1] != memory.shape[1] or keys.shape[0] != indices.numel():
        raise ValueError(
            f"keys must be ({indices.numel()}, {memory.shape[1]}) for {indices.numel()} indices, got {tuple(keys.shape)}."
        )
    if indices.numel() == 0:
        return indices, keys
    check_index_range(indices, memory.shape[0])
    first = first_occurrence(indices)
    blended = F.normalize(momentum * memory.index_select(0, indices) + (1 - momentum) * keys.index_select(0, first), dim=1)
    return indices, blended


class _HostCounter(nn.Module):
    """Base of the memories: `num_updates` lives in the state dict and, for the random draws, on the host."""

    def __init__(self):
        super().__init__()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.updates = 0  # host mirror of num_updates: reading the buffer would wait for the accelerator

    def _count_update(self) -> None:
        self.updates += 1
        self.num_updates = self.num_updates + 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.updates = int(self.num_updates)  # once per load, not per step


class FifoMemory(_HostCounter):
    """Ring buffer of the `size` most recent teacher embeddings (the memory behind the published RRD numbers).

    Accepts any number of rows per update: a short last batch, `size` not divisible by the batch, and more rows
    than `size` (only the newest `size` are kept).
    """

    needs_indices = False

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"memory size and dim must be >= 1, got size={size}, dim={dim}.")
        self.register_buffer("keys", random_unit_rows(size, dim, seed))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_written", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @property
    def num_filled(self) -> int:
        """How many slots hold real teacher embeddings (the rest still hold the random initial rows)."""
        return int(min(int(self.num_written), self.size))

    def anchors(self) -> torch.Tensor:
        return self.keys

    @torch.no_grad()
    def update(self, keys: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Write `keys` (N, D) at the pointer, wrapping around; `indices` is accepted and ignored."""
        keys = keys.detach().to(device=self.keys.device, dtype=self.keys.dtype)
        n = keys.shape[0]
        if n == 0:
            return
        if keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"keys have dim {keys.shape[1]}, the memory holds dim {self.keys.shape[1]}.")
        # With more rows than slots, writing them one after the other would leave exactly the newest `size`.
        skipped = max(n - self.size, 0)
        keys = keys[skipped:]
        positions = (self.pointer + skipped + torch.arange(keys.shape[0], device=keys.device)) % self.size
        self.keys = self.keys.index_copy(0, positions, keys)  # out of place: see the module docstring
        self.pointer = (self.pointer + n) % self.size
        self.num_written = self.num_written + n
        self._count_update()


class MomentumMemory(_HostCounter):
    """One slot per training sample, each a momentum average of that sample's teacher embeddings.

    `update` sets slot i to normalize(momentum · slot_i + (1 − momentum) · key_i), which needs each sample's
    dataset index. The loss compares against `num_anchors` slots drawn uniformly without replacement at every
    step (all slots when `num_anchors` is None or at least the number of samples). The draw depends only on the
    seed and the update counter, so it is identical on every process and after a resume (on a given device type).

    Deliberate differences from the reference code's momentum variant (its quirks, not part of the method):
    similarities are plain cosine similarities of L2-normalised embeddings (the reference applies a second softmax
    to scores that are already exp(sim/0.07)/Z, with Z frozen after the first batch); and both the student and the
    teacher distributions are taken against this one bank of *teacher* embeddings (the reference crosses them:
    student against the teacher bank, teacher against a bank of student embeddings).
    """

    needs_indices = True

    def __init__(self, num_samples: int, dim: int, momentum: float = 0.5, num_anchors: int | None = 16384, seed: int = 0):
        super().__init__()
        if num_samples < 1 or dim < 1:
            raise ValueError(f"num_samples and dim must be >= 1, got num_samples={num_samples}, dim={dim}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.momentum = float(momentum)
        self.num_anchors = num_anchors
        self.seed = int(seed)
        self.register_buffer("keys", random_unit_rows(num_samples, dim, seed))
        self.register_buffer("written", torch.zeros(num_samples, dtype=torch.bool))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @property
    def num_filled(self) -> int:
        return int(self.written.sum())

    def anchor_indices(self) -> torch.Tensor | None:
        if self.num_anchors is None or self.num_anchors >= self.size:
            return None
        device = self.keys.device
        generator = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + self.updates)
        return torch.randperm(self.size, generator=generator, device=device)[: self.num_anchors]

    def anchors(self) -> torch.Tensor:
        indices = self.anchor_indices()
        return self.keys if indices is None else self.keys.index_select(0, indices)

    @torch.no_grad()
    def update(self, keys: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        if indices is None:
            raise ValueError(
                "the momentum memory needs the dataset index of every sample: give the batches an `index` column "
                "(rrd_hf.data transforms add it with with_index=True), or use memory_type='fifo'."
            )
        indices = indices.detach().to(device=self.keys.device, dtype=torch.long).reshape(-1)
        if indices.numel() == 0:
            return
        indices, rows = momentum_rows(self.keys, keys, indices, self.momentum)
        self.keys = self.keys.index_copy(0, indices, rows)  # out of place: see the module docstring
        self.written = self.written.index_fill(0, indices, True)
        self._count_update()


def build_memory(
    memory_type: str,
    dim: int,
    size: int,
    *,
    num_samples: int | None = None,
    momentum: float = 0.5,
    num_anchors: int | None = 16384,
    seed: int = 0,
) -> FifoMemory | MomentumMemory:
    """Build a memory by name: `fifo` (a ring of `size` keys) or `momentum` (one slot per training sample, of which
    `num_anchors` are drawn at every step; `size` does not apply)."""
    if memory_type == "fifo":
        return FifoMemory(size, dim, seed=seed)
    if memory_type == "momentum":
        if num_samples is None:
            raise ValueError("memory_type='momentum' needs num_samples (the length of the training dataset).")
        return MomentumMemory(num_samples, dim, momentum=momentum, num_anchors=num_anchors, seed=seed)
    raise ValueError(f"unknown memory_type {memory_type!r}: use one of {MEMORY_TYPES}.")
