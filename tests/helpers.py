"""Tiny models and datasets for fast CPU tests."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedConfig, PreTrainedModel, TrainerCallback
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention


class TinyConvConfig(PreTrainedConfig):
    model_type = "rrd_test_tiny_conv"

    def __init__(self, width: int = 8, use_bn: bool = True, **kwargs):
        self.width = width
        self.use_bn = use_bn
        super().__init__(**kwargs)


class TinyConvForImageClassification(PreTrainedModel):
    """conv → (BN) → ReLU → conv → global pool → Linear: small, but with BN statistics and a `classifier`."""

    config_class = TinyConvConfig
    main_input_name = "pixel_values"
    accepts_loss_kwargs = False

    def __init__(self, config: TinyConvConfig):
        super().__init__(config)
        w = config.width
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=not config.use_bn)
        self.bn1 = nn.BatchNorm2d(w) if config.use_bn else nn.Identity()
        self.conv2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.classifier = nn.Linear(2 * w, config.num_labels)
        self.post_init()

    def forward(self, pixel_values, labels=None, **kwargs):
        x = F.relu(self.bn1(self.conv1(pixel_values)))
        x = F.relu(self.conv2(x))
        features = x.mean(dim=(2, 3))
        logits = self.classifier(features)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)


def tiny_model(num_labels: int = 4, width: int = 8, use_bn: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    return TinyConvForImageClassification(TinyConvConfig(num_labels=num_labels, width=width, use_bn=use_bn))


class TinyImageDataset(torch.utils.data.Dataset):
    """Deterministic images whose label is visible in the pixels, so a few steps of training make progress."""

    def __init__(self, n: int = 64, num_labels: int = 4, size: int = 8, seed: int = 0, with_index: bool = False):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % num_labels
        self.images = torch.randn(n, 3, size, size, generator=generator) * 0.5
        self.images[:, 0] += self.labels.view(-1, 1, 1).float() / num_labels
        self.with_index = with_index

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {"pixel_values": self.images[i], "labels": int(self.labels[i])}
        if self.with_index:
            item["index"] = i
        return item


class StopAt(TrainerCallback):
    """Interrupts training after `step` (the checkpoint of that step is written first)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
