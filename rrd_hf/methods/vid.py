"""Variational information distillation (Ahn et al., CVPR 2019), as in RepDistiller `VID.py` (from the authors' code).

The teacher map t is modelled as a Gaussian with mean μ(s) (a 1×1-conv regressor of the student map) and a
learned per-channel variance σ²_c = softplus(log_scale_c) + eps; the loss is the mean negative log-likelihood
without its constant: `mean(½ ((μ − t)² / σ² + log σ²))` over batch, channels and positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import MethodContext, float32_math
from .feature import StagePairs, pool_to_common_size
from .registry import register_method

__all__ = ["VID", "VIDRegressor", "vid_loss", "vid_initial_log_scale"]


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
    with float32_math(pred_mean):
        mean, t = pred_mean.float(), target.detach().float()
        # softplus == log(1 + exp(x)) of the reference, computed without overflow
        pred_var = (F.softplus(log_scale.float()) + eps).view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((mean - t).pow(2) / pred_var + torch.log(pred_var))
        return neg_log_prob.mean()


class VIDRegressor(nn.Module):
    """VID's per-pair parts: a 1×1-conv regressor (student C → mid → mid → teacher C, ReLUs, no bias) and the
    per-channel `log_scale` (initial variance 5). RepDistiller builds it as `VIDLoss(s_C, t_C, t_C)`."""

    def __init__(self, s_channels: int, mid_channels: int, t_channels: int, init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(s_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, t_channels, 1, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((t_channels,), vid_initial_log_scale(init_pred_var, eps)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(x)


@register_method
class VID(StagePairs):
    """Variational information distillation over the stage pairs `feat[1:-1]` (regressor mid channels = teacher
    channels, initial variance 5), weight 1. Each pair's regressor and log-scale are trained."""

    name = "vid"
    default_weight = 1.0

    def __init__(self, context: MethodContext, init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__(context)
        s_maps, t_maps = self.stage_maps(context.student, "student"), self.stage_maps(context.teacher, "teacher")
        self.regressors = nn.ModuleList(
            VIDRegressor(s.shape[1], t.shape[1], t.shape[1], init_pred_var=init_pred_var, eps=eps)
            for s, t in zip(s_maps, t_maps)
        )

    def forward(self, student, teacher, index=None, labels=None):
        total = 0.0
        pairs = zip(student.hidden_states[1:-1], teacher.hidden_states[1:-1], self.regressors)
        for f_s, f_t, regressor in pairs:
            f_s, f_t = pool_to_common_size(f_s, f_t.detach())
            with float32_math(f_s):
                mean = regressor(f_s.float())
            total = total + vid_loss(mean, f_t, regressor.log_scale, regressor.eps)
        return total
