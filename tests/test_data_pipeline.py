"""Which data path a run takes, and the command line's data loading on both paths.

Specified here: the in-memory budget (a quarter of the RAM, at most 8 GiB, shared by the machine's processes),
`data_pipeline` (auto, in_memory, per_sample), and `rrd-hf train`'s data loading (`_load_splits`)
giving bitwise the same images on the per-sample and in-memory paths (generated data, and real CIFAR-10 when
present).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

from rrd_hf.data import (
    CIFAR10_CLASS_NAMES,
    DataError,
    DeviceAugmentation,
    InMemoryImageDataset,
    choose_data_pipeline,
    get_dataset_info,
    in_memory_budget,
    set_epoch,
    uint8_bytes,
)
from rrd_hf.commands.train import DataArguments, _load_splits, parse_recipe

CIFAR10 = get_dataset_info("cifar10")


def cifar10_split(n, seed=0):
    images = list(np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8))
    features = Features({"img": Image(), "label": ClassLabel(names=list(CIFAR10_CLASS_NAMES))})
    return Dataset.from_dict({"img": images, "label": [i % 10 for i in range(n)]}, features=features)


def test_auto_keeps_the_train_split_in_memory_when_it_fits_the_budget():
    gib = 2**30
    assert uint8_bytes(50_000, 32) == 153_600_000
    assert in_memory_budget(total_memory=16 * gib, processes=1) == 4 * gib  # a quarter of the RAM
    assert in_memory_budget(total_memory=256 * gib, processes=1) == 8 * gib  # capped at 8 GiB
    assert in_memory_budget(total_memory=256 * gib, processes=8) == gib  # shared by the machine's processes
    assert choose_data_pipeline("auto", 50_000, 32, total_memory=16 * gib, processes=1) == "in_memory"
    assert choose_data_pipeline("auto", 100_000, 64, total_memory=4 * gib, processes=1) == "per_sample"  # 1.2 GB > 1 GiB
    assert choose_data_pipeline("auto", 1_281_167, 224, total_memory=512 * gib, processes=1) == "per_sample"  # ImageNet
    assert choose_data_pipeline("per_sample", 10, 32) == "per_sample" and choose_data_pipeline("in_memory", 10**9, 224) == "in_memory"
    with pytest.raises(DataError, match="data_pipeline must be one of"):
        choose_data_pipeline("gpu", 10, 32)


def test_data_arguments_take_the_data_pipeline_from_a_recipe(tmp_path):
    assert DataArguments().data_pipeline == "auto"
    with pytest.raises(ValueError, match="data_pipeline must be auto, in_memory or per_sample"):
        DataArguments(data_pipeline="gpu")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: resnet8\ndataset: cifar10\ndata_pipeline: in_memory\n")
    _, data_args, _ = parse_recipe([str(recipe), "--output_dir", str(tmp_path / "run")])
    assert data_args.data_pipeline == "in_memory"
    _, data_args, _ = parse_recipe([str(recipe), "--output_dir", str(tmp_path / "run"), "--data-dir", "/x"])
    assert data_args.data_dir == "/x"


def _both_paths_agree(data_args_kwargs, seed, positions, epochs=(0, 3)):
    per_sample = _load_splits(DataArguments(data_pipeline="per_sample", **data_args_kwargs), seed)
    in_memory = _load_splits(DataArguments(data_pipeline="in_memory", **data_args_kwargs), seed)
    train_ps, eval_ps, none, num_labels, class_names, stats = per_sample
    train_mem, eval_mem, augment, *rest = in_memory
    assert none is None and isinstance(augment, DeviceAugmentation) and rest == [num_labels, class_names, stats]
    assert isinstance(train_mem, InMemoryImageDataset) and train_mem.stats == stats
    positions = [p for p in positions if p < len(train_ps)]
    for epoch in epochs:
        set_epoch(train_ps, epoch)
        expected = torch.stack([train_ps[p]["pixel_values"] for p in positions])
        index = torch.tensor([train_ps[p]["index"] for p in positions])
        assert torch.equal(index, train_mem.index[positions])
        got = augment(train_mem.images[positions], training=True, index=train_mem.index[positions], epoch=epoch)
        assert torch.equal(got, expected)
    eval_positions = list(range(min(len(eval_ps), 16)))
    assert torch.equal(torch.stack([eval_ps[p]["pixel_values"] for p in eval_positions]),
                       augment(eval_mem.images[eval_positions], training=False))
    return per_sample


def test_command_line_data_loading_gives_the_same_images_on_both_paths(tmp_path):
    root = tmp_path / "cifar10"
    DatasetDict(train=cifar10_split(30), test=cifar10_split(10, 1)).save_to_disk(str(root))
    train, _, _, num_labels, class_names, stats = _both_paths_agree({"dataset": str(root)}, seed=4,
                                                                    positions=range(30))
    assert (num_labels, class_names, stats) == (10, list(CIFAR10_CLASS_NAMES), CIFAR10.stats)
    auto = _load_splits(DataArguments(dataset=str(root)), 4)
    assert isinstance(auto[0], InMemoryImageDataset)  # 30 images fit: auto is the in-memory path
    limited = _load_splits(DataArguments(dataset=str(root), data_pipeline="per_sample", max_train_samples=5), 4)[0]
    assert len(limited) == 5 and len(train) == 30


def test_real_cifar10_command_line_paths_agree(shared_data):
    _both_paths_agree({"dataset": "cifar10", "data_dir": str(shared_data / "cifar10"), "max_train_samples": 300,
                       "max_eval_samples": 16}, seed=0, positions=range(0, 300, 7), epochs=(1,))




def test_in_memory_splits_tell_the_model_card_which_split_and_how_much_of_it(tmp_path):
    from rrd_hf.runs.record import evaluation_facts

    root = tmp_path / "cifar10" / "plain_text"  # the Hub repo's layout: parquet files named by split
    root.mkdir(parents=True)
    cifar10_split(30).to_parquet(str(root / "train-00000-of-00001.parquet"))
    cifar10_split(10, 1).to_parquet(str(root / "test-00000-of-00001.parquet"))
    train, evaluation = _load_splits(DataArguments(dataset=str(root.parent), max_eval_samples=4), 0)[:2]
    assert isinstance(evaluation, InMemoryImageDataset)
    assert evaluation_facts(evaluation) == {"eval_num_samples": 4, "eval_split": "test", "eval_split_size": 10}
    assert (train.split, train.split_size) == ("train", 30)
    # built by hand from tensors: nothing is claimed
    bare = InMemoryImageDataset(evaluation.images, evaluation.labels)
    assert evaluation_facts(bare) == {"eval_num_samples": 4, "eval_split": None, "eval_split_size": None}
