"""One dataset resolver for every command, and what a dataset carries (statistics, classes, image processor).

Specified here: split choice (a folder whose evaluation split is `valid` is evaluated on `valid`), classes and
statistics of known and unknown sources, the offline error pointing to the command line, and `dataset_stats` /
`dataset_class_names` / `image_processor_for` on every kind of dataset.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from rrd_hf.data import (
    CIFAR10_CLASS_NAMES,
    CIFAR100_COARSE_CLASS_NAMES,
    CIFAR100_FINE_CLASS_NAMES,
    DataError,
    DatasetUnavailableError,
    DeviceAugmentation,
    InMemoryImageDataset,
    NormalizationStats,
    UnknownSplitError,
    dataset_class_names,
    dataset_stats,
    get_dataset_info,
    image_processor_for,
    load_image_dataset,
    prepare_dataset,
    resolve_dataset,
)

CIFAR10 = get_dataset_info("cifar10")


def _images(n, size, seed):
    return list(np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8))


def cifar10_split(n, seed=0):
    features = Features({"img": Image(), "label": ClassLabel(names=list(CIFAR10_CLASS_NAMES))})
    return Dataset.from_dict({"img": _images(n, 32, seed), "label": [i % 10 for i in range(n)]}, features=features)


def cifar100_split(n, seed=0):
    features = Features({"img": Image(), "fine_label": ClassLabel(names=list(CIFAR100_FINE_CLASS_NAMES)),
                         "coarse_label": ClassLabel(names=list(CIFAR100_COARSE_CLASS_NAMES))})
    return Dataset.from_dict({"img": _images(n, 32, seed), "fine_label": [i % 100 for i in range(n)],
                              "coarse_label": [i % 20 for i in range(n)]}, features=features)


def plain_split(n, seed=0, num_labels=3):
    """Neither a known schema nor class names: integer labels."""
    features = Features({"image": Image(), "label": Value("int64")})
    return Dataset.from_dict({"image": _images(n, 16, seed), "label": [i % num_labels for i in range(n)]},
                             features=features)


def write_parquet(root, splits: dict, config="data"):
    (root / config).mkdir(parents=True, exist_ok=True)
    for split, ds in splits.items():
        ds.to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
    return root


# ------------------------------------------------------------------------------------------- the resolver
def test_known_dataset_folder_resolves_splits_classes_and_stats(tmp_path):
    root = write_parquet(tmp_path / "cifar100", {"train": cifar100_split(12), "test": cifar100_split(6, 1)})
    data = resolve_dataset(str(root))
    assert data.info.name == "cifar100" and data.name == "cifar100"
    assert (data.train_split, data.eval_split) == ("train", "test")
    assert (len(data.train), len(data.eval)) == (12, 6)
    assert data.class_names == list(CIFAR100_FINE_CLASS_NAMES) and data.num_labels == 100
    assert data.stats == get_dataset_info("cifar100").stats
    assert set(data.train.column_names) == {"image", "label", "index"}
    coarse = resolve_dataset(str(root), label_column="coarse_label")
    assert coarse.class_names == list(CIFAR100_COARSE_CLASS_NAMES) and coarse.num_labels == 20
    assert coarse.stats == data.stats


def test_data_dir_reads_a_local_copy_as_the_named_dataset(tmp_path):
    root = write_parquet(tmp_path / "my_copy", {"train": cifar10_split(8), "test": cifar10_split(4, 1)})
    data = resolve_dataset("cifar10", data_dir=root)
    assert data.info.name == "cifar10" and data.stats == CIFAR10.stats and len(data.eval) == 4


def test_the_evaluation_split_is_one_that_exists(tmp_path):
    # a folder whose evaluation split is 'valid' (Tiny ImageNet layout), known or not
    unknown = write_parquet(tmp_path / "mydata", {"train": plain_split(6), "valid": plain_split(3, 1)})
    data = resolve_dataset(str(unknown))
    assert (data.train_split, data.eval_split) == ("train", "valid")
    # a known dataset whose copy names it 'validation' instead of the registry's 'test'
    renamed = write_parquet(tmp_path / "cifar10", {"train": cifar10_split(6), "validation": cifar10_split(3, 1)})
    assert resolve_dataset(str(renamed)).eval_split == "validation"
    # only an evaluation split: no training split, and asking for it says which splits there are
    only_test = write_parquet(tmp_path / "cifar10_test" / "cifar10", {"test": cifar10_split(4)})
    data = resolve_dataset(str(only_test))
    assert data.train_split is None and data.eval_split == "test"
    with pytest.raises(UnknownSplitError, match=r"no training split.*available splits: \['test'\]"):
        data.train
    with pytest.raises(UnknownSplitError, match=r"split 'test' not found.*\['train', 'valid'\]"):
        resolve_dataset(str(unknown), eval_split="test")


def test_unknown_source_has_no_stats_until_given_and_counts_its_labels(tmp_path):
    root = write_parquet(tmp_path / "mydata", {"train": plain_split(7, num_labels=4), "test": plain_split(3, 1)})
    data = resolve_dataset(str(root))
    assert data.info is None and data.stats is None and data.class_names is None and data.num_labels == 4
    with pytest.raises(DataError, match=r"not a known dataset.*--dataset cifar10 --data_dir PATH.*compute_mean_std"):
        data.require_stats()
    given = resolve_dataset(str(root), stats=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert given.require_stats() == NormalizationStats((0.5,) * 3, (0.25,) * 3)
    loaded = resolve_dataset(DatasetDict(train=cifar10_split(4), test=cifar10_split(2, 1)))  # objects work too
    assert loaded.info.name == "cifar10" and loaded.num_labels == 10


def test_offline_hub_dataset_error_points_to_the_command_line_and_python():
    for name, folder in (("cifar100", "cifar100"), ("stl10", "stl10")):
        with pytest.raises(DatasetUnavailableError) as err:
            resolve_dataset(name)
        message = str(err.value)
        assert f"--data-dir /path/to/{folder}" in message and f"--dataset /path/to/{folder}" in message
        assert f"resolve_dataset('{folder}', data_dir=" in message and "hf download" in message


# ----------------------------------------------------------------------- what a dataset carries
def test_dataset_stats_and_class_names_of_every_kind_of_dataset():
    raw = load_image_dataset(cifar10_split(8), "train")
    prepared = prepare_dataset(raw, "train", train=True, with_index=True, seed=0, dataset_name="cifar10")
    assert dataset_stats(prepared) == CIFAR10.stats
    assert dataset_class_names(prepared) == list(CIFAR10_CLASS_NAMES)
    custom = prepare_dataset(raw, "train", stats=((0.1, 0.2, 0.3), (0.5, 0.5, 0.5)))
    assert dataset_stats(custom) == NormalizationStats((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    splits = DatasetDict(train=prepared, test=prepare_dataset(raw, "test", dataset_name="cifar10"))
    assert dataset_stats(splits) == CIFAR10.stats and dataset_class_names(splits) == list(CIFAR10_CLASS_NAMES)
    with pytest.raises(DataError, match="different statistics"):
        dataset_stats(DatasetDict(train=prepared, test=custom))
    subset = torch.utils.data.Subset(prepared, [0, 1])
    assert dataset_stats(subset) == CIFAR10.stats and dataset_class_names(subset) == list(CIFAR10_CLASS_NAMES)

    memory = InMemoryImageDataset.from_dataset(raw, 32)  # stats of the known dataset it holds
    assert dataset_stats(memory) == CIFAR10.stats and dataset_class_names(memory) == list(CIFAR10_CLASS_NAMES)
    augment = DeviceAugmentation(CIFAR10.stats, seed=0)
    assert dataset_stats(augment) == CIFAR10.stats and augment.stats == CIFAR10.stats
    assert dataset_stats(memory, batch_transform=augment) == CIFAR10.stats
    with pytest.raises(DataError, match="batch transform normalises with"):
        dataset_stats(memory, batch_transform=DeviceAugmentation("cifar100"))
    bare = InMemoryImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), [0, 1])
    assert dataset_stats(bare) is None and dataset_class_names(bare) is None
    assert dataset_stats(bare, batch_transform=augment) == CIFAR10.stats  # the transform normalises
    assert dataset_stats(raw) is None  # no transform attached: batches are not normalised by us
    assert dataset_class_names(load_image_dataset(plain_split(3), "train")) is None


def test_image_processor_for_the_data_normalises_as_training_did():
    raw = load_image_dataset(cifar10_split(4), "train")
    evaluation = prepare_dataset(raw, "train", train=False, dataset_name="cifar10")
    processor = image_processor_for(evaluation)
    assert processor.image_mean == pytest.approx(list(CIFAR10.mean)) and processor.image_std == pytest.approx(
        list(CIFAR10.std))
    assert processor.size == {"height": 32, "width": 32}
    image = PIL.Image.fromarray(np.asarray(raw[0]["image"]))
    processed = torch.as_tensor(np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0]))
    torch.testing.assert_close(processed, evaluation[0]["pixel_values"], atol=1e-5, rtol=0)

    small = InMemoryImageDataset.from_dataset(raw, 16)
    assert image_processor_for(small).size == {"height": 16, "width": 16}
    assert image_processor_for("cifar100", 48).image_mean == pytest.approx(list(get_dataset_info("cifar100").mean))
    assert image_processor_for(((0.5,) * 3, (0.2,) * 3)).size == {"height": 32, "width": 32}
    with pytest.raises(DataError, match="pass the statistics instead"):
        image_processor_for(InMemoryImageDataset(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), [0]))


def test_evaluate_defaults_to_the_split_the_folder_has(tmp_path):
    from rrd_hf.evaluation.checkpoint import evaluate_checkpoint
    from rrd_hf.models import build_model

    root = write_parquet(tmp_path / "cifar10", {"train": cifar10_split(6), "valid": cifar10_split(5, 1)})
    torch.manual_seed(0)
    build_model("resnet8", 10).save_pretrained(tmp_path / "ckpt")
    metrics = evaluate_checkpoint(str(tmp_path / "ckpt"), str(root), device="cpu", progress=False)
    assert metrics["split"] == "valid" and metrics["num_samples"] == 5 and metrics["subset"] is False
    copy = evaluate_checkpoint(str(tmp_path / "ckpt"), "cifar10", data_dir=str(root), max_samples=3, device="cpu",
                               progress=False)
    assert (copy["split"], copy["num_samples"], copy["split_size"], copy["subset"]) == ("valid", 3, 5, True)
    json.dumps(copy)  # the metrics are plain JSON
