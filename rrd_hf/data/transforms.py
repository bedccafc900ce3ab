"""The benchmark image transforms in plain torch (no torchvision), as ``datasets`` batch transforms.

Training (the CIFAR recipe used by CRD/RRD): ``RandomCrop(image_size, padding=4)`` with zero padding
(torchvision's default ``fill=0``, ``padding_mode="constant"``), ``RandomHorizontalFlip(0.5)``, ``ToTensor``,
``Normalize(mean, std)``. Evaluation: ``ToTensor`` + ``Normalize`` only, nothing random. Before either, every
image is converted to RGB and, when its size differs from ``image_size``, resized with Pillow's bilinear filter
(STL-10 96→32, Tiny ImageNet 64→32, Fashion-MNIST 28→32 at the default ``image_size=32``).

:func:`build_transforms` returns an :class:`ImageClassificationTransform` for ``Dataset.set_transform`` /
``with_transform``: it maps a batch ``{"image": [...], "label": [...], "index": [...]}`` to exactly
``{"pixel_values": [float32 (3, S, S) tensors], "labels": [int, ...]}`` plus ``"index"`` when ``with_index``.

The crop/flip/normalise primitives below (:func:`pad_crop_flip`, :func:`normalize_uint8`) are the reference
semantics that :class:`rrd_hf.data.DeviceAugmentation` reproduces batched on an accelerator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import MissingColumnError
from .images import decode_image, image_to_uint8_array
from .registry import NormalizationStats, StatsLike, resolve_stats

__all__ = [
    "ImageClassificationTransform",
    "build_transforms",
    "pad_crop_flip",
    "normalize_uint8",
    "image_to_tensor",
]


def image_to_tensor(image, image_size: int | None = None, *, row=None, source=None) -> torch.Tensor:
    """Decode one image value (PIL, ``{"bytes","path"}``, ...) to a ``uint8`` ``(3, S, S)`` tensor."""
    array = image_to_uint8_array(decode_image(image, row=row, source=source), image_size)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def pad_crop_flip(image: torch.Tensor, top: int, left: int, flip: bool, padding: int = 4) -> torch.Tensor:
    """Zero-pad ``image`` (``(C, H, W)``, any dtype) by ``padding`` on every side, take the ``H×W`` window whose
    top-left corner is ``(top, left)`` in the padded image (``0 <= top, left <= 2 * padding``), then mirror it
    left-right if ``flip``. ``top = left = padding`` and ``flip=False`` give back the image unchanged."""
    _, height, width = image.shape
    if not (0 <= top <= 2 * padding and 0 <= left <= 2 * padding):
        raise ValueError(f"crop offsets must be in [0, {2 * padding}], got top={top}, left={left}.")
    padded = F.pad(image, (padding, padding, padding, padding)) if padding else image
    out = padded[:, top : top + height, left : left + width]
    return out.flip(-1) if flip else out


def normalize_uint8(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(image / 255 - mean) / std`` as float32; ``mean``/``std`` broadcast over ``(..., 3, H, W)``.
    A floating ``image`` is taken to be in ``[0, 1]`` already."""
    out = image.to(torch.float32) if image.dtype != torch.float32 else image.clone()
    if not image.is_floating_point():
        out.div_(255.0)
    return out.sub_(mean).div_(std)


class ImageClassificationTransform:
    """A picklable batch transform for ``Dataset.set_transform``/``with_transform`` (see module docstring).

    Randomness: with ``seed=None`` the crop offsets and flips come from torch's global RNG, which
    ``transformers.set_seed`` seeds and which ``DataLoader`` reseeds differently in every worker (like
    torchvision). With a ``seed``, a private ``torch.Generator`` is used: seeded with ``seed`` in the main
    process, and with ``seed`` mixed with the worker's seed inside a ``DataLoader`` worker, so workers differ
    from each other and from one epoch to the next while a run stays reproducible. :meth:`reseed` restarts it.

    Images are decoded here (the dataset's ``Image`` column may be ``decode=False``, as :func:`prepare_dataset`
    sets it), so that a corrupt image raises :class:`CorruptImageError` naming its ``index`` and ``source``.
    """

    def __init__(
        self,
        stats: StatsLike,
        *,
        train: bool,
        image_size: int | None = 32,
        padding: int = 4,
        flip_prob: float = 0.5,
        with_index: bool = False,
        seed: int | None = None,
        source: str | None = None,
        image_column: str = "image",
        label_column: str = "label",
        index_column: str = "index",
    ):
        self.stats: NormalizationStats = resolve_stats(stats)
        self.train = bool(train)
        self.image_size = image_size
        self.padding = int(padding)
        self.flip_prob = float(flip_prob)
        if self.padding < 0 or not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"need padding >= 0 and 0 <= flip_prob <= 1, got padding={padding}, flip_prob={flip_prob}.")
        self.with_index = bool(with_index)
        self.seed = seed
        self.source = source
        self.image_column, self.label_column, self.index_column = image_column, label_column, index_column
        self._mean = torch.tensor(self.stats.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.stats.std, dtype=torch.float32).view(3, 1, 1)
        self._generator: torch.Generator | None = None
        self._generator_key = None

    # -- randomness ------------------------------------------------------------------------------
    def reseed(self, seed: int | None) -> None:
        """Use ``seed`` from now on (``None``: torch's global RNG) and restart the private generator."""
        self.seed = seed
        self._generator, self._generator_key = None, None

    def _rng(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        import os

        worker = torch.utils.data.get_worker_info()
        key = (os.getpid(), worker.id if worker is not None else None)
        if self._generator is None or self._generator_key != key:
            seed = int(self.seed) if worker is None else (int(self.seed) * 1_000_003 + int(worker.seed)) % (2**63)
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_key = key
        return self._generator

    def sample_params(self) -> tuple[int, int, bool]:
        """``(top, left, flip)`` for one image, as torchvision's RandomCrop/RandomHorizontalFlip draw them."""
        generator = self._rng()
        top, left = torch.randint(0, 2 * self.padding + 1, (2,), generator=generator).tolist()
        flip = bool(torch.rand((), generator=generator) < self.flip_prob)
        return top, left, flip

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_generator"], state["_generator_key"] = None, None
        return state

    # -- the transform -----------------------------------------------------------------------------
    def transform_image(self, image, *, row=None, params: tuple[int, int, bool] | None = None) -> torch.Tensor:
        """One image value → normalised float32 ``(3, S, S)``; ``params=(top, left, flip)`` fixes the augmentation."""
        tensor = image_to_tensor(image, self.image_size, row=row, source=self.source)
        if self.train:
            top, left, flip = params if params is not None else self.sample_params()
            tensor = pad_crop_flip(tensor, top, left, flip, self.padding)
        return normalize_uint8(tensor, self._mean, self._std)

    def __call__(self, batch: dict) -> dict:
        for column in (self.image_column, self.label_column) + ((self.index_column,) if self.with_index else ()):
            if column not in batch:
                raise MissingColumnError(
                    f"the transform needs a {column!r} column but the batch has {sorted(batch)}. Load the data with "
                    "rrd_hf.data.load_image_dataset (which produces image/label/index), or pass image_column=/"
                    "label_column= to build_transforms" + (", or with_index=False" if column == self.index_column else "")
                    + "."
                )
        images = batch[self.image_column]
        rows = batch.get(self.index_column)
        pixel_values = [
            self.transform_image(image, row=(rows[k] if rows is not None else None)) for k, image in enumerate(images)
        ]
        out = {"pixel_values": pixel_values, "labels": [int(label) for label in batch[self.label_column]]}
        if self.with_index:
            out["index"] = [int(i) for i in rows]
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(train={self.train}, image_size={self.image_size}, padding={self.padding}, "
            f"flip_prob={self.flip_prob}, mean={self.stats.mean}, std={self.stats.std}, with_index={self.with_index}, "
            f"seed={self.seed})"
        )


def build_transforms(
    dataset_name_or_stats: StatsLike,
    train: bool,
    image_size: int | None = 32,
    with_index: bool = False,
    *,
    padding: int = 4,
    flip_prob: float = 0.5,
    seed: int | None = None,
    source: str | None = None,
) -> ImageClassificationTransform:
    """The benchmark transform for ``Dataset.set_transform``/``with_transform``.

    Args:
        dataset_name_or_stats: a known dataset name/Hub id (its mean/std are used), a ``DatasetInfo``,
            ``NormalizationStats``, ``{"mean", "std"}`` or ``((r, g, b), (r, g, b))``.
        train: random crop (``padding`` zero pixels) + horizontal flip + normalise; ``False``: normalise only.
        image_size: side length of the output (images of another size are resized first); ``None`` keeps
            the native size.
        with_index: also return the ``index`` column (sample ids for a memory bank).
        seed: see :class:`ImageClassificationTransform` (``None``: torch's global RNG).
        source: shown in the :class:`CorruptImageError` message.
    """
    return ImageClassificationTransform(
        dataset_name_or_stats,
        train=train,
        image_size=image_size,
        padding=padding,
        flip_prob=flip_prob,
        with_index=with_index,
        seed=seed,
        source=source,
    )
