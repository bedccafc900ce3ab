"""CIFAR ShuffleNetV2, a port of RepDistiller ``models/ShuffleNetv2.py`` (ShuffleV2, net_size 1).

Module names follow the reference, so its checkpoints load after renaming ``linear.*`` to ``classifier.*``. The
reference never re-initialises, so the weights start from PyTorch's defaults.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ._cifar_common import CifarPreTrainedModel, channel_shuffle, global_pool
from .configuration_cifar_shufflenetv2 import CifarShuffleNetV2Config


class ShuffleBlock(nn.Module):
    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


class SplitBlock(nn.Module):
    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class BasicBlock(nn.Module):
    """Returns ``(out, preact)``. As in the reference, ``preact`` is ``cat([x1, bn3(...)])`` *before* the
    channel shuffle, so ``shuffle(relu(preact)) == out``."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = SplitBlock(split_ratio)
        in_channels = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=1, padding=1, groups=in_channels, bias=False
        )
        self.bn2 = nn.BatchNorm2d(in_channels)
        self.conv3 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(in_channels)
        self.shuffle = ShuffleBlock()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        out = self.shuffle(torch.cat([x1, F.relu(pre)], 1))
        return out, torch.cat([x1, pre], 1)


class DownBlock(nn.Module):
    """Stride-2 block. Both branches are concatenated, then shuffled."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid_channels = out_channels // 2
        # left
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        # right
        self.conv3 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv4 = nn.Conv2d(
            mid_channels, mid_channels, kernel_size=3, stride=2, padding=1, groups=mid_channels, bias=False
        )
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid_channels)
        self.shuffle = ShuffleBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.bn1(self.conv1(x))
        out1 = F.relu(self.bn2(self.conv2(out1)))
        out2 = F.relu(self.bn3(self.conv3(x)))
        out2 = self.bn4(self.conv4(out2))
        out2 = F.relu(self.bn5(self.conv5(out2)))
        return self.shuffle(torch.cat([out1, out2], 1))


def _run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = stage[0](x)  # DownBlock
    preact = x
    for block in stage[1:]:
        x, preact = block(x)
    return x, preact


class CifarShuffleNetV2ForImageClassification(CifarPreTrainedModel):
    """CIFAR ShuffleNetV2 classifier (RepDistiller ``ShuffleV2``).

    ``hidden_states`` layout for ShuffleV2 (B = batch, 32x32 input):

    ====  =====================================  ==================
    idx   tensor                                 shape
    ====  =====================================  ==================
    0     stem 1x1 conv-bn-relu                  (B, 24, 32, 32)
    1     layer1 output                          (B, 116, 16, 16)
    2     layer2 output                          (B, 232, 8, 8)
    3     layer3 output                          (B, 464, 4, 4)
    4     pooled relu(bn2(conv2)), classifier in (B, 1024)
    ====  =====================================  ==================

    ``preact=True`` replaces entries 1-3 with the last block's ``cat([x1, bn3(...)])``, taken before the ReLU
    and before the channel shuffle, exactly as the reference does.
    """

    config_class = CifarShuffleNetV2Config
    base_model_prefix = "cifar_shufflenetv2"
    _conv_init = "torch_default"
    _linear_init = "torch_default"
    # RepDistiller ShuffleNetv2.py get_feat_modules(): conv1, bn1, layer1, layer2, layer3 (not conv2/bn2).
    _feature_module_names = ("conv1", "bn1", "layer1", "layer2", "layer3")

    def __init__(self, config: CifarShuffleNetV2Config):
        super().__init__(config)
        oc = config.out_channels
        self.conv1 = nn.Conv2d(config.num_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self._in_channels = 24
        self.layer1 = self._make_layer(oc[0], config.num_blocks[0], config.split_ratio)
        self.layer2 = self._make_layer(oc[1], config.num_blocks[1], config.split_ratio)
        self.layer3 = self._make_layer(oc[2], config.num_blocks[2], config.split_ratio)
        del self._in_channels
        self.conv2 = nn.Conv2d(oc[2], oc[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(oc[3])
        self.classifier = nn.Linear(oc[3], config.num_labels)
        self.post_init()

    def _make_layer(self, out_channels: int, num_blocks: int, split_ratio: float) -> nn.Sequential:
        layers = [DownBlock(self._in_channels, out_channels)]
        layers += [BasicBlock(out_channels, split_ratio) for _ in range(num_blocks)]
        self._in_channels = out_channels
        return nn.Sequential(*layers)

    def _forward_features(self, pixel_values: torch.Tensor, preact: bool):
        f0 = F.relu(self.bn1(self.conv1(pixel_values)))
        f1, f1_pre = _run_stage(self.layer1, f0)
        f2, f2_pre = _run_stage(self.layer2, f1)
        f3, f3_pre = _run_stage(self.layer3, f2)
        pooled = global_pool(F.relu(self.bn2(self.conv2(f3))))
        features = [f0, f1_pre, f2_pre, f3_pre] if preact else [f0, f1, f2, f3]
        return features, pooled


__all__ = ["CifarShuffleNetV2ForImageClassification"]
