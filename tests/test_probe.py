"""The transfer linear probe on generated STL-10-schema data, and one real Tiny ImageNet run (slow)."""

import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image

from helpers import tiny_model
from rrd_hf.data import STL10_CLASS_NAMES
from rrd_hf.models import build_model
from rrd_hf.evaluation.probe import LinearProbeHead, attach_linear_probe, default_probe_lr, linear_probe

FAST = dict(epochs=2, milestones=[1], batch_size=16, device="cpu", progress=False)


def make_stl10_split(n, seed):
    """`tanganke/stl10` schema (96x96 RGB, 10 named classes); the class sets the dominant colour, so it is learnable."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 80, size=(n, 96, 96, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, :, :, label % 3] += np.uint8(60 + 17 * label)
    features = Features({"image": Image(), "label": ClassLabel(names=list(STL10_CLASS_NAMES))})
    return Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)


@pytest.fixture(scope="module")
def stl10_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("stl10")
    (root / "data").mkdir()
    make_stl10_split(60, 0).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    make_stl10_split(40, 1).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def backbone_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("classifier.")}


def test_only_the_linear_layer_trains_and_batchnorm_statistics_stay_frozen(stl10_dir):
    model = tiny_model(num_labels=100, seed=0)  # a "CIFAR-100" model: the head is replaced by a 10-class one
    before = backbone_state(model)
    result = linear_probe(model, "stl10", data_dir=stl10_dir, lr=0.05, **FAST)

    assert isinstance(model.classifier, LinearProbeHead) and model.classifier.linear.out_features == 10
    for name, value in backbone_state(model).items():  # conv weights and BN running statistics alike
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=f"{name} changed")
    assert [p.requires_grad for p in model.parameters()].count(True) == 2  # the head's weight and bias
    assert result["dataset"] == "stl10" and result["eval_split"] == "test"
    assert (result["num_train"], result["num_eval"], result["num_classes"], result["feature_dim"]) == (60, 40, 10, 16)
    assert [h["lr"] for h in result["history"]] == pytest.approx([0.05, 0.005])  # ×0.1 at the milestone
    assert 0 <= result["last_top1"] <= 100 and result["best_top1"] >= result["last_top1"]
    assert result["best_epoch"] in (1, 2) and result["chance_top1"] == 10.0 and result["bn_train"] is False


def test_bn_train_adapts_the_statistics_but_not_the_weights(stl10_dir):
    model = tiny_model(num_labels=100, seed=0)
    before = backbone_state(model)
    linear_probe(model, "stl10", data_dir=stl10_dir, bn_train=True, **FAST)
    after = backbone_state(model)
    assert not torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    assert int(after["bn1.num_batches_tracked"]) == 2 * 4  # 2 epochs x ceil(60 / 16) batches
    for name in ("conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "conv2.bias"):
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)


def test_head_initialisation_freezing_and_learning_rates():
    model = build_model("resnet8", 100)
    head = attach_linear_probe(model, 200, seed=0)
    assert model.classifier is head and head.linear.in_features == 64 and model.config.num_labels == 200
    assert torch.all(head.linear.bias == 0) and abs(head.linear.weight.std().item() - 0.01) < 0.001
    assert all(p.requires_grad == (name.startswith("classifier.")) for name, p in model.named_parameters())
    logits = model(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert logits.shape == (2, 200)
    assert default_probe_lr(build_model("resnet8", 10)) == 0.05
    assert default_probe_lr(build_model("ShuffleV2", 10)) == 0.01


def test_probe_learns_the_generated_classes_and_the_cli_writes_json(stl10_dir, tmp_path):
    from rrd_hf.commands.cli import main

    torch.manual_seed(0)
    checkpoint = tmp_path / "student"
    build_model("resnet8", 100).save_pretrained(checkpoint)
    output = tmp_path / "probe_stl10.json"
    main(["probe", str(checkpoint), "--dataset", "stl10", "--data-dir", str(stl10_dir), "--epochs", "4",
          "--milestones", "3", "--batch-size", "20", "--lr", "0.5", "--image-size", "16", "--device", "cpu", "--output", str(output),
          "--no-history"])
    result = json.loads(output.read_text())
    assert result["checkpoint"] == str(checkpoint) and len(result["history"]) == 4 and result["image_size"] == 16
    assert result["best_top1"] > 2 * result["chance_top1"]  # colour-coded classes: well above chance


@pytest.mark.slow
def test_real_tiny_imagenet_probe_is_above_chance(shared_data, tmp_path):
    """A CIFAR-style backbone (random init, BN frozen) on 4,000 real Tiny ImageNet images: the pipeline works on the
    real schema (200 WordNet classes, 64x64 with grayscale images, `valid` split) and learns."""
    from rrd_hf.commands.cli import main

    torch.manual_seed(0)
    checkpoint = tmp_path / "student"
    build_model("resnet8", 100).save_pretrained(checkpoint)
    output = tmp_path / "probe_tiny_imagenet.json"
    main(["probe", str(checkpoint), "--dataset", "tiny-imagenet", "--data-dir", str(shared_data / "tiny-imagenet"),
          "--max-train-samples", "4000", "--max-eval-samples", "2000", "--epochs", "8", "--milestones", "6",
          "--batch-size", "64", "--lr", "0.05", "--output", str(output), "--no-history"])
    result = json.loads(output.read_text())
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    assert result["eval_split"] == "valid" and result["num_classes"] == 200 and result["num_eval"] == 2000
    assert result["last_top1"] > 0.5 and result["best_top1"] > 0.5  # chance is 0.5 %
