"""Any AutoModelForImageClassification as teacher or student: features, input adaptation, local loading."""

import json

import pytest
import torch
import transformers
from transformers import AutoModelForImageClassification

from helpers import TinyImageDataset, tiny_model
from rrd_hf import FeatureTap, RRDConfig, RRDTrainer, TeacherInputAdapter
from rrd_hf.classifiers.inputs import ImageStats, image_stats_from_pretrained

TINY_CONFIGS = {
    "resnet": lambda: transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                layer_type="basic", num_labels=4),
    "vit": lambda: transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=32, num_labels=4),
    "convnext": lambda: transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4),
    "mobilenet_v2": lambda: transformers.MobileNetV2Config(depth_multiplier=0.25, image_size=32, num_labels=4),
    "swin": lambda: transformers.SwinConfig(image_size=16, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                                            window_size=2, num_labels=4),
}


def build(kind, seed=0):
    torch.manual_seed(seed)
    return AutoModelForImageClassification.from_config(TINY_CONFIGS[kind]())


@pytest.mark.parametrize("kind", sorted(TINY_CONFIGS))
def test_penultimate_features_come_from_the_classifier_input(kind):
    model = build(kind).eval()
    tap = FeatureTap(model)
    size = 32 if kind in ("mobilenet_v2", "convnext", "resnet") else 16
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(2, 3, size, size)).logits
        features = tap.pop()
        with pytest.raises(RuntimeError, match="no features were captured"):
            tap.pop()  # handed over once, never reused
        assert features.shape == (2, tap.dim)
        classifier = model.classifier
        torch.testing.assert_close(classifier(features.view(2, -1, 1, 1) if kind == "resnet" else features), logits)


def test_unknown_feature_module_is_explained():
    with pytest.raises(ValueError, match="has no submodule 'backbone.nope'"):
        FeatureTap(build("resnet"), "backbone.nope")


def test_adapter_renormalises_and_resizes():
    student = ImageStats(mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    teacher = ImageStats(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    adapter = TeacherInputAdapter(size=(16, 16), student=student, teacher=teacher)
    x = torch.randn(2, 3, 8, 8)
    raw = x * torch.tensor(student.std).view(1, 3, 1, 1) + torch.tensor(student.mean).view(1, 3, 1, 1)
    expected = (raw - torch.tensor(teacher.mean).view(1, 3, 1, 1)) / torch.tensor(teacher.std).view(1, 3, 1, 1)
    expected = torch.nn.functional.interpolate(expected, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(adapter(x), expected, rtol=1e-5, atol=1e-5)
    same = TeacherInputAdapter(size=None, student=student, teacher=student)
    assert same.is_identity and torch.equal(same(x), x)


def test_stats_read_from_a_saved_image_processor(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": 224, "width": 224}, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "image_processor_type": "ViTImageProcessor"}))
    stats = image_stats_from_pretrained(str(tmp_path))
    assert stats.size == (224, 224) and stats.mean == [0.5, 0.5, 0.5]
    assert image_stats_from_pretrained(str(tmp_path / "missing")) is None


def test_vit_teacher_at_its_own_size_and_normalisation_feeds_from_a_small_student_batch(tmp_path):
    teacher = build("vit", seed=3)
    teacher.save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": 16, "width": 16}, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "image_processor_type": "ViTImageProcessor"}))
    args = RRDConfig(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, memory_size=16,
                     use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", kd_weight=1.0,
                     student_image_mean=[0.1, 0.2, 0.3], student_image_std=[0.3, 0.3, 0.3])
    trainer = RRDTrainer(model=tiny_model(seed=1), teacher_model=str(tmp_path / "vit"), args=args,
                         train_dataset=TinyImageDataset(16, size=8))
    assert trainer.teacher.adapter.size == (16, 16) and trainer.teacher.adapter.scale is not None
    seen = []
    trainer.teacher.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["pixel_values"].shape), with_kwargs=True)
    trainer.train()
    assert seen and all(shape[-2:] == (16, 16) for shape in seen)
    assert trainer.methods["rrd"].teacher_head.in_features == 16


@pytest.mark.parametrize("kind", ["resnet", "convnext"])
def test_hub_architectures_as_teacher_and_student(tmp_path, kind):
    args = RRDConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, memory_size=16,
                     use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", kd_weight=1.0,
                     logging_steps=1)
    trainer = RRDTrainer(model=build(kind, seed=1), teacher_model=build(kind, seed=2), args=args,
                         train_dataset=TinyImageDataset(16, size=32))
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss_rrd" in log]
    assert logs and all(torch.isfinite(torch.tensor(log["loss_rrd"])) for log in logs)
