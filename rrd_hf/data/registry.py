"""The datasets rrd_hf knows by name: Hub ids, schemas, splits, sizes and normalisation statistics.

>>> info = get_dataset_info("cifar100")
>>> info.hub_id, info.image_column, info.label_column, info.train_split, info.eval_split
('uoft-cs/cifar100', 'img', 'fine_label', 'train', 'test')

Names are matched case-insensitively and ignoring ``-``/``_``, so ``"CIFAR-100"``, ``"cifar_100"``,
``"uoft-cs/cifar100"`` and ``"cifar100"`` all give the same entry.

Mean/std are per channel, over pixels scaled to ``[0, 1]``, computed on the training split (the values
quoted in the CIFAR/CRD literature for CIFAR-10/100, STL-10 and Tiny ImageNet). Fashion-MNIST's were
computed by us over its 60,000 training images (``compute_mean_std`` on the Debian package data:
mean 0.2860, std 0.3530) and replicated over the three channels, since every image is converted to RGB.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

from .errors import DataError, UnknownDatasetError

__all__ = [
    "DatasetInfo",
    "NormalizationStats",
    "KNOWN_DATASETS",
    "CIFAR10_CLASS_NAMES",
    "CIFAR100_FINE_CLASS_NAMES",
    "CIFAR100_COARSE_CLASS_NAMES",
    "STL10_CLASS_NAMES",
    "FASHION_MNIST_CLASS_NAMES",
    "get_dataset_info",
    "find_dataset_info",
    "known_dataset_names",
    "resolve_stats",
]


@dataclass(frozen=True)
class NormalizationStats:
    """Per-channel mean and standard deviation of pixels in ``[0, 1]`` (RGB order)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) == 1:
            mean = mean * 3
        if len(std) == 1:
            std = std * 3
        if len(mean) != 3 or len(std) != 3:
            raise DataError(
                f"normalisation stats need 3 values (RGB) or 1 (replicated) for mean and std, got mean={self.mean!r}, "
                f"std={self.std!r}."
            )
        if any(s <= 0 for s in std):
            raise DataError(f"every std must be > 0, got std={self.std!r}.")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)


CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The fine and coarse names of the original CIFAR-100 ``meta`` file (alphabetical), as on the Hub card.
CIFAR100_FINE_CLASS_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
CIFAR100_COARSE_CLASS_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)  # fmt: skip
STL10_CLASS_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
# The names of the Fashion-MNIST README (the Hub's ClassLabel spells the first one "T - shirt / top").
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


@dataclass(frozen=True)
class DatasetInfo:
    """Everything rrd_hf needs to know about a known dataset.

    ``image_column``/``label_column`` are the column names of the Hub repo (the loader renames them to
    ``image``/``label``); ``image_size`` is the native side length; ``channels`` is 3 for RGB datasets and
    1 for grayscale ones (Tiny ImageNet is RGB with a few grayscale images; every image is converted to RGB).
    """

    name: str
    hub_id: str
    image_column: str
    label_column: str
    train_split: str
    eval_split: str
    num_classes: int
    image_size: int
    channels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    split_sizes: Mapping[str, int] = field(default_factory=dict, hash=False)
    class_names: tuple[str, ...] | None = None
    extra_columns: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    notes: str = ""

    @property
    def stats(self) -> NormalizationStats:
        return NormalizationStats(self.mean, self.std)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_sizes) or (self.train_split, self.eval_split)


KNOWN_DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="cifar100",
            hub_id="uoft-cs/cifar100",
            image_column="img",
            label_column="fine_label",
            train_split="train",
            eval_split="test",
            num_classes=100,
            image_size=32,
            channels=3,
            mean=(0.5071, 0.4867, 0.4408),
            std=(0.2675, 0.2565, 0.2761),
            split_sizes={"train": 50_000, "test": 10_000},
            class_names=CIFAR100_FINE_CLASS_NAMES,
            extra_columns=("coarse_label",),
            aliases=("cifar-100", "cifar_100"),
            notes="`coarse_label` (20 superclasses) is available with label_column='coarse_label'.",
        ),
        DatasetInfo(
            name="cifar10",
            hub_id="uoft-cs/cifar10",
            image_column="img",
            label_column="label",
            train_split="train",
            eval_split="test",
            num_classes=10,
            image_size=32,
            channels=3,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            split_sizes={"train": 50_000, "test": 10_000},
            class_names=CIFAR10_CLASS_NAMES,
            aliases=("cifar-10", "cifar_10"),
        ),
        DatasetInfo(
            name="tiny-imagenet",
            hub_id="zh-plus/tiny-imagenet",
            image_column="image",
            label_column="label",
            train_split="train",
            eval_split="valid",
            num_classes=200,
            image_size=64,
            channels=3,
            mean=(0.4802, 0.4481, 0.3975),
            std=(0.2770, 0.2691, 0.2821),
            split_sizes={"train": 100_000, "valid": 10_000},
            aliases=("tinyimagenet", "tiny_imagenet", "tiny-imagenet-200"),
            notes="eval split is 'valid'; some images are grayscale (converted to RGB); class names are WordNet ids.",
        ),
        DatasetInfo(
            name="stl10",
            hub_id="tanganke/stl10",
            image_column="image",
            label_column="label",
            train_split="train",
            eval_split="test",
            num_classes=10,
            image_size=96,
            channels=3,
            mean=(0.4467, 0.4398, 0.4066),
            std=(0.2603, 0.2566, 0.2712),
            split_sizes={"train": 5_000, "test": 8_000},
            class_names=STL10_CLASS_NAMES,
            aliases=("stl-10", "stl_10"),
            notes="no 'unlabeled' split in this Hub repo.",
        ),
        DatasetInfo(
            name="fashion_mnist",
            hub_id="zalando-datasets/fashion_mnist",
            image_column="image",
            label_column="label",
            train_split="train",
            eval_split="test",
            num_classes=10,
            image_size=28,
            channels=1,
            mean=(0.2860, 0.2860, 0.2860),
            std=(0.3530, 0.3530, 0.3530),
            split_sizes={"train": 60_000, "test": 10_000},
            class_names=FASHION_MNIST_CLASS_NAMES,
            aliases=("fashion-mnist", "fashionmnist", "fmnist"),
            notes="offline from the Debian package dataset-fashion-mnist (see rrd_hf.data.load_fashion_mnist).",
        ),
    )
}


def _key(text: str) -> str:
    return re.sub(r"[-_\s]", "", str(text).strip().lower())


_LOOKUP: dict[str, DatasetInfo] = {}
for _info in KNOWN_DATASETS.values():
    for _alias in (_info.name, _info.hub_id, *_info.aliases):
        _LOOKUP[_key(_alias)] = _info
    # The Hub repo name alone (e.g. "tiny-imagenet" of "zh-plus/tiny-imagenet") and the datasets cache
    # folder name ("uoft-cs___cifar100") also identify the dataset.
    _LOOKUP.setdefault(_key(_info.hub_id.split("/")[-1]), _info)
    _LOOKUP.setdefault(_key(_info.hub_id.replace("/", "___")), _info)


def known_dataset_names() -> list[str]:
    """The short names of the known datasets."""
    return list(KNOWN_DATASETS)


def find_dataset_info(name_or_id) -> DatasetInfo | None:
    """The :class:`DatasetInfo` of a short name, alias or Hub id, or ``None`` when it is not known."""
    if isinstance(name_or_id, DatasetInfo):
        return name_or_id
    if not isinstance(name_or_id, str):
        return None
    return _LOOKUP.get(_key(name_or_id))


def _known_list() -> str:
    return ", ".join(f"{i.name} ({i.hub_id})" for i in KNOWN_DATASETS.values())


def get_dataset_info(name_or_id) -> DatasetInfo:
    """The :class:`DatasetInfo` of a known short name, alias or Hub id; :class:`UnknownDatasetError` otherwise."""
    info = find_dataset_info(name_or_id)
    if info is not None:
        return info
    close = difflib.get_close_matches(_key(str(name_or_id)), list(_LOOKUP), n=1, cutoff=0.6)
    hint = f" Did you mean {_LOOKUP[close[0]].name!r}?" if close else ""
    raise UnknownDatasetError(
        f"unknown dataset {name_or_id!r}.{hint} Known datasets: {_known_list()}. For any other dataset pass a "
        "Hub id ('org/name') or a local path (parquet files, a save_to_disk folder, an imagefolder directory or "
        "a folder laid out like the Hub repo) to load_image_dataset, and give the normalisation stats explicitly "
        "(stats=((r, g, b), (r, g, b)) or rrd_hf.data.compute_mean_std(dataset))."
    )


StatsLike = Union[str, DatasetInfo, NormalizationStats, Mapping, Sequence]


def resolve_stats(stats: StatsLike) -> NormalizationStats:
    """Normalisation stats from a known dataset name/Hub id, a :class:`DatasetInfo`, a
    :class:`NormalizationStats`, a ``{"mean": ..., "std": ...}`` mapping or a ``(mean, std)`` pair."""
    if isinstance(stats, NormalizationStats):
        return stats
    if isinstance(stats, DatasetInfo):
        return stats.stats
    if isinstance(stats, str):
        return get_dataset_info(stats).stats
    if isinstance(stats, Mapping):
        if "mean" not in stats or "std" not in stats:
            raise DataError(f"a stats mapping needs the keys 'mean' and 'std', got {sorted(stats)}.")
        return NormalizationStats(tuple(stats["mean"]), tuple(stats["std"]))
    if isinstance(stats, Sequence) and len(stats) == 2:
        return NormalizationStats(tuple(stats[0]), tuple(stats[1]))
    raise DataError(
        f"cannot use {stats!r} as normalisation stats: pass a known dataset name ({', '.join(KNOWN_DATASETS)}), "
        "a DatasetInfo, NormalizationStats, {'mean': (r, g, b), 'std': (r, g, b)} or ((r, g, b), (r, g, b))."
    )
