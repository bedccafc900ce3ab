"""Variational information distillation (Ahn et al., CVPR 2019), as in RepDistiller `VID.py` (from the authors' code).

The teacher map t is modelled as a Gaussian with mean μ(s) (a 1×1-conv regressor of the student map) and a
learned per-channel variance σ²_c = softplus(log_scale_c) + eps; the loss is the mean negative log-likelihood
without its constant: `mean(½ ((μ − t)² / σ² + log σ²))` over batch, channels and positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["vid_loss", "vid_initial_log_scale"]


def vid_initial_log_scale(init_pred_var: float = 5.0, eps: float = 1e-5) -> float:
    """`log(exp(init_pred_var − eps) − 1)`: the log_scale for which softplus(log_scale) + eps = init_pred_var."""
    return math.log(math.expm1(init_pred_var - eps))


def vid_loss(pred_mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """VID negative log-likelihood of `target` (teacher map, detached) under N(pred_mean, softplus(log_scale) + eps).

    Args:
        pred_mean: `(B, C, H, W)` regressor output (student side, receives the gradient).
        target: `(B, C, H, W)` teacher map of the same shape (pool it to the student's size first if needed).
        log_scale: `(C,)` trainable parameter.
    """
    if pred_mean.shape != target.shape or pred_mean.dim() != 4:
        raise ValueError(
            f"VID needs the regressed student map and the teacher map as (B, C, H, W) of equal shape, got "
            f"{tuple(pred_mean.shape)} and {tuple(target.shape)}."
        )
    if log_scale.shape != (pred_mean.shape[1],):
        raise ValueError(f"log_scale must have shape ({pred_mean.shape[1]},), got {tuple(log_scale.shape)}.")
    with torch.autocast(device_type=pred_mean.device.type, enabled=False):
        mean, t = pred_mean.float(), target.detach().float()
        # softplus == log(1 + exp(x)) of the reference, computed without overflow
        pred_var = (F.softplus(log_scale.float()) + eps).view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((mean - t).pow(2) / pred_var + torch.log(pred_var))
        return neg_log_prob.mean()
