"""Tests of rrd_hf.data: registry, loader, transforms, device fast path, errors, real data, Fashion-MNIST.

Offline and CPU only. Generated fixtures mirror the Hub schemas exactly (CIFAR-100: img/fine_label/coarse_label;
STL-10: image/label, 96x96). Real-data tests use ../shared/data through the ``shared_data`` fixture.
"""

from __future__ import annotations

import io
import time

import numpy as np
import PIL.Image
import pytest
import torch

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from rrd_hf.data import (
    CIFAR10_CLASS_NAMES,
    CIFAR100_COARSE_CLASS_NAMES,
    CIFAR100_FINE_CLASS_NAMES,
    FASHION_MNIST_CLASS_NAMES,
    KNOWN_DATASETS,
    STL10_CLASS_NAMES,
    CorruptImageError,
    DataError,
    DatasetUnavailableError,
    DataSourceNotFoundError,
    DeviceAugmentation,
    InMemoryImageDataset,
    LabelOutOfRangeError,
    MissingColumnError,
    NormalizationStats,
    UnknownDatasetError,
    UnknownSplitError,
    build_transforms,
    check_labels,
    compute_mean_std,
    decode_to_uint8,
    fashion_mnist_available,
    find_fashion_mnist_files,
    get_dataset_info,
    infer_dataset_info,
    load_fashion_mnist,
    load_in_memory,
    load_image_dataset,
    normalize_uint8,
    pad_crop_flip,
    prepare_dataset,
    read_idx,
    resolve_stats,
    verify_images,
)

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


# ----------------------------------------------------------------------------------------- fixtures
def _images(n, size, seed, channels=3):
    rng = np.random.default_rng(seed)
    shape = (n, size, size, channels) if channels > 1 else (n, size, size)
    return list(rng.integers(0, 256, size=shape, dtype=np.uint8))


def make_cifar100(n=24, seed=0) -> Dataset:
    """A small dataset in the exact uoft-cs/cifar100 schema."""
    features = Features(
        {
            "img": Image(),
            "fine_label": ClassLabel(names=list(CIFAR100_FINE_CLASS_NAMES)),
            "coarse_label": ClassLabel(names=list(CIFAR100_COARSE_CLASS_NAMES)),
        }
    )
    rng = np.random.default_rng(seed + 1)
    return Dataset.from_dict(
        {
            "img": _images(n, 32, seed),
            "fine_label": rng.integers(0, 100, n).tolist(),
            "coarse_label": rng.integers(0, 20, n).tolist(),
        },
        features=features,
    )


def make_stl10(n=8, seed=0) -> Dataset:
    """A small dataset in the exact tanganke/stl10 schema (96x96)."""
    features = Features({"image": Image(), "label": ClassLabel(names=list(STL10_CLASS_NAMES))})
    labels = (np.arange(n) % 10).tolist()
    return Dataset.from_dict({"image": _images(n, 96, seed), "label": labels}, features=features)


def write_hub_layout(root, splits: dict, config="data"):
    """Write ``{split: Dataset}`` as ``root/<config>/<split>-00000-of-00001.parquet`` like a Hub repo.

    (Under ``data/`` datasets keeps split names as they are; elsewhere it maps ``valid`` to ``validation``.)
    """
    (root / config).mkdir(parents=True, exist_ok=True)
    for split, ds in splits.items():
        ds.to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
    return root


def write_imagefolder(root, per_class=3, size=16, modes=("RGB", "L", "RGBA")):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for k in range(per_class):
                mode = modes[(k + c) % len(modes)]
                channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
                shape = (size, size, channels) if channels > 1 else (size, size)
                PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / split / cls / f"{k}.png")
    return root


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def naive_train_pixels(image_hwc: np.ndarray, top, left, flip, mean, std, padding=4) -> np.ndarray:
    """Independent numpy reference: zero-pad, slice, optionally mirror, scale, normalise; returns CHW."""
    h, w, _ = image_hwc.shape
    padded = np.pad(image_hwc, ((padding, padding), (padding, padding), (0, 0)), constant_values=0)
    crop = padded[top : top + h, left : left + w]
    if flip:
        crop = crop[:, ::-1]
    out = (crop.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
    return out.transpose(2, 0, 1)


def naive_eval_pixels(image_hwc, mean, std):
    return ((image_hwc.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)


# ------------------------------------------------------------------------------------------ registry
def test_registry_has_the_five_datasets_with_schemas_stats_and_splits():
    expected = {
        "cifar100": ("uoft-cs/cifar100", "img", "fine_label", "train", "test", 100, 32),
        "cifar10": ("uoft-cs/cifar10", "img", "label", "train", "test", 10, 32),
        "tiny-imagenet": ("zh-plus/tiny-imagenet", "image", "label", "train", "valid", 200, 64),
        "stl10": ("tanganke/stl10", "image", "label", "train", "test", 10, 96),
        "fashion_mnist": ("zalando-datasets/fashion_mnist", "image", "label", "train", "test", 10, 28),
    }
    assert set(KNOWN_DATASETS) == set(expected)
    for name, (hub, img, lab, tr, ev, k, size) in expected.items():
        info = get_dataset_info(name)
        assert (info.hub_id, info.image_column, info.label_column, info.train_split, info.eval_split) == (hub, img, lab, tr, ev)
        assert (info.num_classes, info.image_size) == (k, size)
        assert get_dataset_info(hub) is info
        assert len(info.mean) == len(info.std) == 3 and all(0 < s < 1 for s in info.std)
    assert get_dataset_info("CIFAR-100").stats == NormalizationStats(CIFAR100_MEAN, CIFAR100_STD)
    assert get_dataset_info("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert get_dataset_info("stl-10").std == (0.2603, 0.2566, 0.2712)
    assert get_dataset_info("Tiny_ImageNet").mean == (0.4802, 0.4481, 0.3975)
    assert get_dataset_info("fashion-mnist").mean == (0.2860,) * 3
    assert len(CIFAR100_FINE_CLASS_NAMES) == len(set(CIFAR100_FINE_CLASS_NAMES)) == 100
    assert len(CIFAR100_COARSE_CLASS_NAMES) == 20 and len(STL10_CLASS_NAMES) == 10
    assert get_dataset_info("cifar100").split_sizes == {"train": 50_000, "test": 10_000}
    assert get_dataset_info("stl10").split_sizes == {"train": 5_000, "test": 8_000}


def test_resolve_stats_forms():
    ref = NormalizationStats(CIFAR100_MEAN, CIFAR100_STD)
    assert resolve_stats("cifar100") == ref
    assert resolve_stats(get_dataset_info("cifar100")) == ref
    assert resolve_stats((CIFAR100_MEAN, CIFAR100_STD)) == ref
    assert resolve_stats({"mean": CIFAR100_MEAN, "std": CIFAR100_STD}) == ref
    assert resolve_stats(((0.5,), (0.25,))).mean == (0.5, 0.5, 0.5)
    with pytest.raises(DataError, match="std must be > 0"):
        resolve_stats(((0.5, 0.5, 0.5), (0.2, 0.0, 0.2)))


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(UnknownDatasetError) as err:
        load_image_dataset("cifar1000", "train")
    message = str(err.value)
    assert "cifar1000" in message and "Did you mean 'cifar100'" in message
    for name in KNOWN_DATASETS:
        assert name in message
    assert "local path" in message
    with pytest.raises(UnknownDatasetError, match="Known datasets"):
        build_transforms("imagenet-22k", train=True)


# -------------------------------------------------------------------------------- loader: generated data
def test_cifar100_parquet_hub_layout_is_normalised(tmp_path):
    train, test = make_cifar100(24, seed=0), make_cifar100(10, seed=1)
    root = write_hub_layout(tmp_path / "cifar100", {"train": train, "test": test}, config="cifar100")
    dd = load_image_dataset(root)
    assert isinstance(dd, DatasetDict) and set(dd) == {"train", "test"}
    ds = dd["train"]
    assert ds.column_names == ["image", "label", "index"]
    assert ds.features["image"] == Image(mode="RGB")
    assert ds.features["label"].names == list(CIFAR100_FINE_CLASS_NAMES)
    assert ds["index"][:] == list(range(24))
    assert ds["label"][:] == train["fine_label"][:]
    first = ds[0]["image"]
    assert first.mode == "RGB" and first.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(train[0]["img"]))
    assert infer_dataset_info(root).name == "cifar100"
    # coarse labels on request, and extra columns kept on request
    coarse = load_image_dataset(root, "test", label_column="coarse_label")
    assert coarse.features["label"].names == list(CIFAR100_COARSE_CLASS_NAMES)
    kept = load_image_dataset(root, "test", keep_columns=["coarse_label"])
    assert kept.column_names == ["image", "label", "coarse_label", "index"]


def test_parquet_files_single_list_and_dict(tmp_path):
    train, test = make_cifar100(12), make_cifar100(6, seed=3)
    train.to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    test.to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    single = load_image_dataset(tmp_path / "test-00000-of-00001.parquet", "test")
    assert len(single) == 6 and single.column_names == ["image", "label", "index"]
    both = load_image_dataset([tmp_path / "train-00000-of-00001.parquet", tmp_path / "test-00000-of-00001.parquet"])
    assert {k: len(v) for k, v in both.items()} == {"train": 12, "test": 6}
    mapping = load_image_dataset({"fit": str(tmp_path / "train-00000-of-00001.parquet")}, "fit")
    assert len(mapping) == 12
    # a file not named by split is the "train" split
    test.to_parquet(str(tmp_path / "export.parquet"))
    assert len(load_image_dataset(tmp_path / "export.parquet", "train")) == 6
    # class names identify CIFAR-100 even from an anonymous file
    assert infer_dataset_info(dataset=single).name == "cifar100"


def test_save_to_disk_dict_and_single_dataset(tmp_path):
    stl = DatasetDict(train=make_stl10(8), test=make_stl10(4, seed=5))
    stl.save_to_disk(str(tmp_path / "stl_dd"))
    dd = load_image_dataset(tmp_path / "stl_dd")
    assert {k: len(v) for k, v in dd.items()} == {"train": 8, "test": 4}
    assert dd["test"].features["label"].names == list(STL10_CLASS_NAMES)
    assert dd["train"][0]["image"].size == (96, 96)
    single = make_stl10(5)
    single.save_to_disk(str(tmp_path / "stl_single"))
    assert len(load_image_dataset(tmp_path / "stl_single", "train")) == 5


def test_imagefolder_with_grayscale_and_rgba_becomes_rgb(tmp_path):
    root = write_imagefolder(tmp_path / "pets")
    ds = load_image_dataset(root, "train")
    assert ds.column_names == ["image", "label", "index"]
    assert ds.features["label"].names == ["cat", "dog"]
    assert {ds[i]["image"].mode for i in range(len(ds))} == {"RGB"}
    with pytest.raises(DataError, match="compute_mean_std"):
        prepare_dataset(root, "train")  # not a known dataset: stats must be given
    stats = compute_mean_std(ds)
    prepared = prepare_dataset(root, "train", stats=stats, image_size=16)
    item = prepared[0]
    assert item["pixel_values"].shape == (3, 16, 16)


def test_stl10_imagefolder_is_recognised_and_resized(tmp_path):
    """STL-10 exported as an imagefolder (96x96, folder names = its class names) through the whole pipeline."""
    stl = make_stl10(10)
    for split in ("train", "test"):
        for k in range(len(stl)):
            folder = tmp_path / "stl_export" / split / STL10_CLASS_NAMES[stl[k]["label"]]
            folder.mkdir(parents=True, exist_ok=True)
            stl[k]["image"].save(folder / f"{k}.png")
    root = tmp_path / "stl_export"
    ds = load_image_dataset(root, "test")
    assert ds.features["label"].names == list(STL10_CLASS_NAMES) and ds[0]["image"].size == (96, 96)
    assert infer_dataset_info(dataset=ds).name == "stl10"  # from the class names: STL-10 stats without asking
    item = prepare_dataset(root, "test", with_index=True)[0]
    assert item["pixel_values"].shape == (3, 32, 32)
    memory = load_in_memory(root, "train", 32)
    assert memory.images.shape == (10, 3, 32, 32) and memory.class_names == list(STL10_CLASS_NAMES)
    original = dict(stl.info.__dict__)
    load_image_dataset(stl, "train")
    assert stl.info.description == original["description"]  # the caller's dataset is not modified


def test_loaded_dataset_object_and_string_labels():
    ds = Dataset.from_dict(
        {"picture": [png_bytes(a) for a in _images(6, 8, 0)], "kind": ["b", "a", "b", "c", "a", "a"]},
        features=Features({"picture": Image(), "kind": Value("string")}),
    )
    out = load_image_dataset(ds, label_column="kind")["train"]
    assert out.column_names == ["image", "label", "index"]
    assert out.features["label"].names == ["a", "b", "c"]
    assert out["label"][:] == [1, 0, 1, 2, 0, 0]


def test_index_is_a_stable_sample_id_through_shuffle(tmp_path):
    ds = load_image_dataset(make_cifar100(16), "train")
    shuffled = ds.shuffle(seed=0)
    base = ds.with_format("numpy", columns=["label"])[:]["label"]
    for row in shuffled.select(range(5)):
        assert row["label"] == base[row["index"]]
    prepared = prepare_dataset(make_cifar100(16), "train", dataset_name="cifar100", with_index=True, train=False)
    assert prepared.shuffle(seed=1)[0]["index"] in range(16)


# -------------------------------------------------------------------------------- transforms: semantics
@pytest.mark.parametrize("top,left,flip", [(0, 0, False), (4, 4, False), (8, 8, True), (1, 7, True), (8, 0, False)])
def test_pad_crop_flip_equals_slicing_the_padded_image(top, left, flip):
    image = np.random.default_rng(top * 10 + left).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = pad_crop_flip(torch.from_numpy(image).permute(2, 0, 1), top, left, flip, padding=4)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    expected = padded[top : top + 32, left : left + 32]
    if flip:
        expected = expected[:, ::-1]
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), expected)
    if (top, left, flip) == (4, 4, False):
        np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), image)


def test_train_transform_at_known_offsets_matches_naive_computation():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    transform = build_transforms("cifar100", train=True)
    for top, left, flip in [(0, 8, True), (3, 5, False), (8, 8, False)]:
        got = transform.transform_image(PIL.Image.fromarray(image), params=(top, left, flip))
        expected = naive_train_pixels(image, top, left, flip, CIFAR100_MEAN, CIFAR100_STD)
        assert got.dtype == torch.float32 and got.shape == (3, 32, 32)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # padded pixels are zeros before normalisation: -mean/std after it
    corner = transform.transform_image(PIL.Image.fromarray(image), params=(0, 0, False))[:, 0, 0]
    np.testing.assert_allclose(corner.numpy(), -np.array(CIFAR100_MEAN) / np.array(CIFAR100_STD), atol=1e-5)


def test_eval_transform_is_deterministic_normalisation_only():
    ds = load_image_dataset(make_cifar100(4), "train")
    transform = build_transforms("cifar100", train=False)
    a, b = transform(ds[:4]), transform(ds[:4])
    raw = make_cifar100(4)
    for k in range(4):
        assert torch.equal(a["pixel_values"][k], b["pixel_values"][k])
        expected = naive_eval_pixels(np.asarray(raw[k]["img"]), CIFAR100_MEAN, CIFAR100_STD)
        np.testing.assert_allclose(a["pixel_values"][k].numpy(), expected, atol=1e-5)


def test_transform_output_keys_types_and_collation():
    from transformers import default_data_collator

    ds = prepare_dataset(make_cifar100(8), "train", dataset_name="cifar100")
    item = ds[0]
    assert set(item) == {"pixel_values", "labels"}
    assert item["pixel_values"].dtype == torch.float32 and item["pixel_values"].shape == (3, 32, 32)
    assert isinstance(item["labels"], int)
    batch = ds[:3]
    assert set(batch) == {"pixel_values", "labels"} and len(batch["pixel_values"]) == 3
    with_index = prepare_dataset(make_cifar100(8), "test", dataset_name="cifar100", with_index=True)
    assert set(with_index[5]) == {"pixel_values", "labels", "index"} and with_index[5]["index"] == 5
    collated = default_data_collator([with_index[i] for i in range(4)])
    assert collated["pixel_values"].shape == (4, 3, 32, 32)
    assert collated["labels"].dtype == torch.int64
    assert collated["labels"].tolist() == make_cifar100(8)["fine_label"][:4]
    assert collated["index"].tolist() == [0, 1, 2, 3]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=default_data_collator)
    assert next(iter(loader))["pixel_values"].shape == (4, 3, 32, 32)


def test_train_split_defaults_to_augmentation_and_eval_split_does_not(tmp_path):
    root = write_hub_layout(tmp_path / "cifar100", {"train": make_cifar100(6), "test": make_cifar100(6)})
    dd = prepare_dataset(root, None)
    torch.manual_seed(0)
    train_a = dd["train"][:6]["pixel_values"]
    train_b = dd["train"][:6]["pixel_values"]
    assert any(not torch.equal(x, y) for x, y in zip(train_a, train_b))  # random crop/flip
    test_a, test_b = dd["test"][:6]["pixel_values"], dd["test"][:6]["pixel_values"]
    assert all(torch.equal(x, y) for x, y in zip(test_a, test_b))


def test_seeded_transform_is_reproducible_and_uniform():
    t1 = build_transforms("cifar10", train=True, seed=123)
    t2 = build_transforms("cifar10", train=True, seed=123)
    def draws(transform, ids):
        return list(zip(*(values.tolist() for values in transform.sample_params(ids))))

    draws1 = draws(t1, torch.arange(4500))
    assert draws1 == draws(t2, torch.arange(4500))
    t1.reseed(123)
    assert draws(t1, torch.arange(10)) == draws1[:10]
    tops = np.array([d[0] for d in draws1])
    lefts = np.array([d[1] for d in draws1])
    flips = np.array([d[2] for d in draws1])
    for values in (tops, lefts):
        counts = np.bincount(values, minlength=9)
        assert values.min() == 0 and values.max() == 8 and len(counts) == 9
        assert np.all(np.abs(counts / len(values) - 1 / 9) < 0.03)
    assert abs(flips.mean() - 0.5) < 0.04
    other = build_transforms("cifar10", train=True, seed=124)
    assert draws(other, torch.arange(20)) != draws1[:20]


def test_seeded_transform_in_dataloader_workers_is_reproducible_and_differs_per_worker():
    """Same image in every row: batches differ only by their augmentation."""
    same = Dataset.from_dict(
        {"img": [np.full((32, 32, 3), 200, np.uint8)] * 16, "label": [0] * 16},
        features=Features({"img": Image(), "label": ClassLabel(names=list(CIFAR10_CLASS_NAMES))}),
    )
    ds = prepare_dataset(same, "train", dataset_name="cifar10", train=True, seed=5)

    def epoch():
        torch.manual_seed(0)  # DataLoader draws the workers' base seed from the global RNG
        loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=lambda rows: rows)
        return [torch.stack([r["pixel_values"] for r in batch]) for batch in loader]

    first, second = epoch(), epoch()
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # reproducible
    assert not torch.equal(first[0], first[1])  # worker 0 and worker 1 do not replay the same stream


def test_resize_for_transfer_datasets_and_configurable_size():
    stl = make_stl10(4)
    ds = prepare_dataset(stl, "train", dataset_name="stl10", train=False)
    assert ds[0]["pixel_values"].shape == (3, 32, 32)
    # the resize is Pillow bilinear (antialiased), same as the fast path
    ref = np.asarray(stl[0]["image"].resize((32, 32), PIL.Image.Resampling.BILINEAR))
    info = get_dataset_info("stl10")
    np.testing.assert_allclose(ds[0]["pixel_values"].numpy(), naive_eval_pixels(ref, info.mean, info.std), atol=1e-5)
    assert prepare_dataset(stl, "train", dataset_name="stl10", image_size=48)[1]["pixel_values"].shape == (3, 48, 48)
    assert prepare_dataset(stl, "train", dataset_name="stl10", image_size=None)[1]["pixel_values"].shape == (3, 96, 96)


def test_grayscale_images_become_three_equal_channels():
    gray = Dataset.from_dict(
        {"image": _images(3, 28, 0, channels=1), "label": [0, 1, 2]},
        features=Features({"image": Image(), "label": ClassLabel(names=list(FASHION_MNIST_CLASS_NAMES))}),
    )
    assert gray[0]["image"].mode == "L"
    ds = load_image_dataset(gray, "train")
    assert ds[0]["image"].mode == "RGB"
    images, _, _ = decode_to_uint8(ds, image_size=None)
    assert images.shape == (3, 3, 28, 28)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    assert infer_dataset_info(dataset=gray).name == "fashion_mnist"


# ------------------------------------------------------------------------------------- device fast path
def _uint8_batch(n=16, size=32, seed=0):
    return torch.from_numpy(np.stack(_images(n, size, seed))).permute(0, 3, 1, 2).contiguous()


def test_device_augmentation_same_offsets_same_pixels_as_per_sample_transform():
    batch = _uint8_batch(16)
    aug = DeviceAugmentation("cifar100")
    per_sample = build_transforms("cifar100", train=True)
    top = torch.randint(0, 9, (16,), generator=torch.Generator().manual_seed(0))
    left = torch.randint(0, 9, (16,), generator=torch.Generator().manual_seed(1))
    flip = torch.rand(16, generator=torch.Generator().manual_seed(2)) < 0.5
    out = aug(batch, training=True, params=(top, left, flip))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    for b in range(16):
        image = PIL.Image.fromarray(batch[b].permute(1, 2, 0).numpy())
        expected = per_sample.transform_image(image, params=(int(top[b]), int(left[b]), bool(flip[b])))
        torch.testing.assert_close(out[b], expected, rtol=0, atol=1e-6)
        naive = naive_train_pixels(batch[b].permute(1, 2, 0).numpy(), int(top[b]), int(left[b]), bool(flip[b]),
                                   CIFAR100_MEAN, CIFAR100_STD)
        np.testing.assert_allclose(out[b].numpy(), naive, atol=1e-5)


def test_device_augmentation_eval_is_normalisation_only_and_accepts_float_and_gray():
    batch = _uint8_batch(8)
    aug = DeviceAugmentation("cifar100", seed=0)
    out = aug(batch, training=False)
    assert torch.equal(out, aug(batch, training=False))
    expected = normalize_uint8(batch, torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR100_STD).view(1, 3, 1, 1))
    torch.testing.assert_close(out, expected)
    as_float = batch.float() / 255
    torch.testing.assert_close(aug(as_float, training=False), out, atol=1e-6, rtol=0)
    assert torch.equal(as_float, batch.float() / 255)  # input untouched
    gray = batch[:, :1]
    g = aug(gray, training=False)
    assert g.shape == (8, 3, 32, 32)
    torch.testing.assert_close(g[:, 0] * CIFAR100_STD[0] + CIFAR100_MEAN[0], g[:, 1] * CIFAR100_STD[1] + CIFAR100_MEAN[1])
    with pytest.raises(DataError, match="B, 3, H, W"):
        aug(batch[0], training=True)
    # module mode is the default when training is not given
    aug.eval()
    assert torch.equal(aug(batch), out)


def test_device_augmentation_is_seeded_reproducible_and_uniform():
    batch, ids = _uint8_batch(64), torch.arange(64)
    a = DeviceAugmentation("cifar10", seed=7)(batch, training=True, index=ids)
    b = DeviceAugmentation("cifar10", seed=7)(batch, training=True, index=ids)
    c = DeviceAugmentation("cifar10", seed=8)(batch, training=True, index=ids)
    assert torch.equal(a, b) and not torch.equal(a, c)
    aug = DeviceAugmentation("cifar10", seed=0)
    top, left, flip = aug.sample_params(torch.arange(9000))
    for values in (top, left):
        counts = torch.bincount(values, minlength=9).double() / 9000
        assert values.min() == 0 and values.max() == 8
        assert torch.all((counts - 1 / 9).abs() < 0.02)
    assert abs(flip.double().mean().item() - 0.5) < 0.03
    # same distribution as the per-sample transform: flipped fraction and offset histogram agree
    per_sample = build_transforms("cifar10", train=True, seed=0)
    draws = np.array(torch.stack(per_sample.sample_params(torch.arange(9000)), 1).tolist())
    hist_ps = np.bincount(draws[:, 0], minlength=9) / 9000
    hist_dev = torch.bincount(top, minlength=9).numpy() / 9000
    assert np.abs(hist_ps - hist_dev).max() < 0.025
    # stateless: the per-sample transform draws exactly the same parameters for the same seed and samples
    assert draws[:, 0].tolist() == top.tolist() and draws[:, 2].astype(bool).tolist() == flip.tolist()


def test_device_augmentation_crop_and_flip_semantics_on_a_ramp():
    """A horizontal ramp makes shifts and flips visible: compare against hand-computed pixels."""
    ramp = torch.arange(32, dtype=torch.uint8).repeat(1, 3, 32, 1)  # (1, 3, 32, 32), value = column
    aug = DeviceAugmentation(((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)))  # normalised value == raw value
    shifted = aug(ramp, training=True, params=(torch.tensor([4]), torch.tensor([6]), torch.tensor([False]))).round()
    assert shifted[0, 0, 0].tolist() == list(range(2, 32)) + [0, 0]  # window moved 2 px right: zeros enter
    flipped = aug(ramp, training=True, params=(torch.tensor([4]), torch.tensor([4]), torch.tensor([True]))).round()
    assert flipped[0, 0, 0].tolist() == list(range(31, -1, -1))
    down = aug(ramp, training=True, params=(torch.tensor([0]), torch.tensor([4]), torch.tensor([False]))).round()
    assert down[0, 0, :4].sum() == 0 and down[0, 0, 4].tolist() == list(range(32))


def test_in_memory_dataset_items_batches_and_cache(tmp_path):
    ds = load_image_dataset(make_stl10(10), "train")
    memory = InMemoryImageDataset.from_dataset(ds, 32, cache_file=tmp_path / "stl.safetensors")
    assert memory.images.shape == (10, 3, 32, 32) and memory.images.dtype == torch.uint8
    assert memory.class_names == list(STL10_CLASS_NAMES) and memory.num_classes == 10
    item = memory[3]
    assert set(item) == {"pixel_values", "labels", "index"}
    assert item["pixel_values"].shape == (3, 32, 32) and item["pixel_values"].dtype == torch.uint8
    assert isinstance(item["labels"], int) and item["index"] == 3
    batch = memory.__getitems__([5, 1, 2])
    assert [b["index"] for b in batch] == [5, 1, 2]
    assert all(torch.equal(b["pixel_values"], memory[i]["pixel_values"]) for b, i in zip(batch, [5, 1, 2]))
    loader = torch.utils.data.DataLoader(memory, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    first = next(iter(loader))
    assert first["pixel_values"].shape == (4, 3, 32, 32) and first["labels"].dtype == torch.int64
    out = DeviceAugmentation("stl10", seed=0)(first["pixel_values"], training=True, index=first["index"])
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    # the cache file is reused, and rebuilt for another size
    again = InMemoryImageDataset.from_dataset(ds, 32, cache_file=tmp_path / "stl.safetensors")
    assert torch.equal(again.images, memory.images)
    assert InMemoryImageDataset.from_dataset(ds, 16, cache_file=tmp_path / "stl.safetensors").images.shape[-1] == 16
    check_labels(memory, 10)
    with pytest.raises(LabelOutOfRangeError, match=r"label 5 in row 5, index 5 .* 5 rows are affected"):
        check_labels(memory, 5)


def test_fast_path_eval_equals_per_sample_eval_including_resize():
    stl = make_stl10(6)
    per_sample = prepare_dataset(stl, "train", dataset_name="stl10", train=False)
    images, labels, index = decode_to_uint8(load_image_dataset(stl, "train"), 32)
    fast = DeviceAugmentation("stl10")(images, training=False)
    for k in range(6):
        torch.testing.assert_close(fast[k], per_sample[k]["pixel_values"], rtol=0, atol=1e-6)
    assert labels.tolist() == stl["label"][:] and index.tolist() == list(range(6))


def test_decode_to_uint8_with_worker_processes_matches_in_process():
    ds = load_image_dataset(make_cifar100(30), "train")
    a = decode_to_uint8(ds, 32, chunk_size=7)
    b = decode_to_uint8(ds, 32, chunk_size=7, num_workers=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_split_lists_available_splits(tmp_path):
    root = write_hub_layout(tmp_path / "tiny", {"train": make_stl10(2), "valid": make_stl10(2)})
    with pytest.raises(UnknownSplitError) as err:
        load_image_dataset(root, "test")
    assert "'test'" in str(err.value) and "['train', 'valid']" in str(err.value)


def test_missing_or_wrong_columns_list_the_columns_present():
    no_label = Dataset.from_dict({"img": _images(2, 8, 0), "note": ["a", "b"]}, features=Features({"img": Image(), "note": Value("string")}))
    with pytest.raises(MissingColumnError) as err:
        load_image_dataset(no_label, "train")
    assert "no label column" in str(err.value) and "img (Image)" in str(err.value) and "label_column=" in str(err.value)
    no_image = Dataset.from_dict({"pixels": [[1, 2], [3, 4]], "label": [0, 1]})
    with pytest.raises(MissingColumnError, match=r"no image column.*pixels.*image_column="):
        load_image_dataset(no_image, "train")
    with pytest.raises(MissingColumnError, match=r"label column 'fine' not found.*img \(Image\), fine_label"):
        load_image_dataset(make_cifar100(2), "train", label_column="fine")
    with pytest.raises(MissingColumnError, match="not an Image feature"):
        load_image_dataset(make_cifar100(2), "train", image_column="fine_label")
    floats = Dataset.from_dict({"image": _images(2, 8, 0), "label": [0.5, 1.0]}, features=Features({"image": Image(), "label": Value("float32")}))
    with pytest.raises(MissingColumnError, match="float32"):
        load_image_dataset(floats, "train")
    with pytest.raises(MissingColumnError, match="needs a 'image' column"):
        build_transforms("cifar10", train=False)({"img": [], "label": []})


def _corrupt_cifar100(tmp_path, bad_row=3):
    ds = make_cifar100(6)
    rows = ds.cast_column("img", Image(decode=False)).to_dict()
    rows["img"][bad_row] = {"bytes": b"\x89PNG\r\n\x1a\n this is not an image", "path": None}
    broken = Dataset.from_dict(rows, features=ds.features)
    path = tmp_path / "broken-cifar100.parquet"
    broken.to_parquet(str(path))
    return path


def test_corrupt_image_error_names_row_and_source(tmp_path):
    path = _corrupt_cifar100(tmp_path, bad_row=3)
    ds = prepare_dataset(path, "train", dataset_name="cifar100", with_index=True)
    ds[2]  # fine
    with pytest.raises(CorruptImageError) as err:
        ds[3]
    assert "row 3" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(CorruptImageError, match=r"row 3 of .*broken-cifar100\.parquet"):
        load_image_dataset(path, "train", verify=True)
    with pytest.raises(CorruptImageError, match="row 3"):
        decode_to_uint8(load_image_dataset(path, "train"))
    assert verify_images(load_image_dataset(make_cifar100(3), "train")) == 3


def test_corrupt_file_in_imagefolder_names_the_file(tmp_path):
    root = write_imagefolder(tmp_path / "pets", per_class=2, modes=("RGB",))
    (root / "train" / "dog" / "zz_broken.png").write_bytes(b"garbage")
    ds = load_image_dataset(root, "train")
    with pytest.raises(CorruptImageError) as err:
        verify_images(ds)
    message = str(err.value)
    assert "zz_broken.png" in message and "row " in message and str(root) in message


def test_check_labels_names_the_offending_value_and_row():
    ds = load_image_dataset(make_cifar100(20, seed=4), "train")
    labels = ds["label"][:]
    check_labels(ds, 100)
    with pytest.raises(LabelOutOfRangeError) as err:
        check_labels(ds, 10)
    bad_row = next(i for i, v in enumerate(labels) if v >= 10)
    message = str(err.value)
    assert f"label {labels[bad_row]} in row {bad_row}" in message and "num_labels=10" in message
    assert "ClassLabel with 100 classes" in message
    negative = Dataset.from_dict({"image": _images(3, 8, 0), "label": [0, -1, 1]}, features=Features({"image": Image(), "label": Value("int64")}))
    with pytest.raises(LabelOutOfRangeError, match="label -1 in row 1"):
        check_labels(load_image_dataset(negative, "train"), 2)
    with pytest.raises(LabelOutOfRangeError):
        check_labels(DatasetDict(train=ds), 5)
    with pytest.raises(LabelOutOfRangeError):
        prepare_dataset(make_cifar100(20, seed=4), "train", dataset_name="cifar100", num_labels=10)


def test_hub_id_unreachable_offline_fails_fast_and_says_to_pass_a_local_path():
    start = time.monotonic()
    for source in ("uoft-cs/cifar100", "cifar100", "someone/not-a-dataset"):
        with pytest.raises(DatasetUnavailableError) as err:
            load_image_dataset(source, "train")
        assert "local path" in str(err.value)
        assert isinstance(err.value, ConnectionError)
    assert "HF_HUB_OFFLINE" in str(err.value)
    assert time.monotonic() - start < 20


def test_missing_local_path_and_unsupported_files(tmp_path):
    with pytest.raises(DataSourceNotFoundError, match="no such file or directory"):
        load_image_dataset(str(tmp_path / "nope" / "cifar100"), "train")
    with pytest.raises(DataSourceNotFoundError, match="no such file"):
        load_image_dataset([tmp_path / "missing-train.parquet"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataSourceNotFoundError, match=r"\.parquet or \.arrow"):
        load_image_dataset(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceNotFoundError, match="no readable data"):
        load_image_dataset(tmp_path / "empty")


# ---------------------------------------------------------------------------------------- real data
def _sample_stats(prepared, n=512, seed=0):
    rows = np.random.default_rng(seed).choice(len(prepared), size=n, replace=False).tolist()
    pixels = torch.stack(prepared[rows]["pixel_values"])
    per_channel = pixels.permute(1, 0, 2, 3).reshape(3, -1)
    return pixels, per_channel.mean(1), per_channel.std(1)


def test_real_cifar10_counts_classes_shapes_and_normalisation(shared_data):
    dd = load_image_dataset(shared_data / "cifar10")
    assert {k: len(v) for k, v in dd.items()} == {"train": 50_000, "test": 10_000}
    assert dd["train"].features["label"].names == list(CIFAR10_CLASS_NAMES)
    assert dd["test"][0]["image"].size == (32, 32)
    assert infer_dataset_info(shared_data / "cifar10").name == "cifar10"
    test = prepare_dataset(shared_data / "cifar10", "test", with_index=True)
    pixels, mean, std = _sample_stats(test)
    assert pixels.shape == (512, 3, 32, 32) and pixels.dtype == torch.float32
    low = -np.array(get_dataset_info("cifar10").mean) / np.array(get_dataset_info("cifar10").std)
    assert pixels.amin().item() >= low.min() - 1e-4 and pixels.amax().item() < 2.3
    assert torch.all(mean.abs() < 0.15) and torch.all((std - 1).abs() < 0.15), (mean, std)
    check_labels(dd["test"], 10)


@pytest.mark.slow
def test_real_cifar10_fast_path_full_train_split(shared_data):
    memory = InMemoryImageDataset.from_dataset(load_image_dataset(shared_data / "cifar10", "train"), 32)
    assert memory.images.shape == (50_000, 3, 32, 32) and memory.num_classes == 10
    assert torch.bincount(memory.labels).tolist() == [5000] * 10
    out = DeviceAugmentation("cifar10")(memory.images[:2048], training=False)
    channels = out.permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.all(channels.mean(1).abs() < 0.1) and torch.all((channels.std(1) - 1).abs() < 0.1)


def test_real_tiny_imagenet_counts_resize_and_grayscale_rows(shared_data):
    dd = load_image_dataset(shared_data / "tiny-imagenet")
    assert {k: len(v) for k, v in dd.items()} == {"train": 100_000, "valid": 10_000}
    assert dd["train"].features["label"].num_classes == 200
    assert infer_dataset_info(shared_data / "tiny-imagenet").name == "tiny-imagenet"
    raw = datasets.load_dataset(str(shared_data / "tiny-imagenet"), split="valid")
    gray_rows = []
    for start in range(0, len(raw), 500):
        for k, image in enumerate(raw[start : start + 500]["image"]):
            assert image.size == (64, 64)
            if image.mode == "L":
                gray_rows.append(start + k)
        if len(gray_rows) >= 3:
            break
    assert gray_rows, "expected some grayscale images in Tiny ImageNet valid"
    valid = dd["valid"]
    images, _, index = decode_to_uint8(valid.select(gray_rows), 32)
    assert images.shape == (len(gray_rows), 3, 32, 32) and index.tolist() == gray_rows
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    prepared = prepare_dataset(shared_data / "tiny-imagenet", "valid", train=False)
    assert prepared[gray_rows[0]]["pixel_values"].shape == (3, 32, 32)
    pixels, mean, std = _sample_stats(prepared)
    assert torch.all(mean.abs() < 0.15) and torch.all((std - 1).abs() < 0.15), (mean, std)
    train = prepare_dataset(shared_data / "tiny-imagenet", "train", with_index=True)
    assert train[12345]["pixel_values"].shape == (3, 32, 32) and train[12345]["index"] == 12345


# ----------------------------------------------------------------------------------- Fashion-MNIST
needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_available(),
    reason="Fashion-MNIST IDX files not found: `apt-get install dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist)",
)


@needs_fashion_mnist
def test_fashion_mnist_from_the_debian_package():
    files = find_fashion_mnist_files()
    assert read_idx(files["train"][0]).shape == (60_000, 28, 28)
    assert np.bincount(read_idx(files["test"][1])).tolist() == [1000] * 10
    test = load_fashion_mnist(split="test")
    assert len(test) == 10_000 and test.features["label"].names == list(FASHION_MNIST_CLASS_NAMES)
    assert test[0]["image"].mode == "L" and test[0]["image"].size == (28, 28)
    np.testing.assert_array_equal(np.asarray(test[7]["image"]), read_idx(files["test"][0])[7])
    view = load_image_dataset("fashion_mnist", "test")  # short name -> Debian files (cached by the call above)
    assert view.column_names == ["image", "label", "index"] and view[0]["image"].mode == "RGB"
    assert view.features["label"].names == list(FASHION_MNIST_CLASS_NAMES)
    np.testing.assert_array_equal(np.asarray(view[7]["image"])[..., 1], read_idx(files["test"][0])[7])
    stats = compute_mean_std(view, max_samples=2000)
    assert abs(stats.mean[0] - 0.286) < 0.01 and abs(stats.std[0] - 0.353) < 0.01
    item = prepare_dataset(test, "test", with_index=True)[0]  # stats inferred from the class names
    assert item["pixel_values"].shape == (3, 32, 32)


@needs_fashion_mnist
@pytest.mark.slow
def test_fashion_mnist_short_name_and_documented_stats():
    dd = load_image_dataset("fashion_mnist")
    assert {k: len(v) for k, v in dd.items()} == {"train": 60_000, "test": 10_000}
    stats = compute_mean_std(dd["train"], image_size=None)
    assert tuple(round(m, 4) for m in stats.mean) == get_dataset_info("fashion_mnist").mean
    assert tuple(round(s, 4) for s in stats.std) == get_dataset_info("fashion_mnist").std


def test_fashion_mnist_missing_files_error_says_how_to_get_them(tmp_path):
    with pytest.raises(DataSourceNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)
