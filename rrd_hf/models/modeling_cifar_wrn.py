"""CIFAR Wide ResNets, a port of RepDistiller ``models/wrn.py``.

Module names follow the reference (``block1.layer.0.convShortcut`` and so on), so its checkpoints load after
renaming ``fc.*`` to ``classifier.*``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ._cifar_common import CifarPreTrainedModel, global_pool
from .configuration_cifar_wrn import CifarWideResNetConfig


class BasicBlock(nn.Module):
    """Pre-activation block: ``bn1 -> relu -> conv1 -> bn2 -> relu -> conv2``, plus the (projected) shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equalInOut
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        shortcut = x if self.equalInOut else self.convShortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """One stage. Its blocks are kept in ``self.layer`` so the state-dict keys match the reference."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class CifarWideResNetForImageClassification(CifarPreTrainedModel):
    """CIFAR Wide ResNet classifier (RepDistiller ``wrn_*``).

    ``hidden_states`` layout (B = batch, 32x32 input, k = widen_factor):

    ====  =======================================  ==================
    idx   tensor                                   shape
    ====  =======================================  ==================
    0     stem conv (no BN/ReLU: pre-act net)      (B, 16, 32, 32)
    1     block1 output                            (B, 16k, 32, 32)
    2     block2 output                            (B, 32k, 16, 16)
    3     block3 output                            (B, 64k, 8, 8)
    4     pooled relu(bn1(block3)), classifier in  (B, 64k)
    ====  =======================================  ==================

    With ``preact=True``, entries 1 and 2 become ``block{2,3}.layer[0].bn1`` applied to them, and entry 3
    becomes ``bn1(block3 output)``. These are the BN outputs that the next ReLU consumes, as in the reference.

    Reproduced quirk of the benchmark: the reference gets these three maps by calling the three BatchNorms a
    second time (``WideResNet.forward`` with ``is_feat=True, preact=True``). The values equal those of the first
    call, but in train mode the running statistics of those BatchNorms move twice per step, which changes the
    evaluated model. AB trains its WRN students this way, so ``preact=True`` does the same here.
    """

    config_class = CifarWideResNetConfig
    base_model_prefix = "cifar_wrn"
    _conv_init = "kaiming_fan_out"
    _linear_init = "torch_default_zero_bias"
    # RepDistiller wrn.py get_feat_modules(): conv1, block1, block2, block3 (not the final bn1).
    _feature_module_names = ("conv1", "block1", "block2", "block3")

    def __init__(self, config: CifarWideResNetConfig):
        super().__init__(config)
        ch = config.channels
        n = (config.depth - 4) // 6
        drop = float(config.drop_rate)
        self.conv1 = nn.Conv2d(config.num_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.classifier = nn.Linear(ch[3], config.num_labels)
        self.post_init()

    def _forward_features(self, pixel_values: torch.Tensor, preact: bool):
        f0 = self.conv1(pixel_values)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pooled = global_pool(F.relu(self.bn1(f3)))
        if preact:  # second BN calls, as the reference makes them (see the class docstring)
            f1, f2, f3 = self.block2.layer[0].bn1(f1), self.block3.layer[0].bn1(f2), self.bn1(f3)
        return [f0, f1, f2, f3], pooled


__all__ = ["CifarWideResNetForImageClassification"]
