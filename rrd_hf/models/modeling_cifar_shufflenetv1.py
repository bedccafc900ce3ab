"""CIFAR ShuffleNetV1, a port of RepDistiller ``models/ShuffleNetv1.py`` (ShuffleV1).

Module names follow the reference, so its checkpoints load after renaming ``linear.*`` to ``classifier.*``. The
reference never re-initialises, so the weights start from PyTorch's defaults.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ._cifar_common import CifarPreTrainedModel, channel_shuffle, global_pool
from .configuration_cifar_shufflenetv1 import CifarShuffleNetV1Config


class ShuffleBlock(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


class Bottleneck(nn.Module):
    """Returns ``(out, preact)``. A stride-2 block concatenates an avg-pooled shortcut (so the output width is
    ``out_planes + in_planes``); a stride-1 block adds it."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        # The first block after the 24-channel stem uses an ungrouped 1x1 conv, as in the reference.
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(preact), preact


def _run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    preact = x
    for block in stage:
        x, preact = block(x)
    return x, preact


class CifarShuffleNetV1ForImageClassification(CifarPreTrainedModel):
    """CIFAR ShuffleNetV1 classifier (RepDistiller ``ShuffleV1``).

    ``hidden_states`` layout for ShuffleV1 (B = batch, 32x32 input):

    ====  ============================  ==================
    idx   tensor                        shape
    ====  ============================  ==================
    0     stem 1x1 conv-bn-relu         (B, 24, 32, 32)
    1     layer1 output                 (B, 240, 16, 16)
    2     layer2 output                 (B, 480, 8, 8)
    3     layer3 output                 (B, 960, 4, 4)
    4     pooled, the classifier input  (B, 960)
    ====  ============================  ==================

    ``preact=True`` replaces entries 1-3 with the last block's output before its final ReLU.
    """

    config_class = CifarShuffleNetV1Config
    base_model_prefix = "cifar_shufflenetv1"
    _conv_init = "torch_default"
    _linear_init = "torch_default"
    # RepDistiller ShuffleNetv1.py get_feat_modules(): conv1, bn1, layer1, layer2, layer3.
    _feature_module_names = ("conv1", "bn1", "layer1", "layer2", "layer3")

    def __init__(self, config: CifarShuffleNetV1Config):
        super().__init__(config)
        self.conv1 = nn.Conv2d(config.num_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self._in_planes = 24
        self.layer1 = self._make_layer(config.out_planes[0], config.num_blocks[0], config.groups)
        self.layer2 = self._make_layer(config.out_planes[1], config.num_blocks[1], config.groups)
        self.layer3 = self._make_layer(config.out_planes[2], config.num_blocks[2], config.groups)
        del self._in_planes
        self.classifier = nn.Linear(config.out_planes[2], config.num_labels)
        self.post_init()

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self._in_planes if i == 0 else 0
            layers.append(Bottleneck(self._in_planes, out_planes - cat_planes, stride=stride, groups=groups))
            self._in_planes = out_planes
        return nn.Sequential(*layers)

    def _forward_features(self, pixel_values: torch.Tensor, preact: bool):
        f0 = F.relu(self.bn1(self.conv1(pixel_values)))
        f1, f1_pre = _run_stage(self.layer1, f0)
        f2, f2_pre = _run_stage(self.layer2, f1)
        f3, f3_pre = _run_stage(self.layer3, f2)
        pooled = global_pool(f3)
        features = [f0, f1_pre, f2_pre, f3_pre] if preact else [f0, f1, f2, f3]
        return features, pooled


__all__ = ["CifarShuffleNetV1ForImageClassification"]
