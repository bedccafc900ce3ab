"""Relational (sample-to-sample) distillation losses of the CRD benchmark, as pure functions (float32, teacher detached).

* SP (Tung & Mori 2019): `sp_loss`, row-normalised Gram matrices of the flattened maps.
* CC (Peng et al. 2019): `cc_loss`. Default `kernel="repdistiller"` is the form in RepDistiller `CC.py`, which
  produced the benchmark numbers with weight 0.02: `mean_i Σ_d |e_s − e_t|_i,d · |e_s − e_t|_{i+1},d` over
  consecutive samples of the batch. `kernel="gaussian"` is the paper's correlation congruence with the Gaussian RBF
  kernel approximated by its order-P Taylor series (γ = 0.4, P = 2, as in torchdistill's CCKD configs):
  `‖K(e_s) − K(e_t)‖²_F / B²`, `K_ij = e^{−2γ} Σ_{p≤P} (2γ)^p / p! (e_iᵀ e_j)^p` on L2-normalised embeddings.
* RKD (Park et al. 2019): `rkd_loss`, distance (weight 25) + angle (weight 50), smooth-L1.
* PKT (Passalis & Tefas 2018): `pkt_loss`, cosine-kernel conditional probabilities, KL.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import DistillationMethod, MethodContext, float32_math
from .heads import LinearEmbed
from .registry import register_method

__all__ = ["SP", "CC", "RKD", "PKT", "sp_loss", "cc_loss", "rkd_pdist", "rkd_loss", "pkt_loss", "CC_KERNELS"]

CC_KERNELS = ("repdistiller", "gaussian")


def _check_pair(name: str, f_s: torch.Tensor, f_t: torch.Tensor, same_dim: bool = False) -> None:
    if f_s.dim() < 2 or f_t.dim() < 2 or f_s.shape[0] != f_t.shape[0]:
        raise ValueError(
            f"{name} needs student and teacher tensors with the same batch size (B, ...), got {tuple(f_s.shape)} "
            f"and {tuple(f_t.shape)}."
        )
    if f_s.shape[0] < 2:
        raise ValueError(f"{name} relates samples to each other and needs a batch of at least 2, got {f_s.shape[0]}.")
    if same_dim and f_s.flatten(1).shape[1] != f_t.flatten(1).shape[1]:
        raise ValueError(
            f"{name} compares the vectors directly and needs equal dimensions, got {f_s.flatten(1).shape[1]} and "
            f"{f_t.flatten(1).shape[1]}: embed both into the same dimension first."
        )


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Similarity preserving: `‖normalize_rows(G_t) − normalize_rows(G_s)‖²_F / B²`, `G = f fᵀ` of flattened maps."""
    _check_pair("SP", f_s, f_t)
    with float32_math(f_s):
        batch = f_s.shape[0]
        s = f_s.float().reshape(batch, -1)
        t = f_t.detach().float().reshape(batch, -1)
        g_s = F.normalize(s @ s.t(), dim=1)
        g_t = F.normalize(t @ t.t(), dim=1)
        return (g_t - g_s).pow(2).sum() / (batch * batch)


def _taylor_rbf(e: torch.Tensor, gamma: float, max_order: int) -> torch.Tensor:
    dots = e @ e.t()
    kernel = torch.ones_like(dots)
    for p in range(1, max_order + 1):
        kernel = kernel + (2 * gamma) ** p / math.factorial(p) * dots.pow(p)
    return kernel * math.exp(-2 * gamma)


def cc_loss(
    e_s: torch.Tensor,
    e_t: torch.Tensor,
    kernel: str = "repdistiller",
    gamma: float = 0.4,
    max_order: int = 2,
) -> torch.Tensor:
    """Correlation congruence of the (embedded) student and teacher vectors, see the module docstring.

    `e_t` is the *trainable* teacher embedding in RepDistiller (its `embed_t` is optimised), so it is not detached
    here; detach the teacher's features before embedding them.
    """
    if kernel not in CC_KERNELS:
        raise ValueError(f"CC kernel must be one of {CC_KERNELS}, got {kernel!r}.")
    _check_pair("CC", e_s, e_t, same_dim=kernel == "repdistiller")
    with float32_math(e_s):
        s, t = e_s.float().flatten(1), e_t.float().flatten(1)
        if kernel == "repdistiller":
            delta = (s - t).abs()
            return (delta[:-1] * delta[1:]).sum(1).mean()
        batch = s.shape[0]
        k_s = _taylor_rbf(F.normalize(s, dim=1), gamma, max_order)
        k_t = _taylor_rbf(F.normalize(t, dim=1), gamma, max_order)
        return (k_s - k_t).pow(2).sum() / (batch * batch)


def rkd_pdist(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances as RepDistiller computes them (clamped at eps, zero diagonal)."""
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    off_diagonal = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return res * off_diagonal


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    # The mean over the nonzero distances (RepDistiller `d[d > 0].mean()`) as a ratio of sums: the boolean
    # selection would make the host wait for the accelerator to learn its size.
    d = rkd_pdist(e)
    return d / (d.sum() / (d > 0).sum())


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[i, j] = e_j − e_i
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def rkd_loss(
    f_s: torch.Tensor, f_t: torch.Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> torch.Tensor:
    """Relational KD: `w_d · smoothL1(ψ_D(s), ψ_D(t)) + w_a · smoothL1(ψ_A(s), ψ_A(t))` (RepDistiller `RKDLoss`).

    ψ_D: pairwise distances divided by their mean over nonzero entries; ψ_A: cosines of the angles ∠(e_j − e_i,
    e_k − e_i) over all triplets. Smooth-L1 with beta = 1, mean reduction.
    """
    _check_pair("RKD", f_s, f_t)
    with float32_math(f_s):
        s = f_s.float().reshape(f_s.shape[0], -1)
        t = f_t.detach().float().reshape(f_t.shape[0], -1)
        with torch.no_grad():
            t_d, t_angle = _normalised_distances(t), _angles(t)
        loss_d = F.smooth_l1_loss(_normalised_distances(s), t_d)
        loss_a = F.smooth_l1_loss(_angles(s), t_angle)
        return distance_weight * loss_d + angle_weight * loss_a


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer with the cosine kernel (RepDistiller `PKT.cosine_similarity_loss`).

    `K = (cos + 1) / 2` between all pairs in the batch, rows normalised to conditional probabilities, then
    `mean_ij P_t log((P_t + eps) / (P_s + eps))` (a mean over B² entries, as the reference).
    """
    _check_pair("PKT", f_s, f_t)
    with float32_math(f_s):

        def conditional(x: torch.Tensor) -> torch.Tensor:
            x = x.reshape(x.shape[0], -1)
            x = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
            x = torch.nan_to_num(x, nan=0.0)  # the reference zeroes NaNs (in place)
            sim = (x @ x.t() + 1.0) / 2.0
            return sim / sim.sum(dim=1, keepdim=True)

        p_s = conditional(f_s.float())
        p_t = conditional(f_t.detach().float())
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


# ------------------------------------------------------------------------------------------------ the methods
@register_method
class SP(DistillationMethod):
    """Similarity preserving on the last stage output `feat[-2]`, weight 3000."""

    name = "sp"
    needs_hidden_states = True
    default_weight = 3000.0

    def forward(self, student, teacher, index=None, labels=None):
        return sp_loss(student.hidden_states[-2], teacher.hidden_states[-2])


@register_method
class CC(DistillationMethod):
    """Correlation congruence on `LinearEmbed(feat[-1]) → 128` of both models (both embeddings trained), weight 0.02.

    `kernel="repdistiller"` (default) is the form in RepDistiller's `CC.py` that produced the benchmark numbers;
    `kernel="gaussian"` the paper's Taylor-approximated Gaussian RBF (gamma 0.4, order 2). See `cc_loss`.
    """

    name = "cc"
    needs_features = True
    default_weight = 0.02

    def __init__(self, context: MethodContext, embedding_dim: int = 128, kernel: str = "repdistiller",
                 gamma: float = 0.4, max_order: int = 2):
        super().__init__(context)
        if kernel not in CC_KERNELS:
            raise ValueError(f"cc kernel must be one of {CC_KERNELS}, got {kernel!r}.")
        self.embed_s = LinearEmbed(context.student.features.flatten(1).shape[1], embedding_dim)
        self.embed_t = LinearEmbed(context.teacher.features.flatten(1).shape[1], embedding_dim)
        self.kernel, self.gamma, self.max_order = kernel, float(gamma), int(max_order)

    def forward(self, student, teacher, index=None, labels=None):
        with float32_math(student.features):
            e_s = self.embed_s(student.features.float())
            e_t = self.embed_t(teacher.features.detach().float())
        return cc_loss(e_s, e_t, self.kernel, self.gamma, self.max_order)


@register_method
class RKD(DistillationMethod):
    """Relational KD on `feat[-1]`: distance (25) + angle (50), weight 1."""

    name = "rkd"
    needs_features = True
    default_weight = 1.0

    def __init__(self, context: MethodContext, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__(context)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def forward(self, student, teacher, index=None, labels=None):
        return rkd_loss(student.features, teacher.features, self.distance_weight, self.angle_weight)


@register_method
class PKT(DistillationMethod):
    """Probabilistic knowledge transfer (cosine kernel) on `feat[-1]`, weight 30000."""

    name = "pkt"
    needs_features = True
    default_weight = 30000.0

    def forward(self, student, teacher, index=None, labels=None):
        return pkt_loss(student.features, teacher.features)
