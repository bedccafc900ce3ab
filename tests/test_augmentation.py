"""Stateless augmentation: crops and flips are a pure function of (seed, epoch, sample index).

Specified here: the integer hash against an independent pure-Python definition (no overflow anywhere, any int64
index, any seed); the distribution of the parameters (uniform offsets, fair flips, independent draws, independent
consecutive epochs and samples); the two data paths giving bitwise the same float32 images (generated data, real
CIFAR-10); DataLoader workers (0, 2, persistent, spawned) not changing anything; the epoch reaching the workers;
the errors when a sample index is missing; and no host read of device values on the in-memory path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from transformers import default_data_collator

from rrd_hf.data import (
    CIFAR10_CLASS_NAMES,
    STL10_CLASS_NAMES,
    DataError,
    DeviceAugmentation,
    InMemoryImageDataset,
    MissingColumnError,
    SharedEpoch,
    augmentation_params,
    build_transforms,
    get_dataset_info,
    load_image_dataset,
    mix32,
    normalization_table,
    normalize_uint8,
    prepare_dataset,
    set_epoch,
)

# chi-square critical values at p = 1e-6 (scipy.stats.chi2.ppf(1 - 1e-6, df)): the hash is deterministic, so a
# pass is permanent; the thresholds only have to be ones a fair generator passes with near certainty.
CHI2_CRITICAL = {1: 23.93, 8: 42.70, 80: 155.08}
MASK = 0xFFFFFFFF


# ------------------------------------------------------------------------- an independent reference definition
def lowbias32_reference(x: int) -> int:
    """Wellons' lowbias32 on Python integers (arbitrary precision, so no overflow can hide)."""
    x &= MASK
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK
    x ^= x >> 16
    return x


def params_reference(seed: int, epoch: int, index: int, padding: int = 4, flip_prob: float = 0.5):
    """The documented recipe of augmentation_params, on Python integers."""
    key = 0
    for value in (seed % 2**64, epoch % 2**64):
        for word in (value & MASK, value >> 32):
            key = lowbias32_reference(key ^ word)
    h = lowbias32_reference((index % 2**32) ^ key)
    n = 2 * padding + 1
    span = -(-(2**32) // n**2)  # ceil(2**32 / n²)
    return h % n, (h // n) % n, h // n**2 < round(flip_prob * span)


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def _images(n, size, seed):
    return list(np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8))


def make_cifar10(n=40, seed=0) -> Dataset:
    features = Features({"img": Image(), "label": ClassLabel(names=list(CIFAR10_CLASS_NAMES))})
    return Dataset.from_dict({"img": _images(n, 32, seed), "label": [i % 10 for i in range(n)]}, features=features)


def make_stl10(n=12, seed=0) -> Dataset:
    features = Features({"image": Image(), "label": ClassLabel(names=list(STL10_CLASS_NAMES))})
    return Dataset.from_dict({"image": _images(n, 96, seed), "label": [i % 10 for i in range(n)]}, features=features)


# ----------------------------------------------------------------------------------------------- the hash
def test_mix32_equals_the_python_definition_on_edge_and_random_values():
    rng = np.random.default_rng(0)
    values = [0, 1, 2, MASK, MASK - 1, 2**31, 2**31 - 1, 2**32, 2**40 + 5, 2**62 + 12345, -1, -(2**63)]
    values += rng.integers(-(2**63), 2**63 - 1, size=2000, dtype=np.int64).tolist()
    got = mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [lowbias32_reference(v % 2**64) for v in values]
    # a bijection on 32 bits: 2**16 distinct inputs give 2**16 distinct outputs, all below 2**32
    outputs = mix32(torch.arange(2**16) * 65_537)
    assert outputs.unique().numel() == 2**16 and int(outputs.min()) >= 0 and int(outputs.max()) <= MASK


@pytest.mark.parametrize("seed,epoch", [(0, 0), (1, 7), (2**40 + 3, 239), (-5, 1), (2**64 + 9, 2**33)])
def test_augmentation_params_equal_the_python_definition(seed, epoch):
    index = [0, 1, 2, 99, 49_999, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -1]
    top, left, flip = augmentation_params(seed, epoch, torch.tensor(index))
    assert top.dtype == left.dtype == torch.int64 and flip.dtype == torch.bool
    assert list(zip(top.tolist(), left.tolist(), flip.tolist())) == [params_reference(seed, epoch, i) for i in index]
    for padding in (0, 2):  # other paddings: offsets in [0, 2·padding]
        t, l, _ = augmentation_params(seed, epoch, torch.tensor(index), padding=padding)
        assert [(a, b) for a, b in zip(t.tolist(), l.tolist())] == [
            params_reference(seed, epoch, i, padding)[:2] for i in index
        ]


def test_params_depend_on_each_sample_alone_not_on_the_batch():
    ids = torch.tensor([17, 3, 40_000, 3, 8])
    together = augmentation_params(5, 2, ids)
    alone = [augmentation_params(5, 2, ids[k : k + 1]) for k in range(len(ids))]
    for part in range(3):
        assert together[part].tolist() == [a[part].item() for a in alone]
    assert together[0][1] == together[0][3]  # the same sample twice: the same crop
    with pytest.raises(TypeError, match="integer sample ids"):
        augmentation_params(0, 0, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="padding >= 0"):
        augmentation_params(0, 0, ids, padding=-1)
    # flip probabilities 0 and 1 are exact
    assert not augmentation_params(0, 0, torch.arange(5000), flip_prob=0.0)[2].any()
    assert augmentation_params(0, 0, torch.arange(5000), flip_prob=1.0)[2].all()


# ------------------------------------------------------------------------------------------- statistics
def test_offsets_are_uniform_flips_fair_and_the_draws_independent():
    n = 90_000
    top, left, flip = (t.numpy() for t in augmentation_params(0, 0, torch.arange(n)))
    for offsets in (top, left):
        counts = np.bincount(offsets, minlength=9)
        assert len(counts) == 9 and np.all(np.abs(counts / n - 1 / 9) < 0.005)
        assert chi_square(counts) < CHI2_CRITICAL[8]
    assert abs(flip.mean() - 0.5) < 4 * 0.5 / np.sqrt(n)
    # top, left and flip of one sample are independent of each other
    assert chi_square(np.bincount(top * 9 + left, minlength=81)) < CHI2_CRITICAL[80]
    contingency = np.stack([np.bincount(top[flip == f], minlength=9) for f in (False, True)])
    expected = contingency.sum(1, keepdims=True) * contingency.sum(0, keepdims=True) / n
    assert float(((contingency - expected) ** 2 / expected).sum()) < CHI2_CRITICAL[8]
    # neighbouring samples are independent: the pair (top of i, top of i+1) is uniform over the 81 pairs
    assert chi_square(np.bincount(top[:-1] * 9 + top[1:], minlength=81)) < CHI2_CRITICAL[80]


def test_consecutive_epochs_and_seeds_are_independent():
    n = 90_000
    ids = torch.arange(n)
    for (seed_a, epoch_a), (seed_b, epoch_b) in [((0, 0), (0, 1)), ((0, 1), (0, 2)), ((0, 0), (1, 0))]:
        top_a, left_a, flip_a = (t.numpy() for t in augmentation_params(seed_a, epoch_a, ids))
        top_b, left_b, flip_b = (t.numpy() for t in augmentation_params(seed_b, epoch_b, ids))
        assert chi_square(np.bincount(top_a * 9 + top_b, minlength=81)) < CHI2_CRITICAL[80]
        assert chi_square(np.bincount(left_a * 9 + left_b, minlength=81)) < CHI2_CRITICAL[80]
        assert chi_square(np.bincount(flip_a * 2 + flip_b, minlength=4)) < CHI2_CRITICAL[8]
        same_view = (top_a == top_b) & (left_a == left_b) & (flip_a == flip_b)
        assert abs(same_view.mean() - 1 / 162) < 4 * np.sqrt(1 / 162 / n)  # 81 crops x 2 flips


# --------------------------------------------------------------------------------- normalisation by table
def test_normalisation_table_is_normalize_uint8_bitwise_and_the_float64_value_closely():
    info = get_dataset_info("cifar10")
    table = normalization_table("cifar10")
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256)
    direct = normalize_uint8(values, torch.tensor(info.mean).view(3, 1, 1), torch.tensor(info.std).view(3, 1, 1))
    assert table.dtype == torch.float32 and table.shape == (3, 256)
    assert torch.equal(table, direct[:, 0])
    exact = (np.arange(256)[None] / 255.0 - np.array(info.mean)[:, None]) / np.array(info.std)[:, None]
    np.testing.assert_allclose(table.numpy(), exact, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------ the two data paths, bitwise
def _per_sample_images(prepared, positions):
    return torch.stack([prepared[int(p)]["pixel_values"] for p in positions])


def _in_memory_images(memory, augment, positions, epoch):
    batch = default_data_collator(memory.__getitems__([int(p) for p in positions]))
    return augment(batch["pixel_values"], training=True, index=batch["index"], epoch=epoch)


@pytest.mark.parametrize("make,name", [(make_cifar10, "cifar10"), (make_stl10, "stl10")])
def test_per_sample_and_in_memory_paths_give_bitwise_the_same_images(make, name):
    raw = load_image_dataset(make(), "train")
    prepared = prepare_dataset(raw, "train", train=True, with_index=True, seed=11, dataset_name=name)
    memory = InMemoryImageDataset.from_dataset(raw, 32)
    augment = DeviceAugmentation(memory.stats, seed=11)
    positions = torch.randperm(len(raw), generator=torch.Generator().manual_seed(0))
    seen = []
    for epoch in (0, 1, 5):
        set_epoch(prepared, epoch)
        per_sample = _per_sample_images(prepared, positions)
        assert torch.equal(per_sample, _in_memory_images(memory, augment, positions, epoch))
        seen.append(per_sample)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])  # epochs differ
    # evaluation: normalisation only, bitwise too
    evaluation = prepare_dataset(raw, "train", train=False, dataset_name=name)
    assert torch.equal(_per_sample_images(evaluation, positions),
                       augment(memory.images[positions], training=False))


def test_real_cifar10_both_paths_bitwise_equal(shared_data):
    raw = load_image_dataset(shared_data / "cifar10", "train").select(range(0, 50_000, 97))  # 516 real images
    prepared = prepare_dataset(raw, "train", train=True, with_index=True, seed=2024, dataset_name="cifar10")
    memory = InMemoryImageDataset.from_dataset(raw, 32)
    assert memory.stats == get_dataset_info("cifar10").stats
    augment = DeviceAugmentation(memory.stats, seed=2024)
    positions = torch.arange(len(raw))
    for epoch in (0, 239):
        set_epoch(prepared, epoch)
        assert torch.equal(_per_sample_images(prepared, positions), _in_memory_images(memory, augment, positions, epoch))
    assert memory.index.tolist() == list(range(0, 50_000, 97))  # sample ids are the rows of the full split


# ---------------------------------------------------------------------------------- DataLoader workers
def _loader_epoch(dataset, workers, epoch=None, loader=None, **kwargs):
    if epoch is not None:
        set_epoch(dataset, epoch)
    loader = loader or torch.utils.data.DataLoader(
        dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0), num_workers=workers,
        collate_fn=default_data_collator, **kwargs,
    )
    batches = list(loader)
    return torch.cat([b["index"] for b in batches]), torch.cat([b["pixel_values"] for b in batches])


@pytest.fixture(scope="module")
def prepared_cifar10():
    return prepare_dataset(make_cifar10(40), "train", train=True, with_index=True, seed=7, dataset_name="cifar10")


def test_loader_workers_do_not_change_the_images(prepared_cifar10):
    index0, images0 = _loader_epoch(prepared_cifar10, 0, epoch=3)
    index2, images2 = _loader_epoch(prepared_cifar10, 2, epoch=3)
    assert torch.equal(index0, index2) and torch.equal(images0, images2)
    _, other_epoch = _loader_epoch(prepared_cifar10, 2, epoch=4)
    assert not torch.equal(images2, other_epoch)


def test_persistent_workers_see_the_epoch_set_after_they_started(prepared_cifar10):
    expected = {epoch: _loader_epoch(prepared_cifar10, 0, epoch=epoch) for epoch in (0, 1)}
    loader = torch.utils.data.DataLoader(prepared_cifar10, batch_size=8, shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0), persistent_workers=True,
                                         collate_fn=default_data_collator)
    for epoch in (0, 1):
        set_epoch(prepared_cifar10, epoch)
        index, images = _loader_epoch(prepared_cifar10, 2, loader=loader)
        order = torch.argsort(index)
        expected_index, expected_images = expected[epoch]
        assert torch.equal(images[order], expected_images[torch.argsort(expected_index)])


@pytest.mark.slow  # starting a spawned interpreter with torch and datasets takes ~15 s on 2 busy cores
def test_spawned_worker_sees_the_shared_epoch(prepared_cifar10):
    """A spawned worker receives the transform by pickling: the epoch must still be the shared one."""
    loader = torch.utils.data.DataLoader(prepared_cifar10, batch_size=20, num_workers=1, persistent_workers=True,
                                         multiprocessing_context="spawn", collate_fn=default_data_collator)
    set_epoch(prepared_cifar10, 0)
    list(loader)  # the worker is started (and keeps running)
    set_epoch(prepared_cifar10, 6)
    _, images = _loader_epoch(prepared_cifar10, 1, loader=loader)
    expected = torch.stack([prepared_cifar10[i]["pixel_values"] for i in range(40)])
    assert torch.equal(images, expected)


# -------------------------------------------------------------------------------------- the epoch itself
def test_set_epoch_finds_the_transform_through_views_splits_and_objects():
    prepared = prepare_dataset(make_cifar10(10), "train", train=True, with_index=True, seed=1, dataset_name="cifar10")
    transform = prepared.format["format_kwargs"]["transform"]
    assert set_epoch(prepared, 4) and transform.epoch == 4
    view = prepared.shuffle(seed=0).select(range(5))  # views share the transform
    assert set_epoch(view, 9) and transform.epoch == 9
    splits = DatasetDict(train=prepared, test=prepare_dataset(make_cifar10(4), "test", dataset_name="cifar10"))
    assert set_epoch(splits, 2) and transform.epoch == 2
    assert set_epoch(torch.utils.data.Subset(prepared, [1, 2]), 6) and transform.epoch == 6
    assert splits["test"].format["format_kwargs"]["transform"].epoch == 2

    class Epoched:
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

    other = Epoched()
    assert set_epoch(other, 3) and other.epoch == 3
    memory = InMemoryImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), [0, 1])
    assert set_epoch(memory, 3) is False  # its augmentation takes epoch= per call
    assert set_epoch(load_image_dataset(make_cifar10(2), "train"), 3) is False  # no transform attached
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        set_epoch(prepared, -1)
    copy = SharedEpoch(5)
    import copy as copy_module

    clone = copy_module.deepcopy(copy)
    clone.set(8)
    assert (copy.get(), clone.get()) == (5, 8)  # a deep copy does not share the original's memory


# -------------------------------------------------------------------------------- a missing sample index
def test_missing_index_in_training_mode_says_to_load_with_the_index():
    transform = build_transforms("cifar10", train=True, seed=0)
    batch = {"image": [np.zeros((32, 32, 3), np.uint8)], "label": [1]}
    with pytest.raises(MissingColumnError, match=r"no 'index' column.*with_index=True"):
        transform(batch)
    with pytest.raises(MissingColumnError, match="with_index=True"):
        transform.transform_image(np.zeros((32, 32, 3), np.uint8))
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(DataError, match=r"no index= was given.*with_index=True"):
        DeviceAugmentation("cifar10", seed=0)(images, training=True)
    with pytest.raises(DataError, match="2 images"):
        DeviceAugmentation("cifar10", seed=0)(images, training=True, index=torch.arange(3))
    # evaluation needs no index, and neither does unseeded (documented non-reproducible) augmentation
    assert build_transforms("cifar10", train=False, seed=0)(batch)["pixel_values"][0].shape == (3, 32, 32)
    assert DeviceAugmentation("cifar10", seed=0)(images, training=False).shape == (2, 3, 32, 32)
    assert build_transforms("cifar10", train=True)(batch)["pixel_values"][0].shape == (3, 32, 32)
    ramp = torch.arange(32, dtype=torch.uint8).repeat(64, 3, 32, 1)
    unseeded = DeviceAugmentation("cifar10")
    torch.manual_seed(0)
    first = unseeded(ramp, training=True)
    torch.manual_seed(0)
    assert torch.equal(first, unseeded(ramp, training=True))  # from torch's global RNG
    assert not torch.equal(first, unseeded(ramp, training=True))


# ------------------------------------------------------------------------------------- the device path
def test_in_memory_batches_and_augmentation_read_no_device_value_on_the_host():
    """The meta device stands in for an accelerator: reading one of its values on the host raises, so a batch
    that goes through without error was served, collated and augmented with no host-device synchronisation."""
    memory = InMemoryImageDataset(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20) % 3,
                                  stats="cifar10").to("meta")
    assert memory.device.type == "meta" and memory.labels.device.type == "cpu"  # metadata stays readable
    batch = default_data_collator(memory.__getitems__([3, 1, 7]))
    assert all(value.device.type == "meta" for value in batch.values())
    augment = DeviceAugmentation(memory.stats, seed=0).to("meta")
    assert augment.table.device.type == "meta" and augment.mean.device.type == "meta"
    out = augment(batch["pixel_values"], training=True, index=batch["index"], epoch=3)
    assert out.device.type == "meta" and out.shape == (3, 3, 8, 8) and out.dtype == torch.float32
    with pytest.raises(RuntimeError, match="meta"):
        out.sum().item()


def test_buffers_follow_the_module_and_move_once_to_the_batch_device(monkeypatch):
    augment = DeviceAugmentation("cifar10", seed=0)
    assert {name for name, _ in augment.named_buffers()} == {"mean", "std", "table"}
    assert augment.state_dict() == {}  # not persistent: nothing to save or load
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="meta")
    augment(images, training=True, index=torch.arange(2, device="meta"))  # a batch elsewhere: buffers move once
    assert augment.table.device.type == "meta" and augment.std.device.type == "meta"
    moves = []
    monkeypatch.setattr(augment, "to", lambda *args, **kwargs: moves.append(args))
    for _ in range(3):
        augment(images, training=True, index=torch.arange(2, device="meta"))
    assert moves == []  # later calls find them there: no per-call copy


def test_the_python_integer_mixer_equals_the_tensor_one():
    from rrd_hf.data.augmentation import mix32_int

    values = [0, 1, 2**31, 2**32 - 1, 2**32, 2**40 + 7, 12345678901234] + list(range(1000, 3000, 7))
    assert [mix32_int(v) for v in values] == mix32(torch.tensor(values, dtype=torch.int64)).tolist()
