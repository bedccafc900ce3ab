"""The benchmark image transforms in plain torch (no torchvision), as ``datasets`` batch transforms.

Training (the CIFAR recipe used by CRD/RRD): ``RandomCrop(image_size, padding=4)`` with zero padding
(torchvision's default ``fill=0``, ``padding_mode="constant"``), ``RandomHorizontalFlip(0.5)``, ``ToTensor``,
``Normalize(mean, std)``. Evaluation: ``ToTensor`` + ``Normalize`` only, nothing random. Before either, every
image is converted to RGB and, when its size differs from ``image_size``, resized with Pillow's bilinear filter
(STL-10 96→32, Tiny ImageNet 64→32, Fashion-MNIST 28→32 at the default ``image_size=32``).

:func:`build_transforms` returns an :class:`ImageClassificationTransform` for ``Dataset.set_transform`` /
``with_transform``: it maps a batch ``{"image": [...], "label": [...], "index": [...]}`` to exactly
``{"pixel_values": [float32 (3, S, S) tensors], "labels": [int, ...]}`` plus ``"index"`` when ``with_index``.

The crop/flip/normalise primitives below (:func:`pad_crop_flip`, :func:`normalization_table`) are shared with
:class:`rrd_hf.data.DeviceAugmentation`, which applies them batched on an accelerator; with the same seed, epoch
and sample index both paths produce bitwise the same float32 image.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .augmentation import SharedEpoch, augmentation_params
from .errors import MissingColumnError
from .images import decode_image, image_to_uint8_array
from .registry import NormalizationStats, StatsLike, resolve_stats

__all__ = [
    "ImageClassificationTransform",
    "build_transforms",
    "pad_crop_flip",
    "normalize_uint8",
    "normalization_table",
    "normalize_with_table",
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


def normalization_table(stats: StatsLike) -> torch.Tensor:
    """The float32 ``(3, 256)`` table of every normalised value a uint8 pixel can take (:func:`normalize_uint8`
    of 0..255 per channel, computed on the CPU).

    Both data paths normalise by looking pixels up in it, so they agree bitwise on every device: CUDA divides by
    a scalar as a multiplication by its reciprocal, which can differ from the CPU's division in the last bit.
    """
    resolved = resolve_stats(stats)
    values = torch.arange(256, dtype=torch.uint8).view(1, 256).repeat(3, 1)
    mean = torch.tensor(resolved.mean, dtype=torch.float32).view(3, 1)
    std = torch.tensor(resolved.std, dtype=torch.float32).view(3, 1)
    return normalize_uint8(values, mean, std)


def normalize_with_table(images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Normalise uint8 ``(..., 3, H, W)`` images by :func:`normalization_table` lookup (on ``images``' device;
    ``table`` must be there too)."""
    offsets = torch.arange(0, 3 * 256, 256, dtype=torch.int32, device=images.device).view(3, 1, 1)
    positions = (images.to(torch.int32) + offsets).reshape(-1)
    return table.reshape(-1).index_select(0, positions).view(images.shape)


class ImageClassificationTransform:
    """A picklable batch transform for ``Dataset.set_transform``/``with_transform`` (see module docstring).

    Randomness: with a ``seed``, each training image's crop and flip are :func:`augmentation_params` of
    ``(seed, epoch, index)``: nothing is drawn, so DataLoader worker count, process count and resuming cannot
    change them, and :class:`DeviceAugmentation` gives the same image. The epoch is set with :meth:`set_epoch`
    (shared memory: DataLoader workers, forked or spawned, see it); the batch must carry the ``index`` column.
    With ``seed=None`` the draws come from torch's global RNG (which ``DataLoader`` reseeds differently in
    every worker and epoch, like torchvision): random, but not reproducible across worker counts or resumes.

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
        self.seed = None if seed is None else int(seed)
        self.source = source
        self.image_column, self.label_column, self.index_column = image_column, label_column, index_column
        self.table = normalization_table(self.stats)
        self._epoch = SharedEpoch(0)

    # -- randomness ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` (0-based) for the crops and flips from now on, in this process and its DataLoader workers."""
        self._epoch.set(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def reseed(self, seed: int | None) -> None:
        """Use ``seed`` from now on (``None``: torch's global RNG)."""
        self.seed = None if seed is None else int(seed)

    def sample_params(
        self, index: torch.Tensor | Sequence[int], epoch: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(top, left, flip)`` for the samples ``index`` at ``epoch`` (default: the one set by :meth:`set_epoch`):
        int64, int64 and bool tensors. With ``seed=None`` they are drawn from torch's global RNG instead."""
        index = torch.as_tensor(index, dtype=torch.int64)
        if self.seed is None:
            offsets = torch.randint(0, 2 * self.padding + 1, (2, len(index)))
            return offsets[0], offsets[1], torch.rand(len(index)) < self.flip_prob
        epoch = self.epoch if epoch is None else int(epoch)
        return augmentation_params(self.seed, epoch, index, self.padding, self.flip_prob)

    def _missing_index_error(self) -> MissingColumnError:
        return MissingColumnError(
            f"the seeded training transform takes each image's crop and flip from (seed, epoch, sample index), but "
            f"the batch has no {self.index_column!r} column. Load the data with rrd_hf.data.prepare_dataset(..., "
            "with_index=True) or rrd_hf.data.load_image_dataset (both keep the 'index' column), or pass seed=None for "
            "unseeded (non-reproducible) augmentation."
        )

    # -- the transform -----------------------------------------------------------------------------
    def transform_image(self, image, *, row=None, params: tuple[int, int, bool] | None = None) -> torch.Tensor:
        """One image value → normalised float32 ``(3, S, S)``; ``params=(top, left, flip)`` fixes the augmentation,
        else it comes from ``row`` (the sample index) and the current epoch."""
        tensor = image_to_tensor(image, self.image_size, row=row, source=self.source)
        if self.train:
            if params is None:
                if row is None and self.seed is not None:
                    raise self._missing_index_error()
                top, left, flip = (values[0].item() for values in self.sample_params([row if row is not None else 0]))
                params = (top, left, flip)
            tensor = pad_crop_flip(tensor, int(params[0]), int(params[1]), bool(params[2]), self.padding)
        return normalize_with_table(tensor, self.table)

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
        if self.train and rows is None and self.seed is not None:
            raise self._missing_index_error()
        params = None
        if self.train:  # one vectorised draw for the whole batch
            top, left, flip = self.sample_params(rows if rows is not None else range(len(images)))
            params = list(zip(top.tolist(), left.tolist(), flip.tolist()))
        pixel_values = [
            self.transform_image(
                image, row=(rows[k] if rows is not None else None), params=(params[k] if params is not None else None)
            )
            for k, image in enumerate(images)
        ]
        out = {"pixel_values": pixel_values, "labels": [int(label) for label in batch[self.label_column]]}
        if self.with_index:
            out["index"] = [int(i) for i in rows]
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(train={self.train}, image_size={self.image_size}, padding={self.padding}, "
            f"flip_prob={self.flip_prob}, mean={self.stats.mean}, std={self.stats.std}, with_index={self.with_index}, "
            f"seed={self.seed}, epoch={self.epoch})"
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
        seed: see :class:`ImageClassificationTransform` (``None``: torch's global RNG, not reproducible).
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
