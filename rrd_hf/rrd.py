"""`RRDLoss`: the trainable and stateful parts of RRD around the pure `rrd_loss`."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import rrd_loss
from .memory import build_memory

__all__ = ["RRDLoss", "ENQUEUE_ORDERS", "MEMORY_TYPES"]

ENQUEUE_ORDERS = ("after", "before")
MEMORY_TYPES = ("fifo", "momentum")


def _no_gather(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class RRDLoss(nn.Module):
    """Projection heads + teacher memory; `forward(student_features, teacher_features)` returns the RRD loss.

    * `student_head`: Linear(student_dim → embedding_dim), then L2 normalisation. Trained with the student.
    * `teacher_head`: Linear(teacher_dim → embedding_dim), then L2 normalisation. **Frozen** (`requires_grad=False`):
      in the published method no gradient ever reaches it (its output is detached and the memory is a constant),
      so it is a fixed random projection. Making that explicit keeps it out of the optimizer, out of weight decay
      and out of DDP's gradient reduction, with identical results.
    * `memory`: `FifoMemory` or `MomentumMemory` of teacher embeddings, updated only in training mode.

    `gather` turns this process's teacher embeddings into those of all processes (the trainer sets it to
    `accelerator.gather`), so every process enqueues the same keys and keeps the same memory.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        embedding_dim: int = 128,
        memory_size: int = 16384,
        student_temperature: float = 0.04,
        teacher_temperature: float = 0.10,
        enqueue: str = "after",
        memory_type: str = "fifo",
        num_samples: int | None = None,
        memory_momentum: float = 0.5,
        seed: int = 0,
    ):
        super().__init__()
        if enqueue not in ENQUEUE_ORDERS:
            raise ValueError(f"enqueue must be one of {ENQUEUE_ORDERS}, got {enqueue!r}.")
        for name, value in (("student_temperature", student_temperature), ("teacher_temperature", teacher_temperature)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}.")
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.enqueue = enqueue
        self.student_head = nn.Linear(student_dim, embedding_dim)
        self.teacher_head = nn.Linear(teacher_dim, embedding_dim).requires_grad_(False)
        self.memory = build_memory(
            memory_type, embedding_dim, memory_size, num_samples=num_samples, momentum=memory_momentum, seed=seed
        )
        self.gather: Callable[[torch.Tensor], torch.Tensor] = _no_gather

    def embed(self, student_features: torch.Tensor, teacher_features: torch.Tensor):
        """L2-normalised float32 projections `(z_s, z_t)`; z_t carries no gradient."""
        with torch.autocast(device_type=student_features.device.type, enabled=False):
            z_s = F.normalize(self.student_head(student_features.flatten(1).float()), dim=1)
            with torch.no_grad():
                z_t = F.normalize(self.teacher_head(teacher_features.flatten(1).float()), dim=1)
        return z_s, z_t

    def forward(
        self,
        student_features: torch.Tensor,
        teacher_features: torch.Tensor,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        z_s, z_t = self.embed(student_features, teacher_features)
        update = self.training
        if update:
            keys = self.gather(z_t)
            all_indices = self.gather(indices) if indices is not None else None
        if update and self.enqueue == "before":
            self.memory.update(keys, all_indices)
        loss = rrd_loss(z_s, z_t, self.memory.anchors(), self.student_temperature, self.teacher_temperature)
        if update and self.enqueue == "after":
            self.memory.update(keys, all_indices)
        return loss
