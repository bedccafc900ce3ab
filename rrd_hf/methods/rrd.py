"""Relational Representation Distillation (Giakoumoglou & Stathaki, arXiv 2407.12073): the pure loss and the method.

For a batch with student features h_s and teacher features h_t (the classifier inputs):

    z_s = normalize(W_s h_s + b_s)      z_t = normalize(W_t h_t + b_t)      M = memory of K teacher embeddings
    p_T = softmax(z_t · Mᵀ / τ_t)  (no gradient)      p_S = softmax(z_s · Mᵀ / τ_s)
    L_RRD = mean_i H(p_T,i, p_S,i)

The teacher head is **frozen** (`requires_grad=False`): in the published method no gradient ever reaches it (its
output is detached and the memory is a constant), so it is a fixed random projection. Making that explicit keeps
it out of the optimizer, out of weight decay and out of DDP's gradient reduction, with identical results.
"""

from __future__ import annotations

import inspect
import typing

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillationMethod, MethodContext, float32_math
from .memory import MEMORY_TYPES, build_memory
from .registry import register_method

__all__ = ["rrd_loss", "relational_log_probs", "similarity_logits", "check_temperature", "RRD", "RRD_PRESETS",
           "ENQUEUE_ORDERS", "MEMORY_TYPES"]

ENQUEUE_ORDERS = ("after", "before")

#: Named settings of the method. Explicitly given options override the preset's.
#: Slots of the momentum memory drawn as anchors at every step, by default (the FIFO memory's published size).
DEFAULT_MOMENTUM_ANCHORS = 16384

RRD_PRESETS: dict[str, dict[str, typing.Any]] = {
    # The setting of the authors' 2024 code, which produced every published CIFAR-100 and transfer number:
    # a sharper *student* and the current batch enqueued after the similarities are computed.
    "published": {"student_temperature": 0.04, "teacher_temperature": 0.10, "enqueue": "after"},
    # The defaults of the authors' 2025 code (and the newest abstract's "sharper teacher"): the current batch is
    # enqueued first, so each sample's own teacher embedding is among the anchors (τ_t → 0 gives InfoNCE).
    "code-2025": {"student_temperature": 0.10, "teacher_temperature": 0.02, "enqueue": "before"},
}


def check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}. Use a positive temperature such as 0.04 or 0.1.")


def similarity_logits(embeddings: torch.Tensor, memory: torch.Tensor, temperature: float) -> torch.Tensor:
    """`embeddings · memoryᵀ / temperature` in float32, shape (B, K).

    The (B, D) embeddings are divided, not the (B, K) similarities: the same numbers up to float rounding, with
    K/D times less elementwise work in the forward and in the backward pass (K = 16384, D = 128 in the paper).
    """
    return (embeddings.float() / temperature) @ memory.float().t()


def relational_log_probs(embeddings: torch.Tensor, memory: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log of softmax(embeddings · memoryᵀ / temperature) over the memory axis, in float32: shape (B, K)."""
    check_temperature("temperature", temperature)
    with float32_math(embeddings):
        return F.log_softmax(similarity_logits(embeddings, memory, temperature), dim=1)


def rrd_loss(
    student_embeddings: torch.Tensor,
    teacher_embeddings: torch.Tensor,
    memory: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """Relational Representation Distillation loss: mean over the batch of H(p_T, p_S).

    Args:
        student_embeddings: `(B, D)` L2-normalised student projections (receive the gradient).
        teacher_embeddings: `(B, D)` L2-normalised teacher projections (treated as constants).
        memory: `(K, D)` memory of past teacher embeddings (treated as constants).
        student_temperature: τ_s of p_S = softmax(z_s · Mᵀ / τ_s).
        teacher_temperature: τ_t of p_T = softmax(z_t · Mᵀ / τ_t).

    Returns:
        A float32 scalar: `-(1/B) Σ_i Σ_k p_T[i, k] log p_S[i, k]`.
    """
    if student_embeddings.dim() != 2 or teacher_embeddings.shape != student_embeddings.shape:
        raise ValueError(
            "student and teacher embeddings must both be (batch, dim) with the same shape, got "
            f"{tuple(student_embeddings.shape)} and {tuple(teacher_embeddings.shape)}."
        )
    if memory.dim() != 2 or memory.shape[1] != student_embeddings.shape[1]:
        raise ValueError(
            f"memory must be (K, {student_embeddings.shape[1]}), got {tuple(memory.shape)}: "
            "the memory dimension must equal the embedding dimension."
        )
    check_temperature("teacher_temperature", teacher_temperature)
    memory = memory.detach()
    with torch.no_grad(), float32_math(teacher_embeddings):
        target = torch.softmax(similarity_logits(teacher_embeddings.detach(), memory, teacher_temperature), dim=1)
    log_p_student = relational_log_probs(student_embeddings, memory, student_temperature)
    return -(target * log_p_student).sum(dim=1).mean()


@register_method
class RRD(DistillationMethod):
    """Projection heads + teacher memory around `rrd_loss` (see the module docstring); weight 1 in the paper.

    * `student_head`: Linear(student features → embedding_dim), L2-normalised, trained with the student.
    * `teacher_head`: Linear(teacher features → embedding_dim), L2-normalised, frozen.
    * `memory`: `fifo` (a ring of the `memory_size` newest teacher keys) or `momentum` (one slot per training sample,
      needs the batch `index`; `num_anchors` slots drawn at every step), updated in training mode only, with the
      teacher keys of every process (`context.gather`), so every process holds the same memory.
      `enqueue="before"` writes the batch first (its own keys become anchors), `"after"` compares with previous
      batches only.
    """

    name = "rrd"
    default_weight = 1.0
    needs_features = True

    def __init__(
        self,
        context: MethodContext,
        embedding_dim: int = 128,
        memory_size: int = 16384,
        student_temperature: float = 0.04,
        teacher_temperature: float = 0.10,
        enqueue: str = "after",
        memory_type: str = "fifo",
        memory_momentum: float = 0.5,
        num_anchors: int | None = None,
    ):
        super().__init__(context)
        options = dict(embedding_dim=embedding_dim, memory_size=memory_size, student_temperature=student_temperature,
                       teacher_temperature=teacher_temperature, enqueue=enqueue, memory_type=memory_type,
                       memory_momentum=memory_momentum, num_anchors=num_anchors)
        self.check_options(options, global_batch_size=context.global_batch_size)
        if memory_type == "momentum" and context.num_samples is None:
            raise ValueError("memory_type='momentum' keeps one slot per training sample: the context needs "
                             "num_samples (a train_dataset with an `index` column).")
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.enqueue = enqueue
        self.student_head = nn.Linear(context.student.features.flatten(1).shape[1], embedding_dim)
        self.teacher_head = nn.Linear(context.teacher.features.flatten(1).shape[1], embedding_dim).requires_grad_(False)
        self.memory = build_memory(memory_type, embedding_dim, memory_size, num_samples=context.num_samples,
                                   momentum=memory_momentum, seed=context.seed,
                                   num_anchors=DEFAULT_MOMENTUM_ANCHORS if num_anchors is None else num_anchors)
        self.needs_index = self.memory.needs_indices  # the momentum memory is addressed by dataset index

    @classmethod
    def check_options(cls, options, *, global_batch_size=None):
        for name in ("student_temperature", "teacher_temperature"):
            if name in options:
                check_temperature(name, options[name])
        if options.get("enqueue", "after") not in ENQUEUE_ORDERS:
            raise ValueError(f"enqueue must be one of {ENQUEUE_ORDERS}, got {options['enqueue']!r}.")
        memory_type = options.get("memory_type", "fifo")
        if memory_type not in MEMORY_TYPES:
            raise ValueError(f"memory_type must be one of {MEMORY_TYPES}, got {memory_type!r}.")
        if not 0 <= options.get("memory_momentum", 0.5) < 1:
            raise ValueError(f"memory_momentum must be in [0, 1), got {options['memory_momentum']}.")
        if options.get("embedding_dim", 128) < 1 or options.get("memory_size", 16384) < 1:
            raise ValueError("embedding_dim and memory_size must be >= 1.")
        num_anchors = options.get("num_anchors")
        if num_anchors is not None:
            if memory_type != "momentum":
                raise ValueError(f"num_anchors={num_anchors} applies to the momentum memory only (the FIFO memory "
                                 "compares with all of its memory_size keys): remove it or set memory_type='momentum'.")
            if num_anchors < 1:
                raise ValueError(f"num_anchors must be >= 1, got {num_anchors}.")
        memory_size = options.get("memory_size", 16384)
        if memory_type == "fifo" and global_batch_size is not None and memory_size < global_batch_size:
            # One step would overwrite the whole memory.
            raise ValueError(
                f"memory_size={memory_size} is smaller than the global batch ({global_batch_size} samples per step "
                "over all processes): raise memory_size (the published value is 16384) or lower the batch size."
            )

    @classmethod
    def uses_index(cls, options):
        return options.get("memory_type", "fifo") == "momentum"

    def embed(self, student_features: torch.Tensor, teacher_features: torch.Tensor):
        """L2-normalised float32 projections `(z_s, z_t)`; z_t carries no gradient."""
        with float32_math(student_features):
            z_s = F.normalize(self.student_head(student_features.flatten(1).float()), dim=1)
            with torch.no_grad():
                z_t = F.normalize(self.teacher_head(teacher_features.flatten(1).float()), dim=1)
        return z_s, z_t

    def forward(self, student, teacher, index=None, labels=None):
        z_s, z_t = self.embed(student.features, teacher.features)
        update = self.training
        if update:
            keys = self.context.gather(z_t)
            indices = self.context.gather(index) if self.memory.needs_indices and index is not None else None
            if self.enqueue == "before":
                self.memory.update(keys, indices)
        loss = rrd_loss(z_s, z_t, self.memory.anchors(), self.student_temperature, self.teacher_temperature)
        if update and self.enqueue == "after":
            self.memory.update(keys, indices)
        return loss


#: The options of the `rrd` method, read from its signature: `RRDConfig` has a field of the same name for each.
RRD_OPTION_FIELDS = tuple(inspect.signature(RRD.__init__).parameters)[2:]
