"""The image processor saved beside a model: resize, rescale to [0, 1], normalise with the training data's
statistics; built from transformers' Pillow image processor (no torchvision needed)."""

import os

from transformers import PreTrainedModel

from .registry import KNOWN_DATASETS

# One source of truth for the dataset statistics: rrd_hf.data's registry.
CIFAR100_MEAN = KNOWN_DATASETS["cifar100"].mean
CIFAR100_STD = KNOWN_DATASETS["cifar100"].std


def cifar_image_processor(mean=CIFAR100_MEAN, std=CIFAR100_STD, size: int = 32):
    """Return a ``ViTImageProcessorPil`` that resizes to ``size`` x ``size``, rescales to [0, 1] and normalises.

    The Pil variant is used because the default ``ViTImageProcessor`` needs torchvision in transformers 5.x.
    Saved with ``save_pretrained``, it writes ``"image_processor_type": "ViTImageProcessor"``, and
    ``AutoImageProcessor`` then picks whichever backend the loading machine has. That is what makes
    ``pipeline("image-classification", model=path)`` work on our checkpoints.
    """
    from transformers import ViTImageProcessorPil

    if int(size) < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"mean/std must have equal lengths and positive std; got {mean}, {std}")
    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": int(size), "width": int(size)},
        do_rescale=True,
        do_normalize=True,
        image_mean=mean,
        image_std=std,
    )


def save_pretrained_with_processor(model: PreTrainedModel, path, processor=None, **save_kwargs) -> str:
    """Save ``model`` and an image processor together, so the folder works with ``pipeline`` and ``AutoImageProcessor``.

    ``processor`` defaults to ``cifar_image_processor()`` (CIFAR-100 statistics). Extra kwargs go to
    ``model.save_pretrained``. Returns the folder path.
    """
    path = os.fspath(path)
    model.save_pretrained(path, **save_kwargs)
    (processor if processor is not None else cifar_image_processor()).save_pretrained(path)
    return path


__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "cifar_image_processor", "save_pretrained_with_processor"]
