"""The frozen teacher's BatchNorms folded into its convolutions: same outputs, only safe pairs, user's module untouched.

The reference is PyTorch's own eval-mode `nn.BatchNorm*` run after the convolution (the unfolded module), with
running statistics and affine parameters drawn far from their identity defaults, so a wrong fold shows.
"""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import TinyImageDataset, tiny_model
from rrd_hf import RRDConfig, RRDTrainer
from rrd_hf.classifiers import batch_norm_folding
from rrd_hf.classifiers.batch_norm_folding import fold_batch_norms, foldable_pairs
from rrd_hf.models import MODEL_NAMES, build_model


def randomise_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            if module.running_mean is None:
                continue
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.3)
            if module.affine:
                module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval().requires_grad_(False)


def images(n=2, channels=3, size=32, seed=1):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def assert_outputs_close(expected, actual):
    expected, actual = batch_norm_folding._tensors(expected), batch_norm_folding._tensors(actual)
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_zoo_model_gives_the_same_outputs_folded(name):
    model = randomise_statistics(build_model(name, num_labels=10)).to(memory_format=torch.channels_last)
    x = images().contiguous(memory_format=torch.channels_last)
    before = copy.deepcopy(model.state_dict())

    def run(m):
        return m(pixel_values=x, output_hidden_states=True, preact=True)

    folded, names = fold_batch_norms(model, run)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert names and set(names) <= set(norms)
    with torch.no_grad():
        assert_outputs_close(run(model), run(folded))  # logits, every hidden state and pre-activation
    assert [n for n, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == \
        [n for n in norms if n not in names]
    # the user's module is untouched: same parameters, same values, BatchNorms still in place
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_resnet_folds_every_batch_norm_and_a_pre_activation_wrn_only_those_after_a_convolution():
    resnet = randomise_statistics(build_model("resnet8", num_labels=10))
    _, names = fold_batch_norms(resnet, lambda m: m(pixel_values=images()))
    assert sorted(names) == sorted(n for n, m in resnet.named_modules() if isinstance(m, nn.BatchNorm2d))
    wrn = randomise_statistics(build_model("wrn_16_1", num_labels=10))
    _, names = fold_batch_norms(wrn, lambda m: m(pixel_values=images()))
    # A WRN block is BN → ReLU → conv → BN → ReLU → conv: its first BN reads the block input, its second a conv.
    assert names and all(name.endswith("bn2") for name in names)
    assert not any(name.endswith("bn1") for name in names)


class Chain(nn.Module):
    """conv → BN → ReLU, with switches that make folding unsafe."""

    def __init__(self, dims=2, bias=False, reuse=False, returned=False, in_place=False, order="conv_first"):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d)[dims - 1](3, 5, 3, padding=1, bias=bias)
        norm = (nn.BatchNorm1d, nn.BatchNorm2d)[dims - 1](5)
        if order == "conv_first":
            self.conv, self.norm = conv, norm
        else:  # registered in the other order: dataflow, not module order, decides
            self.norm, self.conv = norm, conv
        self.reuse, self.returned, self.in_place = reuse, returned, in_place

    def forward(self, x):
        y = self.conv(x)
        if self.in_place:
            y.add_(1.0)
        out = F.relu(self.norm(y))
        if self.reuse:
            out = out + y
        return (out, y) if self.returned else out


def fold(model, dims=2):
    model = randomise_statistics(model)
    x = images(size=8) if dims == 2 else images(size=8)[..., 0]
    folded, names = fold_batch_norms(model, lambda m: m(x))
    with torch.no_grad():
        assert_outputs_close(model(x), folded(x))
    return names


@pytest.mark.parametrize("dims,bias,order", [(2, False, "conv_first"), (2, True, "conv_first"), (1, True, "conv_first"),
                                             (2, False, "norm_first")])
def test_a_convolution_feeding_only_a_batch_norm_is_folded(dims, bias, order):
    assert fold(Chain(dims=dims, bias=bias, order=order), dims) == ["norm"]


@pytest.mark.parametrize("switch", ["reuse", "returned", "in_place"])
def test_a_convolution_output_used_elsewhere_is_not_folded(switch):
    model = randomise_statistics(Chain(**{switch: True}))
    assert foldable_pairs(model, lambda m: m(images(size=8))) == []  # the trace alone refuses it
    assert fold(model) == []


def test_unsafe_modules_are_not_folded():
    model = randomise_statistics(Chain())
    model.norm.train()
    assert foldable_pairs(model, lambda m: m(images(size=8))) == []

    no_statistics = Chain()
    no_statistics.norm = nn.BatchNorm2d(5, track_running_stats=False)
    assert fold(no_statistics) == []

    for hooked in ("conv", "norm"):
        model = Chain()
        getattr(model, hooked).register_forward_hook(lambda *args: None)
        assert fold(model) == [], hooked

    class OwnNorm(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    custom = Chain()
    custom.norm = OwnNorm(5)
    assert fold(custom) == []

    class Shared(nn.Module):  # one convolution called twice
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.norm2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.norm2(self.conv(self.norm(self.conv(x))))

    assert fold(Shared()) == []

    half = randomise_statistics(Chain()).to(torch.bfloat16)
    assert foldable_pairs(half, lambda m: m(images(size=8).to(torch.bfloat16))) == []


def test_a_fold_that_changes_the_outputs_is_dropped_with_a_warning(monkeypatch, caplog):
    model = randomise_statistics(Chain())
    original = batch_norm_folding._folded_conv

    def wrong(conv, norm):
        folded = original(conv, norm)
        folded.bias.data += 1.0
        return folded

    monkeypatch.setattr(batch_norm_folding, "_folded_conv", wrong)
    with caplog.at_level(logging.WARNING, logger="rrd_hf.classifiers.batch_norm_folding"):
        folded, names = fold_batch_norms(model, lambda m: m(images(size=8)))
    assert folded is model and names == []
    assert "changed the teacher's outputs" in caplog.text


def test_the_folded_copy_shares_untouched_modules_and_hooks():
    model = randomise_statistics(build_model("resnet8", num_labels=10))
    seen = []
    model.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    folded, names = fold_batch_norms(model, lambda m: m(pixel_values=images()))
    assert folded is not model and folded.classifier is model.classifier
    assert folded.layer1[0].conv1 is not model.layer1[0].conv1 and isinstance(folded.layer1[0].bn1, nn.Identity)
    assert isinstance(model.layer1[0].bn1, nn.BatchNorm2d)
    seen.clear()
    with torch.no_grad():
        folded(pixel_values=images())
    assert seen == [torch.Size([2, 64])]  # the user's hook on a shared module still fires


def make_trainer(tmp_path, teacher, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8, memory_size=32,
                  use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", learning_rate=0.05,
                  optim="sgd", dataloader_num_workers=0, seed=0, kd_weight=1.0, logging_steps=1)
    values.update(overrides)
    return RRDTrainer(model=tiny_model(seed=1), teacher_model=teacher, args=RRDConfig(**values),
                      train_dataset=TinyImageDataset(32, with_index=True))


def test_the_trainer_folds_the_teacher_and_trains_as_with_the_unfolded_one(tmp_path):
    teacher = randomise_statistics(tiny_model(width=16, seed=2))
    before = copy.deepcopy(teacher.state_dict())
    folded = make_trainer(tmp_path / "a", teacher, fold_teacher_batch_norm=True)
    assert isinstance(folded.teacher.model.bn1, nn.Identity) and folded.teacher.model.conv1.bias is not None
    assert isinstance(teacher.bn1, nn.BatchNorm2d)  # the module the user passed
    plain = make_trainer(tmp_path / "b", teacher)  # the default: unfolded
    assert plain.teacher.model is teacher
    folded.train()
    plain.train()
    losses = [[entry["loss"] for entry in t.state.log_history if "loss" in entry] for t in (folded, plain)]
    assert len(losses[0]) == 3
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())
    assert not folded.teacher.model.training


def test_bf16_teachers_are_not_folded(tmp_path):
    teacher = randomise_statistics(tiny_model(width=16, seed=2))
    trainer = make_trainer(tmp_path, teacher, bf16=True, fold_teacher_batch_norm=True)
    assert isinstance(trainer.teacher.model.bn1, nn.BatchNorm2d)


def test_a_teacher_with_a_nan_statistic_is_left_unfolded_and_said_so(caplog):
    model = randomise_statistics(Chain())
    model.norm.running_var[0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="rrd_hf.classifiers.batch_norm_folding"):
        folded, names = fold_batch_norms(model, lambda m: m(images(size=8)))
    assert folded is model and names == [] and "not finite" in caplog.text
