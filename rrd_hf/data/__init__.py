"""Image-classification data for rrd_hf: known datasets, one loader, benchmark transforms, a device fast path.

One resolver for every command (splits, classes, statistics)::

    from rrd_hf.data import resolve_dataset
    data = resolve_dataset("cifar10", data_dir="data/cifar10")
    data.train, data.eval, data.class_names, data.num_labels, data.stats

Typical use with a ``transformers.Trainer`` (per-sample CPU transforms)::

    from rrd_hf.data import prepare_dataset, set_epoch
    train = prepare_dataset("cifar100", "train", with_index=True, seed=0)   # crop + flip of (seed, epoch, index)
    test = prepare_dataset("cifar100", "test")                              # normalise only
    set_epoch(train, epoch)                                                 # before each epoch's iterator
    # TrainingArguments(..., remove_unused_columns=False)  <- required with on-the-fly transforms

In-memory fast path (decode once, augment batched on the device; bitwise the same images)::

    from rrd_hf.data import DeviceAugmentation, load_in_memory
    train = load_in_memory("data/cifar10", "train", image_size=32)   # uint8 (N, 3, 32, 32)
    augment = DeviceAugmentation(train.stats, seed=0).to(device)
    pixel_values = augment(batch["pixel_values"], training=True, index=batch["index"], epoch=epoch)

Offline: known names resolve to Hub ids; with ``HF_HUB_OFFLINE=1`` an uncached Hub id fails at once with
:class:`DatasetUnavailableError` telling you to pass a local path. Fashion-MNIST is read from the Debian
package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) when installed.
"""

from .augmentation import SharedEpoch, augmentation_params, mix32, set_epoch
from .device import DeviceAugmentation, InMemoryImageDataset, decode_to_uint8, load_in_memory
from .errors import (
    CorruptImageError,
    DataError,
    DatasetUnavailableError,
    DataSourceNotFoundError,
    LabelOutOfRangeError,
    MissingColumnError,
    UnknownDatasetError,
    UnknownSplitError,
)
from .fashion_mnist import (
    FASHION_MNIST_DEBIAN_DIR,
    fashion_mnist_available,
    find_fashion_mnist_files,
    load_fashion_mnist,
    read_idx,
)
from .images import decode_image
from .checks import check_labels, verify_images
from .loading import infer_dataset_info, load_image_dataset
from .provenance import describe_source
from .metadata import dataset_class_names, dataset_image_size, dataset_stats, image_processor_for
from .processors import CIFAR100_MEAN, CIFAR100_STD, cifar_image_processor, save_pretrained_with_processor
from .pipelines import DATA_PIPELINES, choose_data_pipeline, in_memory_budget, total_memory_bytes, uint8_bytes
from .prepare import prepare_dataset
from .registry import (
    CIFAR10_CLASS_NAMES,
    CIFAR100_COARSE_CLASS_NAMES,
    CIFAR100_FINE_CLASS_NAMES,
    FASHION_MNIST_CLASS_NAMES,
    KNOWN_DATASETS,
    STL10_CLASS_NAMES,
    DatasetInfo,
    NormalizationStats,
    find_dataset_info,
    get_dataset_info,
    known_dataset_names,
    resolve_stats,
)
from .resolve import ResolvedDataset, resolve_dataset
from .stats import compute_mean_std
from .transforms import (
    ImageClassificationTransform,
    build_transforms,
    normalization_table,
    normalize_uint8,
    normalize_with_table,
    pad_crop_flip,
)

__all__ = [
    # registry
    "KNOWN_DATASETS",
    "DatasetInfo",
    "NormalizationStats",
    "get_dataset_info",
    "find_dataset_info",
    "known_dataset_names",
    "resolve_stats",
    "CIFAR10_CLASS_NAMES",
    "CIFAR100_FINE_CLASS_NAMES",
    "CIFAR100_COARSE_CLASS_NAMES",
    "STL10_CLASS_NAMES",
    "FASHION_MNIST_CLASS_NAMES",
    # resolving a source, and what a dataset carries
    "resolve_dataset",
    "ResolvedDataset",
    "dataset_stats",
    "dataset_class_names",
    "dataset_image_size",
    "image_processor_for",
    "cifar_image_processor",
    "save_pretrained_with_processor",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    # loading
    "load_image_dataset",
    "infer_dataset_info",
    "describe_source",
    "check_labels",
    "verify_images",
    "decode_image",
    "compute_mean_std",
    # Fashion-MNIST (offline demo data)
    "load_fashion_mnist",
    "find_fashion_mnist_files",
    "fashion_mnist_available",
    "read_idx",
    "FASHION_MNIST_DEBIAN_DIR",
    # transforms
    "build_transforms",
    "ImageClassificationTransform",
    "pad_crop_flip",
    "normalize_uint8",
    "normalization_table",
    "normalize_with_table",
    "prepare_dataset",
    # stateless augmentation
    "augmentation_params",
    "mix32",
    "SharedEpoch",
    "set_epoch",
    # fast path
    "decode_to_uint8",
    "InMemoryImageDataset",
    "DeviceAugmentation",
    "load_in_memory",
    # choosing the data path
    "DATA_PIPELINES",
    "choose_data_pipeline",
    "in_memory_budget",
    "total_memory_bytes",
    "uint8_bytes",
    # errors
    "DataError",
    "UnknownDatasetError",
    "UnknownSplitError",
    "MissingColumnError",
    "CorruptImageError",
    "LabelOutOfRangeError",
    "DataSourceNotFoundError",
    "DatasetUnavailableError",
]
