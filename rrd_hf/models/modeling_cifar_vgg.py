"""CIFAR VGGs with batch norm, a port of RepDistiller ``models/vgg.py`` (vgg8_bn, vgg11_bn ... vgg19_bn).

The module names are the reference's (``block0`` ... ``block4``, ``classifier``), so its checkpoints load as they are.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ._cifar_common import CifarPreTrainedModel, global_pool
from .configuration_cifar_vgg import CifarVGGConfig


def _make_layers(widths: list[int], batch_norm: bool, in_channels: int) -> nn.Sequential:
    """conv(-bn)-relu units, without the last ReLU. The model applies that ReLU, so it can expose the
    pre-ReLU map."""
    layers: list[nn.Module] = []
    for v in widths:
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU())
        in_channels = v
    return nn.Sequential(*layers[:-1])


class CifarVGGForImageClassification(CifarPreTrainedModel):
    """CIFAR VGG classifier (RepDistiller ``vgg*_bn``).

    ``hidden_states`` layout (B = batch, 32x32 input, the same for every depth):

    ====  ====================================  ==================
    idx   tensor                                shape
    ====  ====================================  ==================
    0     relu(block0)                          (B, 64, 32, 32)
    1     relu(block1), after pool0             (B, 128, 16, 16)
    2     relu(block2), after pool1             (B, 256, 8, 8)
    3     relu(block3), after pool2             (B, 512, 4, 4)
    4     relu(block4) (no pool3 at 32x32)      (B, 512, 4, 4)
    5     pooled, the classifier input          (B, 512)
    ====  ====================================  ==================

    ``preact=True`` replaces entries 1-4 with the maps before their ReLU. Entry 0 stays post-ReLU, as in the
    reference. The reference applies ``pool3`` only when the input height is 64, and that is kept here.
    """

    config_class = CifarVGGConfig
    base_model_prefix = "cifar_vgg"
    _conv_init = "kaiming_fan_out"
    _linear_init = "normal_0.01"
    # RepDistiller vgg.py get_feat_modules(): block0, pool0, ..., block4 and the pools (functional here).
    _feature_module_names = ("block0", "block1", "block2", "block3", "block4")

    def __init__(self, config: CifarVGGConfig):
        super().__init__(config)
        s = config.stages
        bn = bool(config.batch_norm)
        self.block0 = _make_layers(s[0], bn, config.num_channels)
        self.block1 = _make_layers(s[1], bn, s[0][-1])
        self.block2 = _make_layers(s[2], bn, s[1][-1])
        self.block3 = _make_layers(s[3], bn, s[2][-1])
        self.block4 = _make_layers(s[4], bn, s[3][-1])
        self.classifier = nn.Linear(s[4][-1], config.num_labels)
        self.post_init()

    def _forward_features(self, pixel_values: torch.Tensor, preact: bool):
        h = pixel_values.shape[2]
        f0 = F.relu(self.block0(pixel_values))
        f1_pre = self.block1(F.max_pool2d(f0, kernel_size=2, stride=2))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(F.max_pool2d(f1, kernel_size=2, stride=2))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(F.max_pool2d(f2, kernel_size=2, stride=2))
        f3 = F.relu(f3_pre)
        x = F.max_pool2d(f3, kernel_size=2, stride=2) if h == 64 else f3
        f4_pre = self.block4(x)
        f4 = F.relu(f4_pre)
        pooled = global_pool(f4)
        features = [f0, f1_pre, f2_pre, f3_pre, f4_pre] if preact else [f0, f1, f2, f3, f4]
        return features, pooled


__all__ = ["CifarVGGForImageClassification"]
