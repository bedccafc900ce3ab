"""CIFAR MobileNetV2, a port of RepDistiller ``models/mobilenetv2.py`` (``mobile_half``: T=6, width 0.5).

Module names follow the reference (``conv1``, ``blocks.i.j.conv.k``, ``conv2``). Its checkpoints load after
renaming ``classifier.0.*`` to ``classifier.*``; the reference wraps the Linear in a Sequential.
"""

import torch
from torch import nn

from ._cifar_common import CifarPreTrainedModel, global_pool
from .configuration_cifar_mobilenetv2 import CifarMobileNetV2Config


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU())


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU())


class InvertedResidual(nn.Module):
    """pw-expand, dw 3x3, pw-linear. The ReLU modules stay inside ``conv``, so the reference's indices are kept."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class CifarMobileNetV2ForImageClassification(CifarPreTrainedModel):
    """CIFAR MobileNetV2 classifier (RepDistiller ``mobile_half``).

    ``hidden_states`` layout for width 0.5 (B = batch, 32x32 input):

    ====  ===================================  ==================
    idx   tensor                               shape
    ====  ===================================  ==================
    0     stem conv1 (stride 2)                (B, 16, 16, 16)
    1     after blocks[1]                      (B, 12, 16, 16)
    2     after blocks[2]                      (B, 16, 8, 8)
    3     after blocks[4]                      (B, 48, 4, 4)
    4     after blocks[6] (before conv2)       (B, 160, 2, 2)
    5     pooled conv2 output, classifier in   (B, 1280)
    ====  ===================================  ==================

    The reference has no pre-activation variant for this net: ``preact=True`` returns the same tensors. Entries
    1-4 end in a linear 1x1 conv + BN, so they are already pre-ReLU.
    """

    config_class = CifarMobileNetV2Config
    base_model_prefix = "cifar_mobilenetv2"
    _conv_init = "kaiming_fan_out"
    _linear_init = "normal_0.01"
    # RepDistiller mobilenetv2.py get_feat_modules(): conv1, blocks (not the last 1x1 conv2).
    _feature_module_names = ("conv1", "blocks")

    # t (expansion; "T" = config.expand_ratio), c (channels before width_mult), n (blocks), s (first stride).
    # Copied from the reference.
    _SETTING = (
        (1, 16, 1, 1),
        ("T", 24, 2, 1),
        ("T", 32, 3, 2),
        ("T", 64, 4, 2),
        ("T", 96, 3, 1),
        ("T", 160, 3, 2),
        ("T", 320, 1, 1),
    )

    def __init__(self, config: CifarMobileNetV2Config):
        super().__init__(config)
        wm = float(config.width_mult)
        input_channel = int(32 * wm)
        self.conv1 = conv_bn(config.num_channels, input_channel, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self._SETTING:
            t = int(config.expand_ratio) if t == "T" else t
            output_channel = int(c * wm)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.conv2 = conv_1x1_bn(input_channel, config.last_channel)
        self.classifier = nn.Linear(config.last_channel, config.num_labels)
        self.post_init()

    def _forward_features(self, pixel_values: torch.Tensor, preact: bool):
        f0 = self.conv1(pixel_values)
        f1 = self.blocks[1](self.blocks[0](f0))
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        pooled = global_pool(self.conv2(f4))
        return [f0, f1, f2, f3, f4], pooled


__all__ = ["CifarMobileNetV2ForImageClassification"]
