"""CIFAR ResNets, a port of RepDistiller ``models/resnet.py`` (resnet8 ... resnet110, resnet8x4, resnet32x4).

Module names follow the reference, so its checkpoints load after renaming ``fc.*`` to ``classifier.*``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ._cifar_common import CifarPreTrainedModel, global_pool
from .configuration_cifar_resnet import CifarResNetConfig


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Returns ``(out, preact)``, so a stage can hand out its pre-ReLU output without a second pass.

    Every ReLU and the residual addition are out of place, as in the reference: a BatchNorm output overwritten in
    place breaks full backward hooks on that BatchNorm (autograd rejects in-place changes to the views those hooks
    return), and gradient-inspection tools register exactly such hooks.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + residual
        return F.relu(preact), preact


class Bottleneck(nn.Module):
    """Returns ``(out, preact)`` as `BasicBlock` does, out of place for the same reason. Kept because the reference
    ResNet class supports it (depth 9n+2)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + residual
        return F.relu(preact), preact


def _run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stage's output and its last block's pre-ReLU map."""
    preact = x
    for block in stage:
        x, preact = block(x)
    return x, preact


class CifarResNetForImageClassification(CifarPreTrainedModel):
    """CIFAR ResNet classifier (RepDistiller ``resnet*``).

    ``hidden_states`` layout (B = batch, 32x32 input, ``w = num_filters``, ``e`` = block expansion):

    ====  ==============================  ===========================================
    idx   tensor                          resnet8 / resnet8x4 shape
    ====  ==============================  ===========================================
    0     stem conv-bn-relu               (B, w0, 32, 32)    16 / 32 channels
    1     layer1 output                   (B, w1*e, 32, 32)  16 / 64
    2     layer2 output                   (B, w2*e, 16, 16)  32 / 128
    3     layer3 output                   (B, w3*e, 8, 8)    64 / 256
    4     pooled, the classifier input    (B, feature_dim)   64 / 256
    ====  ==============================  ===========================================

    ``preact=True`` replaces entries 1-3 with the last block's output before its final ReLU. Entry 0 (the
    stem) stays post-ReLU, as in the reference.
    """

    config_class = CifarResNetConfig
    base_model_prefix = "cifar_resnet"
    _conv_init = "kaiming_fan_out"
    _linear_init = "torch_default"
    # RepDistiller resnet.py get_feat_modules(): conv1, bn1, relu, layer1, layer2, layer3 (relu is functional here).
    _feature_module_names = ("conv1", "bn1", "layer1", "layer2", "layer3")

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        block = BasicBlock if config.block_type == "basic" else Bottleneck
        n = config.blocks_per_stage
        nf = config.num_filters
        self._inplanes = nf[0]
        self.conv1 = nn.Conv2d(config.num_channels, nf[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf[0])
        self.layer1 = self._make_layer(block, nf[1], n)
        self.layer2 = self._make_layer(block, nf[2], n, stride=2)
        self.layer3 = self._make_layer(block, nf[3], n, stride=2)
        del self._inplanes
        self.classifier = nn.Linear(nf[3] * block.expansion, config.num_labels)
        self.post_init()

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _forward_features(self, pixel_values: torch.Tensor, preact: bool):
        f0 = F.relu(self.bn1(self.conv1(pixel_values)))
        f1, f1_pre = _run_stage(self.layer1, f0)
        f2, f2_pre = _run_stage(self.layer2, f1)
        f3, f3_pre = _run_stage(self.layer3, f2)
        pooled = global_pool(f3)
        features = [f0, f1_pre, f2_pre, f3_pre] if preact else [f0, f1, f2, f3]
        return features, pooled


__all__ = ["CifarResNetForImageClassification"]
