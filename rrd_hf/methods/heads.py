"""Trainable helper networks of the benchmark methods (RepDistiller `models/util.py`, `distiller_zoo/FT.py`)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["ConvReg", "LinearEmbed", "Connector", "Paraphraser", "Translator"]


class ConvReg(nn.Module):
    """FitNet's convolutional regressor from a student map shape to a teacher map shape (RepDistiller `ConvReg`).

    * student H = 2·teacher H: 3×3 conv, stride 2, padding 1;
    * student H = teacher H / 2: 4×4 transposed conv, stride 2, padding 1;
    * student H >= teacher H: conv with kernel (1 + sH − tH, 1 + sW − tW) (1×1 when equal);
    then BatchNorm(teacher C) and, with `use_relu`, a ReLU.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True):
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(
                f"no regressor from a student map of height {s_h} to a teacher map of height {t_h} (supported: equal "
                "or larger student maps, or exactly half the teacher's height); choose another hint layer."
            )
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


class LinearEmbed(nn.Module):
    """`Linear(dim_in → dim_out)` on the flattened input, no normalisation (RepDistiller `LinearEmbed`, used by CC)."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))


class Connector(nn.Module):
    """AB's connectors (RepDistiller `Connector`): identity where channels and height match, else `ConvReg` without ReLU."""

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]]):
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise ValueError(
                f"AB pairs the stages one to one: the student has {len(s_shapes)} stage maps, the teacher "
                f"{len(t_shapes)}."
            )
        self.connectors = nn.ModuleList(
            nn.Identity() if s[1] == t[1] and s[2] == t[2] else ConvReg(s, t, use_relu=False)
            for s, t in zip(s_shapes, t_shapes)
        )

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [connector(m) for connector, m in zip(self.connectors, maps)]


def _maybe_bn(channels: int, use_bn: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if use_bn else nn.Identity()


class Paraphraser(nn.Module):
    """FT's paraphraser (an auto-encoder of the teacher map; factor = encoder output), RepDistiller defaults:
    rate k = 0.5, no BatchNorm, LeakyReLU(0.1), 3×3 convs (transposed convs in the decoder)."""

    def __init__(self, t_channels: int, k: float = 0.5, use_bn: bool = False):
        super().__init__()
        c_in, c_out = t_channels, int(t_channels * k)
        if c_out < 1:
            raise ValueError(f"paraphraser rate k={k} gives {c_out} factor channels for {t_channels} teacher channels.")
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.encoder = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, 1, 1), _maybe_bn(c_in, use_bn), act(),
            nn.Conv2d(c_in, c_out, 3, 1, 1), _maybe_bn(c_out, use_bn), act(),
            nn.Conv2d(c_out, c_out, 3, 1, 1), _maybe_bn(c_out, use_bn), act(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c_out, c_out, 3, 1, 1), _maybe_bn(c_out, use_bn), act(),
            nn.ConvTranspose2d(c_out, c_in, 3, 1, 1), _maybe_bn(c_in, use_bn), act(),
            nn.ConvTranspose2d(c_in, c_in, 3, 1, 1), _maybe_bn(c_in, use_bn), act(),
        )

    def forward(self, x: torch.Tensor, is_factor: bool = False):
        factor = self.encoder(x)
        if is_factor:
            return factor
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """FT's translator: student map → a factor with the paraphraser's channels (k = 0.5, with BatchNorm)."""

    def __init__(self, s_channels: int, t_channels: int, k: float = 0.5, use_bn: bool = True):
        super().__init__()
        c_in, c_out = s_channels, int(t_channels * k)
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.encoder = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, 1, 1), _maybe_bn(c_in, use_bn), act(),
            nn.Conv2d(c_in, c_out, 3, 1, 1), _maybe_bn(c_out, use_bn), act(),
            nn.Conv2d(c_out, c_out, 3, 1, 1), _maybe_bn(c_out, use_bn), act(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)
