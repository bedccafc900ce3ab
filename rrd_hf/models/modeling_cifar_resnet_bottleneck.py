"""Bottleneck ResNet50 for 32x32 inputs, a port of RepDistiller ``models/resnetv2.py``.

Module names follow the reference (``layerN.i.shortcut``), so its checkpoints load after renaming ``linear.*``
to ``classifier.*``.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ._cifar_common import CifarPreTrainedModel, global_pool
from .configuration_cifar_resnet_bottleneck import CifarResNetBottleneckConfig


class Bottleneck(nn.Module):
    """Returns ``(out, preact)``, so a stage can hand out its pre-ReLU output without a second pass."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.bn3.is_last_residual_bn = True  # read by _init_weights for zero_init_residual
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


def _run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    preact = x
    for block in stage:
        x, preact = block(x)
    return x, preact


class CifarResNetBottleneckForImageClassification(CifarPreTrainedModel):
    """Bottleneck ResNet classifier (RepDistiller ``ResNet50``).

    ``hidden_states`` layout for ResNet50 (B = batch, 32x32 input):

    ====  ============================  ====================
    idx   tensor                        shape
    ====  ============================  ====================
    0     stem conv-bn-relu             (B, 64, 32, 32)
    1     layer1 output                 (B, 256, 32, 32)
    2     layer2 output                 (B, 512, 16, 16)
    3     layer3 output                 (B, 1024, 8, 8)
    4     layer4 output                 (B, 2048, 4, 4)
    5     pooled, the classifier input  (B, 2048)
    ====  ============================  ====================

    ``preact=True`` replaces entries 1-4 with the last block's output before its final ReLU.
    """

    config_class = CifarResNetBottleneckConfig
    base_model_prefix = "cifar_resnet_bottleneck"
    _conv_init = "kaiming_fan_out"
    _linear_init = "torch_default"
    # RepDistiller resnetv2.py get_feat_modules(): conv1, bn1, layer1, layer2, layer3, layer4.
    _feature_module_names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, config: CifarResNetBottleneckConfig):
        super().__init__(config)
        w = config.widths
        self._in_planes = w[0]
        self.conv1 = nn.Conv2d(config.num_channels, w[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.layer1 = self._make_layer(w[0], config.num_blocks[0], stride=1)
        self.layer2 = self._make_layer(w[1], config.num_blocks[1], stride=2)
        self.layer3 = self._make_layer(w[2], config.num_blocks[2], stride=2)
        self.layer4 = self._make_layer(w[3], config.num_blocks[3], stride=2)
        del self._in_planes
        self.classifier = nn.Linear(w[3] * Bottleneck.expansion, config.num_labels)
        self.post_init()

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(Bottleneck(self._in_planes, planes, s))
            self._in_planes = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def _init_weights(self, module):
        super()._init_weights(module)
        # This is decided on the BN itself, not on the parent Bottleneck. transformers skips the init hook for
        # parameter-less modules of custom-code models.
        if getattr(module, "is_last_residual_bn", False) and self.config.zero_init_residual:
            init.zeros_(module.weight)

    def _forward_features(self, pixel_values: torch.Tensor, preact: bool):
        f0 = F.relu(self.bn1(self.conv1(pixel_values)))
        f1, f1_pre = _run_stage(self.layer1, f0)
        f2, f2_pre = _run_stage(self.layer2, f1)
        f3, f3_pre = _run_stage(self.layer3, f2)
        f4, f4_pre = _run_stage(self.layer4, f3)
        pooled = global_pool(f4)
        features = [f0, f1_pre, f2_pre, f3_pre, f4_pre] if preact else [f0, f1, f2, f3, f4]
        return features, pooled


__all__ = ["CifarResNetBottleneckForImageClassification"]
