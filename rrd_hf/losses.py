"""Distillation losses as pure functions.

Every function here is stateless and differentiable only where the method says it should be: targets coming from
the teacher are detached inside the function, so a caller cannot leak gradient into the teacher side by accident.
All of them compute in float32, also when called under bf16/fp16 autocast, because softmaxes at temperatures of a
few hundredths overflow or lose all precision in half precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["rrd_loss", "kd_loss", "relational_log_probs"]


def _float32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def _check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}. Use a positive temperature such as 0.04 or 0.1.")


def relational_log_probs(embeddings: torch.Tensor, memory: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log of softmax(embeddings · memoryᵀ / temperature) over the memory axis, in float32: shape (B, K)."""
    _check_temperature("temperature", temperature)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        embeddings, memory = _float32(embeddings, memory)
        return F.log_softmax(embeddings @ memory.t() / temperature, dim=1)


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
    _check_temperature("teacher_temperature", teacher_temperature)
    memory = memory.detach()
    with torch.no_grad():
        target = relational_log_probs(teacher_embeddings.detach(), memory, teacher_temperature).exp()
    log_p_student = relational_log_probs(student_embeddings, memory, student_temperature)
    return -(target * log_p_student).sum(dim=1).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: KL(softmax(t/T) ‖ softmax(s/T)) · T², averaged over the batch (as in the CRD benchmark code)."""
    _check_temperature("kd temperature", temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "KD needs teacher and student to predict the same label set."
        )
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        student_logits, teacher_logits = _float32(student_logits, teacher_logits.detach())
        log_p_s = F.log_softmax(student_logits / temperature, dim=1)
        log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return kl * temperature**2
