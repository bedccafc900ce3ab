"""Per-channel mean/std of a dataset, for normalising sources that are not a known dataset."""

from __future__ import annotations

import numpy as np
import torch

from .registry import NormalizationStats

__all__ = ["compute_mean_std"]


def compute_mean_std(
    dataset,
    *,
    image_size: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> NormalizationStats:
    """Mean and (population) standard deviation per RGB channel of pixels scaled to ``[0, 1]``.

    ``dataset`` is a normalised ``datasets.Dataset`` (``image`` column; grayscale images count as R=G=B) or an
    :class:`InMemoryImageDataset`. ``max_samples`` takes a seeded random subset; ``image_size`` resizes first
    (``None``: native size, which must then be uniform). This is how the Fashion-MNIST stats in the registry were
    computed (all 60,000 training images: 0.2860 / 0.3530).
    """
    from .device import InMemoryImageDataset, decode_to_uint8

    if isinstance(dataset, InMemoryImageDataset):
        images = dataset.images.cpu()
        if max_samples is not None and max_samples < len(images):
            pick = np.random.default_rng(seed).choice(len(images), size=max_samples, replace=False)
            images = images[torch.as_tensor(np.sort(pick))]
    else:
        if max_samples is not None and max_samples < len(dataset):
            pick = np.random.default_rng(seed).choice(len(dataset), size=max_samples, replace=False)
            dataset = dataset.select(np.sort(pick))
        images, _, _ = decode_to_uint8(dataset, image_size, num_workers=num_workers)
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255.0
    mean = pixels.mean(dim=1)
    std = pixels.std(dim=1, unbiased=False)
    return NormalizationStats(tuple(mean.tolist()), tuple(std.tolist()))
