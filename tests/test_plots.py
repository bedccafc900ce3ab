"""The paper's figures: correlation difference against a naive computation, PNGs from tiny models on tiny data."""

import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
from PIL import Image

from helpers import tiny_model
from rrd_hf.data import CIFAR10_CLASS_NAMES, CIFAR100_COARSE_CLASS_NAMES, CIFAR100_FINE_CLASS_NAMES
from rrd_hf.data import cifar_image_processor
from rrd_hf.models import build_model
from rrd_hf.evaluation.plots import (
    CORRELATION_FIGURE,
    PLOTS_JSON,
    TSNE_FIGURE,
    class_correlation_matrix,
    color_limits,
    correlation_difference,
    correlation_difference_figure,
    make_figures,
    standardize_logits,
    tsne_figure,
)

FAST = dict(max_iter=250, perplexity=10.0, batch_size=64, device="cpu", progress=False, dpi=60)


def naive_matrix(logits, labels, num_classes):
    rows = []
    for c in range(num_classes):
        members = []
        for z, y in zip(logits, labels):
            if y == c:
                mean = sum(z) / len(z)
                std = (sum((v - mean) ** 2 for v in z) / len(z)) ** 0.5
                members.append([(v - mean) / std for v in z])
        rows.append([sum(col) / len(members) for col in zip(*members)])
    return np.array(rows)


def test_matrices_and_difference_match_a_naive_computation():
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 5
    student, teacher = rng.normal(size=(60, 5)), rng.normal(size=(60, 5)) * 3 + 1
    for logits in (student, teacher):
        np.testing.assert_allclose(class_correlation_matrix(logits, labels, 5), naive_matrix(logits, labels, 5))
    expected = np.abs(naive_matrix(student, labels, 5) - naive_matrix(teacher, labels, 5))
    np.fill_diagonal(expected, 0)
    result = correlation_difference(student, teacher, labels)
    np.testing.assert_allclose(result["matrix"], expected)
    assert result["max_difference"] == pytest.approx(expected.max()) and expected.max() > 0
    assert result["mean_difference"] == pytest.approx(expected.mean()) and expected.mean() > 0
    same = correlation_difference(student, student, labels)
    assert same["max_difference"] == 0 and same["mean_difference"] == 0
    # standardisation removes per-sample shift and scale: an affine copy of the student is the student
    assert correlation_difference(student, 2 * student + 7, labels)["max_difference"] == pytest.approx(0, abs=1e-12)
    assert np.all(standardize_logits(np.ones((2, 4))) == 0)  # constant logits do not divide by zero


def test_classes_without_samples_are_reported_not_invented():
    labels = np.array([0, 0, 2, 2])
    logits = np.random.default_rng(1).normal(size=(4, 3))
    result = correlation_difference(logits, logits[::-1], labels, num_classes=3)
    assert result["classes_without_samples"] == 1 and np.all(result["matrix"][1] == 0)


def heatmap_parts(figure):
    """(image, colour bar axis, heatmap axis) of a correlation-difference figure."""
    heatmap, colorbar = figure.axes
    return heatmap.images[0], colorbar, heatmap


def test_heatmap_scale_comes_from_the_data():
    rng = np.random.default_rng(0)
    absolute = np.abs(rng.normal(scale=0.2, size=(10, 10)))
    absolute[3, 4] = 0.58  # the largest difference of the run, drawn at the top of the scale, not at 0.58/3
    np.fill_diagonal(absolute, 0)
    image, colorbar, _ = heatmap_parts(correlation_difference_figure(absolute, class_names=CIFAR10_CLASS_NAMES))
    assert image.get_clim() == pytest.approx((0.0, 0.58)) and image.get_cmap().name == "Blues"
    assert colorbar.get_ylabel().startswith("|M_S − M_T|")

    signed = rng.normal(scale=0.3, size=(10, 10))
    signed[0, 1], signed[2, 3] = -0.9, 0.4
    image, colorbar, _ = heatmap_parts(correlation_difference_figure(signed))
    assert image.get_clim() == pytest.approx((-0.9, 0.9)) and image.get_cmap().name == "RdBu_r"  # 0 is white
    assert colorbar.get_ylabel().startswith("M_S − M_T")

    image, _, _ = heatmap_parts(correlation_difference_figure(absolute, vmax=3.0))  # the reference's scale, on request
    assert image.get_clim() == (0.0, 3.0)
    assert color_limits(np.zeros((4, 4))) == (0.0, 1.0)  # an all-zero map still has a scale
    with pytest.raises(ValueError, match="vmax must be > 0"):
        color_limits(absolute, vmax=0)


def test_heatmap_ticks_carry_class_names_where_they_fit():
    _, _, axis = heatmap_parts(correlation_difference_figure(np.eye(10), class_names=CIFAR10_CLASS_NAMES))
    assert [t.get_text() for t in axis.get_xticklabels()] == list(CIFAR10_CLASS_NAMES)
    assert [t.get_text() for t in axis.get_yticklabels()] == list(CIFAR10_CLASS_NAMES)
    _, _, axis = heatmap_parts(correlation_difference_figure(np.eye(100), class_names=CIFAR100_FINE_CLASS_NAMES))
    assert [t.get_text() for t in axis.get_xticklabels()] == list(CIFAR100_FINE_CLASS_NAMES[::5])
    assert list(axis.get_xticks()) == list(range(0, 100, 5)) and "one in 5 labelled" in axis.get_xlabel()
    _, _, axis = heatmap_parts(correlation_difference_figure(np.eye(4)))  # no names: class numbers
    assert [t.get_text() for t in axis.get_xticklabels()] == ["0", "1", "2", "3"]


def test_tsne_legend_names_the_classes_where_they_fit():
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 10
    figure = tsne_figure(rng.normal(size=(60, 2)), labels, class_names=CIFAR10_CLASS_NAMES)
    (axis,) = figure.axes
    assert [t.get_text() for t in axis.get_legend().get_texts()] == list(CIFAR10_CLASS_NAMES)
    labels = np.arange(200) % 40
    (axis,) = tsne_figure(rng.normal(size=(200, 2)), labels, class_names=CIFAR100_FINE_CLASS_NAMES).axes
    assert axis.get_legend() is None
    assert any("40 classes: too many to name" in text.get_text() for text in axis.texts)


def make_cifar100_test(n=120, seed=0):
    """`uoft-cs/cifar100` schema (32x32, fine and coarse labels); labels 0..39 so the t-SNE keeps the first 20."""
    rng = np.random.default_rng(seed)
    features = Features({"img": ImageFeature(), "fine_label": ClassLabel(names=list(CIFAR100_FINE_CLASS_NAMES)),
                         "coarse_label": ClassLabel(names=list(CIFAR100_COARSE_CLASS_NAMES))})
    fine = (np.arange(n) % 40).tolist()
    images = list(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8))
    return Dataset.from_dict({"img": images, "fine_label": fine, "coarse_label": [f % 20 for f in fine]},
                             features=features)


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar100")
    (root / "plain_text").mkdir()
    make_cifar100_test().to_parquet(str(root / "plain_text" / "test-00000-of-00001.parquet"))
    return root


def assert_png(path, min_side=150):
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side
        image.verify()


def test_make_figures_writes_valid_pngs_and_a_summary(cifar100_dir, tmp_path):
    student, teacher = tiny_model(num_labels=100, seed=1), tiny_model(num_labels=100, width=16, seed=2)
    summary = make_figures(student, teacher, "cifar100", data_dir=cifar100_dir, output_dir=tmp_path / "fig", **FAST)
    assert_png(tmp_path / "fig" / CORRELATION_FIGURE)
    assert_png(tmp_path / "fig" / TSNE_FIGURE)
    saved = json.loads((tmp_path / "fig" / PLOTS_JSON).read_text())
    assert saved == summary and summary["num_samples"] == 120 and summary["dataset"] == "CIFAR-100 test"
    assert summary["max_difference"] > 0 and 0 < summary["mean_difference"] < summary["max_difference"]
    assert summary["color_scale"] == pytest.approx([0.0, summary["max_difference"]])
    assert summary["tsne_classes"] == 20 and summary["tsne_samples"] == 60  # labels < 20 of 0..39
    assert summary["classes_without_samples"] == 60  # classes 40..99 have no test sample here

    same = make_figures(student, student, "cifar100", data_dir=cifar100_dir, output_dir=tmp_path / "same",
                        max_samples=40, tsne_classes=None, **FAST)
    assert same["max_difference"] == 0 and same["mean_difference"] == 0 and same["tsne_samples"] == 40


def test_cli_defaults_to_the_checkpoint_folder_and_the_card_embeds_the_figures(cifar100_dir, tmp_path):
    from rrd_hf.commands.cli import main
    from rrd_hf.hub import build_model_card

    torch.manual_seed(0)
    student, teacher = tmp_path / "student", tmp_path / "teacher"
    build_model("resnet8", 100).save_pretrained(student)
    cifar_image_processor().save_pretrained(student)
    build_model("resnet14", 100).save_pretrained(teacher)
    main(["plots", str(student), "--teacher", str(teacher), "--dataset", "cifar100", "--data-dir", str(cifar100_dir),
          "--max-samples", "40", "--image-size", "16", "--max-iter", "250", "--perplexity", "10", "--device", "cpu"])
    for name in (CORRELATION_FIGURE, TSNE_FIGURE):
        assert_png(student / "figures" / name)
    summary = json.loads((student / "figures" / PLOTS_JSON).read_text())
    assert summary["num_samples"] == 40 and summary["teacher"] == str(teacher)
    card = str(build_model_card(student, repo_id="me/r8", teacher="me/r14", dataset="cifar100"))
    assert f"![figures/{CORRELATION_FIGURE}](figures/{CORRELATION_FIGURE})" in card
    assert f"![figures/{TSNE_FIGURE}](figures/{TSNE_FIGURE})" in card
    assert f"max {summary['max_difference']:.3f}" in card
