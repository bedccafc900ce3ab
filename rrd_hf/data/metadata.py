"""What a dataset's batches are normalised with and what its classes are called, read from the dataset itself.

The normalisation a student expects follows from the data it was trained on. Keeping it in one place avoids the
silent mismatch of a processor built for one dataset (CIFAR-100 statistics) saved with a student trained on
another (CIFAR-10 batches): :func:`image_processor_for` builds the processor from the statistics the batches
were actually normalised with, which :func:`dataset_stats` reads from the prepared dataset.
"""

from __future__ import annotations

from .augmentation import transform_of
from .errors import DataError
from .processors import cifar_image_processor
from .registry import DatasetInfo, NormalizationStats, resolve_stats

__all__ = ["dataset_stats", "dataset_class_names", "dataset_image_size", "image_processor_for"]


def _inner(dataset):
    """The dataset a ``torch.utils.data.Subset`` (or similar wrapper) reads from, if any."""
    inner = getattr(dataset, "dataset", None)
    return inner if inner is not None and inner is not dataset else None


def _own_stats(dataset) -> NormalizationStats | None:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        found = {s for s in (_own_stats(split) for split in dataset.values()) if s is not None}
        if len(found) > 1:
            raise DataError(
                f"the splits of this DatasetDict are normalised with different statistics {sorted(map(str, found))}; "
                "prepare every split with the same stats= (the training split's)."
            )
        return found.pop() if found else None
    transform = transform_of(dataset)
    if transform is not None:
        stats = getattr(transform, "stats", None)
        return stats if isinstance(stats, NormalizationStats) else None
    stats = getattr(dataset, "stats", None)
    if isinstance(stats, NormalizationStats):
        return stats
    inner = _inner(dataset)
    return _own_stats(inner) if inner is not None else None


def dataset_stats(dataset, batch_transform=None) -> NormalizationStats | None:
    """The mean/std the batches of ``dataset`` are normalised with, or ``None`` when they are unknown.

    Reads a ``datasets.Dataset`` prepared by :func:`prepare_dataset` (its transform's statistics), an
    :class:`InMemoryImageDataset` (its ``stats``), a ``DatasetDict`` (the statistics all splits share), a
    ``torch.utils.data.Subset`` of those, a :class:`DeviceAugmentation` or :class:`ImageClassificationTransform`.
    ``batch_transform``: the device-side transform that normalises the batches (a :class:`DeviceAugmentation`);
    when it and the dataset both carry statistics they must agree (:class:`DataError` otherwise).
    """
    own = _own_stats(dataset)
    applied = getattr(batch_transform, "stats", None) if batch_transform is not None else None
    if not isinstance(applied, NormalizationStats):
        return own
    if own is not None and own != applied:
        raise DataError(
            f"the dataset records normalisation stats {own} but the batch transform normalises with {applied}; build "
            "the DeviceAugmentation from the dataset's stats (DeviceAugmentation(dataset.stats, ...))."
        )
    return applied


def dataset_class_names(dataset) -> list[str] | None:
    """The class names of ``dataset`` in label order, or ``None`` when its labels are bare integers.

    Reads the ``ClassLabel`` of a ``datasets.Dataset``'s ``label`` (or ``labels``) column, the first split of a
    ``DatasetDict``, an :class:`InMemoryImageDataset`'s ``class_names``, or the dataset inside a ``Subset``.
    """
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        for split in dataset.values():
            names = dataset_class_names(split)
            if names is not None:
                return names
        return None
    if isinstance(dataset, datasets.Dataset):
        for column in ("label", "labels"):
            feature = dataset.features.get(column)
            if isinstance(feature, datasets.ClassLabel):
                return list(feature.names)
        return None
    names = getattr(dataset, "class_names", None)
    if names is not None:
        return list(names)
    inner = _inner(dataset)
    return dataset_class_names(inner) if inner is not None else None


def dataset_image_size(dataset) -> int | None:
    """The side length of the images the batches of ``dataset`` hold, when it can be read without loading one."""
    transform = transform_of(dataset)
    if transform is not None and getattr(transform, "image_size", None) is not None:
        return int(transform.image_size)
    images = getattr(dataset, "images", None)
    if images is not None and hasattr(images, "shape") and len(images.shape) == 4:
        return int(images.shape[-1])
    inner = _inner(dataset)
    return dataset_image_size(inner) if inner is not None else None


def image_processor_for(dataset_or_stats, image_size: int | None = None, batch_transform=None):
    """The image processor to save with a student trained on ``dataset_or_stats``: it resizes to ``image_size``
    (default: the dataset's, else 32), rescales to ``[0, 1]`` and normalises with the statistics the batches were
    normalised with, so ``pipeline("image-classification")`` and ``rrd-hf evaluate`` see what training saw.

    ``dataset_or_stats``: a prepared dataset (see :func:`dataset_stats`), or statistics in any form
    :func:`resolve_stats` takes (a known dataset name, ``NormalizationStats``, ``((r, g, b), (r, g, b))``, ...).
    """
    if isinstance(dataset_or_stats, (str, NormalizationStats, DatasetInfo, dict, tuple, list)):
        stats = resolve_stats(dataset_or_stats)
        size = image_size
    else:
        stats = dataset_stats(dataset_or_stats, batch_transform)
        if stats is None:
            raise DataError(
                f"cannot tell which mean/std the batches of this {type(dataset_or_stats).__name__} are normalised "
                "with: pass the statistics instead (image_processor_for(stats, image_size)), or prepare the data with "
                "rrd_hf.data.prepare_dataset / InMemoryImageDataset(..., stats=...)."
            )
        size = image_size if image_size is not None else dataset_image_size(dataset_or_stats)
    return cifar_image_processor(mean=stats.mean, std=stats.std, size=int(size) if size is not None else 32)

