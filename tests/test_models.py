"""Tests for the CIFAR model zoo (rrd_hf.models): the architectures, the classifier contract and Hub readiness.

The expected numbers are the RepDistiller/CRD CIFAR-100 reference values. They are written out here rather
than computed from rrd_hf, so a wrong architecture fails these tests.
"""

import ast
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel, pipeline

import rrd_hf.models as zoo
from rrd_hf.data import CIFAR100_MEAN, CIFAR100_STD, cifar_image_processor, save_pretrained_with_processor
from rrd_hf.models import FEATURE_DIMS, MODEL_NAMES, build_model, convert_repdistiller_state_dict, get_config
from _models_helpers import FAMILY_REPS
from rrd_hf.models._cifar_common import channel_shuffle

REPO_ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).resolve().parent / "_models_helpers.py"

# name -> (#params with 100 labels, penultimate size). The numbers come from the task spec and RepDistiller.
EXPECTED = {
    "resnet8": (83_892, 64),
    "resnet14": (181_108, 64),
    "resnet20": (278_324, 64),
    "resnet32": (472_756, 64),
    "resnet44": (667_188, 64),
    "resnet56": (861_620, 64),
    "resnet110": (1_736_564, 64),
    "resnet8x4": (1_233_540, 256),
    "resnet32x4": (7_433_860, 256),
    "wrn_16_1": (180_916, 64),
    "wrn_16_2": (703_284, 128),
    "wrn_40_1": (569_780, 64),
    "wrn_40_2": (2_255_156, 128),
    "vgg8": (3_965_028, 512),
    "vgg11": (9_277_284, 512),
    "vgg13": (9_462_180, 512),
    "vgg16": (14_774_436, 512),
    "vgg19": (20_086_692, 512),
    "ResNet50": (23_705_252, 2048),
    "MobileNetV2": (812_836, 1280),
    "ShuffleV1": (949_258, 960),
    "ShuffleV2": (1_355_528, 1024),
}

MODEL_TYPE_PREFIX = {
    "resnet": "cifar_resnet",
    "wrn": "cifar_wrn",
    "vgg": "cifar_vgg",
    "ResNet50": "cifar_resnet_bottleneck",
    "MobileNetV2": "cifar_mobilenetv2",
    "ShuffleV1": "cifar_shufflenetv1",
    "ShuffleV2": "cifar_shufflenetv2",
}

# Reference (RepDistiller is_feat=True) feature shapes without the batch dim, for 32x32 inputs.
HIDDEN_SHAPES = {
    "resnet8": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)],
    "resnet8x4": [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)],
    "wrn_16_2": [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8), (128,)],
    "vgg8": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512,)],
    "ResNet50": [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4), (2048,)],
    "MobileNetV2": [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2), (1280,)],
    "ShuffleV1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4), (960,)],
    "ShuffleV2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4), (1024,)],
}

NUM_LABELS = 10
ID2LABEL = {i: f"cifar_class_{i}" for i in range(NUM_LABELS)}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread per test process. ``-n 2`` on a 2-core runner otherwise oversubscribes the cores,
    and OpenMP's spin-waiting then makes small convs 10-100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _model_type_for(name: str) -> str:
    for prefix, model_type in MODEL_TYPE_PREFIX.items():
        if name.startswith(prefix):
            return model_type
    raise KeyError(name)


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _make_realistic_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN random affine params and calibrated running stats, then switch to eval.

    Two reasons. A checkpoint that lost its BN state would then produce different outputs, so the round-trip
    tests can catch it. And eval activations stay O(1), where the fresh reference init makes MobileNetV2's
    logits vanish (about 1e-8).
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=g) * 0.1)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    model(_images(8, seed=seed + 1))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------------------
# Names, factory, configs
# --------------------------------------------------------------------------------------------------------------


def test_model_names_and_feature_dims_table():
    assert list(MODEL_NAMES) == list(EXPECTED)
    assert FEATURE_DIMS == {name: dim for name, (_, dim) in EXPECTED.items()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_param_count_feature_dim_and_classifier_contract(name):
    expected_params, feat = EXPECTED[name]
    model = build_model(name, num_labels=100).eval()
    assert isinstance(model, PreTrainedModel)
    assert _n_params(model) == expected_params

    cfg = model.config
    assert cfg.model_type == _model_type_for(name)
    assert cfg.feature_dim == feat and cfg.hidden_size == feat and cfg.num_labels == 100
    assert type(model).__name__.endswith("ForImageClassification")
    assert model.main_input_name == "pixel_values" and model.accepts_loss_kwargs is False
    assert type(model.classifier) is nn.Linear
    assert (model.classifier.in_features, model.classifier.out_features) == (feat, 100)

    # Non-persistent buffers come back as garbage from from_pretrained in transformers 5.x.
    assert all(not m._non_persistent_buffers_set for m in model.modules())
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    assert set(model.state_dict()) == names

    captured = []
    handle = model.classifier.register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
    with torch.no_grad():
        out = model(_images(2), output_hidden_states=True)
    handle.remove()
    assert len(captured) == 1, "the classifier must be called exactly once per forward"
    assert captured[0].shape == (2, feat)
    assert out.logits.shape == (2, 100)
    assert torch.equal(captured[0], out.hidden_states[-1])
    torch.testing.assert_close(out.logits, F.linear(captured[0], model.classifier.weight, model.classifier.bias))


def test_build_model_aliases_and_errors():
    assert type(build_model("RESNET8X4", num_labels=3)) is type(build_model("resnet8", num_labels=3))
    assert build_model("wrn-16-1", num_labels=3).config.widen_factor == 1
    assert build_model("vgg8_bn", num_labels=3).config.zoo_name == "vgg8"
    assert build_model("mobile_half", num_labels=3).config.model_type == "cifar_mobilenetv2"
    assert build_model("resnet50", num_labels=3, num_blocks=[1, 1, 1, 1]).config.feature_dim == 2048
    assert build_model("shufflev2", num_labels=3).config.model_type == "cifar_shufflenetv2"

    with pytest.raises(ValueError, match="Valid names: .*resnet8.*ShuffleV2"):
        build_model("resnet9000")
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="num_labels"):
            build_model("resnet8", num_labels=bad)
    with pytest.raises(ValueError, match="id2label"):
        build_model("resnet8", num_labels=10, id2label={0: "a", 1: "b"})
    with pytest.raises(ValueError, match="depth"):
        build_model("resnet8", depth=9)
    with pytest.raises(ValueError, match="num_labels"):
        zoo.CifarResNetConfig(num_labels=0)


def test_get_config_overrides_and_labels():
    cfg = get_config("wrn_40_2", num_labels=7, drop_rate=0.3)
    assert isinstance(cfg, zoo.CifarWideResNetConfig)
    assert (cfg.depth, cfg.widen_factor, cfg.drop_rate, cfg.num_labels) == (40, 2, 0.3, 7)
    cfg = get_config("resnet20", num_labels=NUM_LABELS, id2label=ID2LABEL)
    assert cfg.num_labels == NUM_LABELS and cfg.id2label[3] == "cifar_class_3"
    assert cfg.label2id["cifar_class_3"] == 3


def test_class_names_become_the_label_maps():
    """`build_model(name, class_names=...)` names the labels, so a pipeline answers with names, not LABEL_i."""
    names = ["apple", "bee", "cat"]
    for model in (build_model("resnet8", class_names=names), build_model("resnet8", 3, class_names=tuple(names))):
        assert model.config.num_labels == 3 and model.classifier.out_features == 3
        assert model.config.id2label == {0: "apple", 1: "bee", 2: "cat"}
        assert model.config.label2id == {"apple": 0, "bee": 1, "cat": 2}
    assert build_model("resnet8").config.num_labels == 100  # CIFAR-100 without names
    with pytest.raises(ValueError, match="3 names but num_labels=10"):
        build_model("resnet8", 10, class_names=names)
    with pytest.raises(ValueError, match="not both"):
        build_model("resnet8", class_names=names, id2label={0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match="unique.*'bee'"):
        build_model("resnet8", class_names=["apple", "bee", "bee"])
    with pytest.raises(ValueError, match="empty"):
        build_model("resnet8", class_names=[])
    with pytest.raises(TypeError, match="list of names"):
        build_model("resnet8", class_names="apple")


def test_config_json_round_trip_and_feature_dim_validation(tmp_path):
    cfg = get_config("resnet32x4", num_labels=100)
    cfg.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "cifar_resnet" and saved["feature_dim"] == 256 and saved["hidden_size"] == 256
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is zoo.CifarResNetConfig
    assert (loaded.depth, loaded.num_filters) == (32, [32, 64, 128, 256])
    assert (loaded.feature_dim, loaded.hidden_size) == (256, 256)
    # A feature_dim that contradicts the architecture is rejected, not silently used.
    with pytest.raises(ValueError, match="feature_dim"):
        zoo.CifarResNetConfig(depth=8, feature_dim=999)


def test_weight_init_follows_reference():
    """The reference's schemes: kaiming fan_out for convs (not ShuffleNet), BN 1/0, and per-family Linear init."""
    resnet = build_model("resnet8", num_labels=100)
    w = resnet.layer3[0].conv2.weight  # 64x64x3x3
    assert abs(w.std().item() / (2.0 / (64 * 9)) ** 0.5 - 1) < 0.1
    for bn in (m for m in resnet.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0) and torch.all(bn.running_var == 1)

    vgg = build_model("vgg8", num_labels=100)
    assert abs(vgg.classifier.weight.std().item() / 0.01 - 1) < 0.05
    assert torch.all(vgg.classifier.bias == 0) and torch.all(vgg.block0[0].bias == 0)

    mbv2 = build_model("MobileNetV2", num_labels=100)
    assert abs(mbv2.classifier.weight.std().item() / 0.01 - 1) < 0.05 and torch.all(mbv2.classifier.bias == 0)

    wrn = build_model("wrn_16_1", num_labels=100)
    assert torch.all(wrn.classifier.bias == 0) and wrn.classifier.weight.abs().max() <= 1 / 64**0.5

    # ShuffleNets keep PyTorch's defaults: kaiming_uniform(a=sqrt(5)), so |w| <= 1/sqrt(fan_in), std = bound/sqrt(3).
    shuffle = build_model("ShuffleV1", num_labels=100)
    w = shuffle.layer2[1].conv1.weight
    bound = 1 / w[0].numel() ** 0.5
    assert w.abs().max() <= bound and abs(w.std().item() / (bound / 3**0.5) - 1) < 0.1

    r50 = build_model("ResNet50", num_labels=10, num_blocks=[1, 1, 1, 1], zero_init_residual=True)
    assert all(torch.all(b.bn3.weight == 0) for stage in (r50.layer1, r50.layer4) for b in stage)
    r50 = build_model("ResNet50", num_labels=10, num_blocks=[1, 1, 1, 1])
    assert torch.all(r50.layer1[0].bn3.weight == 1)


def test_reference_state_dict_names_and_conversion():
    """Module names follow RepDistiller, so its pretrained teachers load after convert_repdistiller_state_dict."""
    spot_keys = {
        "resnet8": ["conv1.weight", "bn1.running_mean", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                    "layer3.0.downsample.1.num_batches_tracked"],
        "wrn_16_2": ["conv1.weight", "block1.layer.0.convShortcut.weight", "block2.layer.0.bn1.weight",
                     "block3.layer.1.conv2.weight", "bn1.running_var"],
        "vgg8": ["block0.0.weight", "block0.1.running_var", "block4.0.bias", "classifier.weight"],
        "ResNet50": ["conv1.weight", "layer1.0.shortcut.0.weight", "layer4.2.bn3.weight"],
        "MobileNetV2": ["conv1.0.weight", "blocks.0.0.conv.0.weight", "blocks.6.0.conv.7.running_mean",
                        "conv2.1.weight"],
        "ShuffleV1": ["conv1.weight", "layer1.0.conv1.weight", "layer3.3.bn3.bias"],
        "ShuffleV2": ["layer1.0.conv5.weight", "layer1.3.bn3.weight", "conv2.weight", "bn2.weight"],
    }
    ref_head = {"resnet8": "fc", "wrn_16_2": "fc", "vgg8": "classifier", "ResNet50": "linear",
                "MobileNetV2": "classifier.0", "ShuffleV1": "linear", "ShuffleV2": "linear"}
    for name, keys in spot_keys.items():
        model = build_model(name, num_labels=100)
        ours = model.state_dict()
        missing = [k for k in keys if k not in ours]
        assert not missing, f"{name}: {missing}"
        # A checkpoint as RepDistiller's train_teacher.py writes it: {"model": DataParallel state dict}.
        reference = {
            "module." + k.replace("classifier.", ref_head[name] + ".", 1): v.clone() * 2 for k, v in ours.items()
        }
        fresh = build_model(name, num_labels=100)
        fresh.load_state_dict(convert_repdistiller_state_dict({"model": reference, "epoch": 240}), strict=True)
        assert torch.equal(fresh.classifier.weight, ours["classifier.weight"] * 2)


# --------------------------------------------------------------------------------------------------------------
# Forward semantics: hidden states, preact, loss, return_dict
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HIDDEN_SHAPES))
def test_hidden_states_and_preact_layout(name):
    model = _make_realistic_(build_model(name, num_labels=NUM_LABELS))
    x = _images(2)
    with torch.no_grad():
        assert model(x).hidden_states is None
        post = model(x, output_hidden_states=True).hidden_states
        pre = model(x, preact=True).hidden_states  # preact implies output_hidden_states
    expected = [(2, *s) for s in HIDDEN_SHAPES[name]]
    assert [tuple(h.shape) for h in post] == expected
    assert [tuple(h.shape) for h in pre] == expected
    # The stem and the pooled vector do not change with preact.
    assert torch.equal(pre[0], post[0]) and torch.equal(pre[-1], post[-1])
    stages = range(1, len(post) - 1)

    if name == "MobileNetV2":  # no pre-activation variant in the reference
        assert all(torch.equal(pre[i], post[i]) for i in stages)
        return
    for i in stages:
        assert (pre[i] < 0).any(), f"stage {i} preact has no negatives: it is not pre-ReLU"
    if name.startswith("wrn"):
        # Reference: f1 <- block2.layer[0].bn1(f1), f2 <- block3.layer[0].bn1(f2), f3 <- bn1(f3).
        with torch.no_grad():
            torch.testing.assert_close(pre[1], model.block2.layer[0].bn1(post[1]))
            torch.testing.assert_close(pre[2], model.block3.layer[0].bn1(post[2]))
            torch.testing.assert_close(pre[3], model.bn1(post[3]))
    elif name == "ShuffleV2":
        # Reference preact is cat([x1, bn3(...)]) before the channel shuffle.
        for i in stages:
            torch.testing.assert_close(channel_shuffle(F.relu(pre[i]), 2), post[i])
    else:
        for i in stages:
            torch.testing.assert_close(F.relu(pre[i]), post[i])


def test_config_output_hidden_states_and_return_dict():
    model = _make_realistic_(build_model("resnet8", num_labels=NUM_LABELS, output_hidden_states=True))
    x = _images(2)
    with torch.no_grad():
        out = model(x)
        assert out.hidden_states is not None and len(out.hidden_states) == 5
        assert model(x, output_hidden_states=False).hidden_states is None
        tup = model(x, return_dict=False)
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.logits) and len(tup[1]) == 5


def test_loss_is_cross_entropy_hard_and_soft_labels():
    model = build_model("resnet8", num_labels=NUM_LABELS).train()
    x, y = _images(4), torch.tensor([0, 3, 9, 3])
    out = model(x, labels=y)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))
    out.loss.backward()
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0
    soft = torch.softmax(torch.randn(4, NUM_LABELS), dim=-1)
    out = model(x, labels=soft)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, soft))
    assert model(x).loss is None


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"])
def test_classifier_is_the_only_logit_path(name):
    """A forward hook that replaces the classifier output must replace the logits. Otherwise some other path
    computes them, and hook-based feature capture would see features that do not produce the logits."""
    model = _make_realistic_(build_model(name, num_labels=NUM_LABELS))
    captured = []
    pre = model.classifier.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    post = model.classifier.register_forward_hook(lambda m, a, o: torch.full_like(o, 7.0))
    with torch.no_grad():
        out = model(_images(2), output_hidden_states=True)
    pre.remove()
    post.remove()
    assert torch.all(out.logits == 7.0)
    assert torch.equal(captured[0], out.hidden_states[-1])
    assert captured[0].shape == (2, model.config.feature_dim)


# --------------------------------------------------------------------------------------------------------------
# What the trainer relies on: feature modules (init stages), the reference's preact forward, gradients (DDP)
# --------------------------------------------------------------------------------------------------------------

# RepDistiller `models/*.py`, `get_feat_modules()` of each family, in its order (written from the reference code).
# ReLU and pooling modules carry no parameters; rrd_hf applies them functionally, so they have no module here.
REPDISTILLER_FEAT_MODULES = {
    "resnet8": ["conv1", "bn1", "relu", "layer1", "layer2", "layer3"],  # resnet.py
    "wrn_16_2": ["conv1", "block1", "block2", "block3"],  # wrn.py
    "vgg8": ["block0", "pool0", "block1", "pool1", "block2", "pool2", "block3", "pool3", "block4", "pool4"],  # vgg.py
    "ResNet50": ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"],  # resnetv2.py
    "MobileNetV2": ["conv1", "blocks"],  # mobilenetv2.py
    "ShuffleV1": ["conv1", "bn1", "layer1", "layer2", "layer3"],  # ShuffleNetv1.py
    "ShuffleV2": ["conv1", "bn1", "layer1", "layer2", "layer3"],  # ShuffleNetv2.py
}
PARAMETER_FREE = {"relu", "pool0", "pool1", "pool2", "pool3", "pool4"}
# Parameters outside get_feat_modules() besides the classifier: the layers between the last stage and the pool.
OUTSIDE_FEATURE_MODULES = {"wrn_16_2": ("bn1.",), "MobileNetV2": ("conv2.",), "ShuffleV2": ("conv2.", "bn2.")}


@pytest.mark.parametrize("name", list(REPDISTILLER_FEAT_MODULES))
def test_feature_modules_are_repdistillers_get_feat_modules(name):
    model = build_model(name, num_labels=NUM_LABELS, **FAMILY_REPS[name])
    modules = model.feature_modules()
    by_identity = {id(module): attr for attr, module in model.named_children()}
    assert [by_identity[id(m)] for m in modules] == [
        attr for attr in REPDISTILLER_FEAT_MODULES[name] if attr not in PARAMETER_FREE
    ]
    # The same statement about parameters: everything but the classifier and the family's post-stage layers.
    inside = {id(p) for m in modules for p in m.parameters()}
    outside = ("classifier.", *OUTSIDE_FEATURE_MODULES.get(name, ()))
    for param_name, param in model.named_parameters():
        assert (id(param) in inside) == (not param_name.startswith(outside)), param_name


def _repdistiller_wrn_forward(model, x, preact):
    """RepDistiller `models/wrn.py` `WideResNet.forward(x, is_feat=True, preact=preact)`, transcribed line by line
    onto our modules (their names are the reference's; `fc` is `classifier`)."""

    def basic_block(block, x):  # BasicBlock.forward
        if not block.equalInOut:
            x = F.relu(block.bn1(x))
        else:
            out = F.relu(block.bn1(x))
        out = F.relu(block.bn2(block.conv1(out if block.equalInOut else x)))
        out = block.conv2(out)
        return torch.add(x if block.equalInOut else block.convShortcut(x), out)

    def network_block(stage, x):
        for block in stage.layer:
            x = basic_block(block, x)
        return x

    out = model.conv1(x)
    f0 = out
    out = network_block(model.block1, out)
    f1 = out
    out = network_block(model.block2, out)
    f2 = out
    out = network_block(model.block3, out)
    f3 = out
    out = F.relu(model.bn1(out))
    out = F.avg_pool2d(out, 8)
    out = out.view(-1, model.bn1.num_features)
    f4 = out
    out = model.classifier(out)
    if preact:
        f1 = model.block2.layer[0].bn1(f1)
        f2 = model.block3.layer[0].bn1(f2)
        f3 = model.bn1(f3)
    return [f0, f1, f2, f3, f4], out


@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_wrn_matches_the_reference_forward_including_its_second_bn_pass(preact, training):
    """Outputs, gradients and BatchNorm statistics after one step equal the reference's. With preact in train
    mode the reference updates three BatchNorms twice; in eval mode nothing moves."""
    ours = _make_realistic_(build_model("wrn_16_2", num_labels=NUM_LABELS)).train(training)
    reference = copy.deepcopy(ours)
    x = _images(4)
    out = ours(x, preact=preact, output_hidden_states=True)
    ref_feats, ref_logits = _repdistiller_wrn_forward(reference, x, preact)
    torch.testing.assert_close(out.logits, ref_logits)
    for ours_h, ref_h in zip(out.hidden_states, ref_feats, strict=True):
        torch.testing.assert_close(ours_h, ref_h)
    weights = [torch.randn(h.shape, generator=torch.Generator().manual_seed(i)) for i, h in enumerate(ref_feats)]
    sum((h * w).sum() for h, w in zip(out.hidden_states, weights)).add(out.logits.sum()).backward()
    sum((h * w).sum() for h, w in zip(ref_feats, weights)).add(ref_logits.sum()).backward()
    ref_params = dict(reference.named_parameters())
    for param_name, param in ours.named_parameters():  # equal up to summation order: relative to the largest entry
        expected = ref_params[param_name].grad
        assert (param.grad - expected).abs().max() <= 1e-5 * expected.abs().max(), param_name
    ref_buffers = dict(reference.named_buffers())
    for buffer_name, buffer in ours.named_buffers():
        torch.testing.assert_close(buffer, ref_buffers[buffer_name], msg=buffer_name)

    twice = {"block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"}
    for module_name, module in ours.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            calls = 0 if not training else 2 if preact and module_name in twice else 1
            assert int(module.num_batches_tracked) == 1 + calls, module_name  # _make_realistic_ tracked 1 batch


@pytest.mark.parametrize("name", list(EXPECTED))
def test_cross_entropy_reaches_every_parameter(name):
    """Every parameter gets a gradient from CE alone, with or without preact: the recipes' main stage can run under
    DDP with `ddp_find_unused_parameters: false`."""
    model = build_model(name, num_labels=NUM_LABELS).train()
    for preact in (False, True):
        model.zero_grad(set_to_none=True)
        model(_images(2), labels=torch.tensor([1, 2]), preact=preact).loss.backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == [], f"preact={preact}"


# --------------------------------------------------------------------------------------------------------------
# Precision, memory format, compile
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet8", "ShuffleV2"])
def test_bf16_autocast_cpu(name):
    model = _make_realistic_(build_model(name, num_labels=NUM_LABELS))
    x, y = _images(4), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        ref = model(x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, labels=y, preact=True)
    assert out.logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(h.dtype == torch.bfloat16 for h in out.hidden_states)
    # bf16 keeps about 3 significant digits, and the error compounds through ~50 layers (ShuffleV2: up to ~16 %
    # relative error seen). So check that the whole logit matrix points the same way, not elementwise closeness.
    cosine = torch.nn.functional.cosine_similarity(out.logits.float().flatten(), ref.flatten(), dim=0)
    assert cosine >= 0.95, f"bf16 logits diverge from fp32 (cosine {cosine:.3f})"

    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, labels=y).loss
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list(FAMILY_REPS))
def test_channels_last_matches_contiguous(name):
    model = _make_realistic_(build_model(name, num_labels=NUM_LABELS, **FAMILY_REPS[name]))
    x = _images(2)
    with torch.no_grad():
        ref = model(x, output_hidden_states=True)
        model = model.to(memory_format=torch.channels_last)
        assert model.classifier.weight.is_contiguous()
        out = model(x.contiguous(memory_format=torch.channels_last), output_hidden_states=True)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-4)
    for a, b in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_channels_last_training_step():
    model = build_model("ShuffleV1", num_labels=NUM_LABELS).to(memory_format=torch.channels_last).train()
    x = _images(4).contiguous(memory_format=torch.channels_last)
    model(x, labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_torch_compile_aot_eager_smallest_model():
    torch._dynamo.reset()
    eager = _make_realistic_(build_model("resnet8", num_labels=NUM_LABELS)).train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    out_c = compiled(x, labels=y, output_hidden_states=True)
    out_e = eager(x, labels=y, output_hidden_states=True)
    torch.testing.assert_close(out_c.logits, out_e.logits)
    torch.testing.assert_close(out_c.loss, out_e.loss)
    assert len(out_c.hidden_states) == 5
    out_c.loss.backward()
    out_e.loss.backward()
    torch.testing.assert_close(model.classifier.weight.grad, eager.classifier.weight.grad)
    torch.testing.assert_close(model.conv1.weight.grad, eager.conv1.weight.grad, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Image processor
# --------------------------------------------------------------------------------------------------------------


def test_cifar_image_processor_normalises_like_the_reference(tmp_path):
    assert CIFAR100_MEAN == (0.5071, 0.4867, 0.4408) and CIFAR100_STD == (0.2675, 0.2565, 0.2761)
    proc = cifar_image_processor()
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    pixels = proc(PIL.Image.fromarray(arr), return_tensors="pt")["pixel_values"]
    mean, std = torch.tensor(CIFAR100_MEAN)[:, None, None], torch.tensor(CIFAR100_STD)[:, None, None]
    expected = (torch.from_numpy(arr).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(pixels[0], expected, rtol=1e-5, atol=1e-5)
    # Larger images are resized to 32x32.
    big = proc(PIL.Image.fromarray(rng.integers(0, 256, size=(50, 40, 3), dtype=np.uint8)), return_tensors="pt")
    assert big["pixel_values"].shape == (1, 3, 32, 32)
    assert cifar_image_processor(size=24)(PIL.Image.fromarray(arr), return_tensors="pt")["pixel_values"].shape[-1] == 24

    proc.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(PIL.Image.fromarray(arr), return_tensors="pt")["pixel_values"], pixels)


# --------------------------------------------------------------------------------------------------------------
# Save / load, Auto classes, remote code, pipeline
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_zoo(tmp_path_factory):
    """One realistic checkpoint per family, saved with its processor, plus the expected outputs on fixed inputs."""
    root = tmp_path_factory.mktemp("cifar_zoo")
    x = _images(2, seed=123)
    manifest = {"models": {}, "pipeline_dir": str(root / "resnet8")}
    models = {}
    for name, overrides in FAMILY_REPS.items():
        model = _make_realistic_(build_model(name, class_names=list(ID2LABEL.values()), **overrides))
        path = save_pretrained_with_processor(model, root / name)
        with torch.no_grad():
            out = model(x, output_hidden_states=True)
            pre = model(x, preact=True)
        tensors = {"pixel_values": x, "logits": out.logits}
        tensors |= {f"hidden.{i}": h.contiguous() for i, h in enumerate(out.hidden_states)}
        tensors |= {f"preact.{i}": h.contiguous() for i, h in enumerate(pre.hidden_states)}
        save_file(tensors, str(root / f"{name}.expected.safetensors"))
        manifest["models"][name] = {"dir": str(path), "tensors": str(root / f"{name}.expected.safetensors")}
        models[name] = model
    manifest_path = root / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    return {"root": root, "manifest": manifest_path, "models": models, "inputs": x}


ALLOWED_SHIPPED_IMPORTS = {"math", "torch", "transformers", "collections", "typing"}


def test_saved_folder_is_self_contained(saved_zoo):
    for name, model in saved_zoo["models"].items():
        folder = saved_zoo["root"] / name
        config = json.loads((folder / "config.json").read_text())
        auto_map = config["auto_map"]
        cfg_module, cfg_cls = auto_map["AutoConfig"].split(".")
        mdl_module, mdl_cls = auto_map["AutoModelForImageClassification"].split(".")
        assert (cfg_cls, mdl_cls) == (type(model.config).__name__, type(model).__name__)
        assert cfg_module.startswith("configuration_cifar_") and mdl_module.startswith("modeling_cifar_")
        assert config["model_type"] == model.config.model_type and config["feature_dim"] == model.config.feature_dim
        assert (folder / "preprocessor_config.json").is_file() and (folder / "model.safetensors").is_file()
        shipped = {p.stem for p in folder.glob("*.py")}
        assert {cfg_module, mdl_module, "_cifar_common"} <= shipped
        for py in folder.glob("*.py"):
            for node in ast.walk(ast.parse(py.read_text())):
                if isinstance(node, ast.Import):
                    tops = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    tops = {node.module.split(".")[0]}
                elif isinstance(node, ast.ImportFrom):
                    assert node.module in shipped, f"{py.name} imports .{node.module}, which was not shipped"
                    continue
                else:
                    continue
                assert tops <= ALLOWED_SHIPPED_IMPORTS, f"{py.name} imports {tops - ALLOWED_SHIPPED_IMPORTS}"


def test_auto_round_trip_in_process(saved_zoo):
    x = saved_zoo["inputs"]
    for name, model in saved_zoo["models"].items():
        loaded = AutoModelForImageClassification.from_pretrained(saved_zoo["root"] / name).eval()
        assert type(loaded) is type(model)
        ref_sd, new_sd = model.state_dict(), loaded.state_dict()
        assert ref_sd.keys() == new_sd.keys()
        assert all(torch.equal(ref_sd[k], new_sd[k]) for k in ref_sd), name
        with torch.no_grad():
            assert torch.equal(loaded(x).logits, model(x).logits), name


def test_from_pretrained_with_new_head_keeps_the_body(saved_zoo):
    """A new label count re-initialises only the classifier: _init_weights must not touch loaded tensors."""
    folder = saved_zoo["root"] / "wrn_16_2"
    model = saved_zoo["models"]["wrn_16_2"]
    new_labels = {i: f"n{i}" for i in range(3)}
    loaded = AutoModelForImageClassification.from_pretrained(
        folder, id2label=new_labels, label2id={v: k for k, v in new_labels.items()}, ignore_mismatched_sizes=True
    )
    assert loaded.classifier.weight.shape == (3, 128) and loaded.config.num_labels == 3
    assert torch.all(loaded.classifier.bias == 0)  # the WRN reference zeroes the Linear bias
    ref = model.state_dict()
    for key, value in loaded.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, ref[key]), key


def test_pipeline_on_saved_checkpoint(saved_zoo):
    folder = saved_zoo["root"] / "resnet8"
    model = saved_zoo["models"]["resnet8"]
    classifier = pipeline("image-classification", model=str(folder))
    rng = np.random.default_rng(1)
    image = PIL.Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    preds = classifier(image, top_k=3)
    assert len(preds) == 3 and all(p["label"] in ID2LABEL.values() for p in preds)
    pixels = cifar_image_processor()(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = torch.softmax(model(pixels).logits[0], dim=-1)
    assert preds[0]["label"] == ID2LABEL[int(probs.argmax())]
    assert abs(preds[0]["score"] - float(probs.max())) < 1e-5
    # The processor resizes, so images of any size go through.
    big = PIL.Image.fromarray(rng.integers(0, 256, size=(64, 48, 3), dtype=np.uint8))
    assert classifier(big)[0]["label"] in ID2LABEL.values()


def _run_helper(args, env, cwd):
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, f"helper failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT_JSON=")]
    assert lines, f"no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT_JSON="):])


def _check_report(report, module_prefix):
    assert set(report["models"]) == set(FAMILY_REPS)
    for name, result in report["models"].items():
        assert result["class_module"].startswith(module_prefix), (name, result["class_module"])
        assert result["class_name"].endswith("ForImageClassification")
        assert result["feature_dim"] == FEATURE_DIMS[name]
        assert result["logits_equal"] and result["hidden_equal"] and result["preact_equal"], (name, result)
    labels = [p["label"] for p in report["pipeline"]]
    assert len(labels) == 3 and set(labels) <= set(ID2LABEL.values())


def test_auto_classes_in_fresh_process(saved_zoo, tmp_path):
    env = dict(os.environ)
    env["HF_HOME"] = str(tmp_path / "hf_home")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    report = _run_helper([str(HELPER), "registered", str(saved_zoo["manifest"])], env, tmp_path)
    _check_report(report, "rrd_hf.models.")


def test_trust_remote_code_without_rrd_hf(saved_zoo, tmp_path):
    """Load every family from the shipped code alone, in an isolated interpreter where ``import rrd_hf`` fails."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf_home"),  # fresh transformers_modules cache
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    report = _run_helper(["-I", str(HELPER), "remote", str(saved_zoo["manifest"])], env, tmp_path)
    assert report["rrd_hf_importable"] is False
    assert report["refused_without_trust"] is True
    assert report["rrd_hf_modules_loaded"] == []
    _check_report(report, "transformers_modules.")


def test_a_hook_on_a_resnet_block_sees_its_pre_relu_output():
    """A forward hook on a ResNet block gets ``(output, pre-ReLU map)`` for every block, not only the stages' last
    (the ones ``preact=True`` hands out), and the output is the ReLU of that map."""
    model = build_model("resnet14", num_labels=10).eval()
    seen = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = (output[0].clone(), output[1], output[1].clone())

        return hook

    for name in ("layer1.0", "layer1.1"):
        model.get_submodule(name).register_forward_hook(keep(name))
    with torch.no_grad():
        model(pixel_values=torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert set(seen) == {"layer1.0", "layer1.1"}
    for name, (out, preact, preact_at_hook_time) in seen.items():
        assert torch.equal(preact, preact_at_hook_time), name  # nothing overwrote it afterwards
        assert (preact < 0).any() and torch.equal(out, preact.clamp_min(0)), name


def test_a_hook_on_a_resnet_batch_norm_keeps_its_output_unmodified():
    """A forward hook (a user's, or rrd_hf's hidden-state taps) that keeps a BatchNorm's output sees it unchanged
    after the forward: the ReLU and the residual addition that follow create new tensors."""
    model = build_model("resnet8", num_labels=10).eval()
    seen = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = (output, output.clone())  # returns None: the output is not replaced

        return hook

    for name in ("bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.0.conv1"):
        model.get_submodule(name).register_forward_hook(keep(name))
    with torch.no_grad():
        model(pixel_values=torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    for name, (output, copy_at_hook_time) in seen.items():
        assert torch.equal(output, copy_at_hook_time), name
        assert (output < 0).any(), name  # pre-ReLU values survived
