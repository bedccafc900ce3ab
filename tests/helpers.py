"""Tiny models and datasets for fast CPU tests, and what the tests of the distillation methods share."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedConfig, PreTrainedModel, TrainerCallback
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from rrd_hf.methods import METHODS, Activations, MethodContext, build_method


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


# ------------------------------------------------------------------------------------------------ method tests
def randn(*shape, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).float()


def approx(value, expected, rel=1e-4, abs=1e-6):
    value = value.detach() if isinstance(value, torch.Tensor) else value
    expected = expected.detach() if isinstance(expected, torch.Tensor) else expected
    return pytest.approx(float(expected), rel=rel, abs=abs) == float(value)


def tiny_outputs(features):
    return Activations(logits=torch.zeros(features.shape[0], 3), features=features)


def tiny_context(s_dim=6, t_dim=5, **kwargs):
    return MethodContext(tiny_outputs(torch.zeros(2, s_dim)), tiny_outputs(torch.zeros(2, t_dim)), **kwargs)


_EXAMPLES = {}


@pytest.fixture(scope="module")
def zoo():
    """resnet8 (the student), resnet32 and wrn_16_2 (teachers) of rrd_hf's zoo, 10 classes; import it into a test
    module to use it there."""
    from rrd_hf.models import build_model

    torch.manual_seed(0)
    _EXAMPLES.clear()
    return {name: build_model(name, 10) for name in ("resnet8", "resnet32", "wrn_16_2")}


def zoo_outputs(model, x, preact, grad):
    with torch.set_grad_enabled(grad):
        return Activations.from_model_output(model(x, output_hidden_states=True, preact=preact))


def zoo_example(zoo, model_name, preact):
    """Example outputs of a dummy forward (eval, no grad) on 2x3x32x32, cached per model and preact."""
    key = (model_name, preact)
    if key not in _EXAMPLES:
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        _EXAMPLES[key] = zoo_outputs(zoo[model_name].eval(), x, preact, grad=False)
    return _EXAMPLES[key]


def build_on_zoo(zoo, name, teacher_name, **kwargs):
    """Method `name` built for resnet8 as the student and `teacher_name` as the teacher."""
    cls = METHODS[name]
    s_example = zoo_example(zoo, "resnet8", cls.needs_preact)
    t_example = zoo_example(zoo, teacher_name, cls.needs_preact)
    context = MethodContext(s_example, t_example, num_samples=50 if cls.uses_index(kwargs) else None)
    return build_method(name, context, **kwargs)
