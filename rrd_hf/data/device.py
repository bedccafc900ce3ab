"""The in-memory fast path: decode once to a ``uint8`` tensor, augment whole batches on the device.

1. :func:`decode_to_uint8` decodes (and resizes) every image once into a ``(N, 3, S, S)`` uint8 tensor
   (CIFAR-10 train: 150 MB; Tiny ImageNet train at 32×32: 300 MB), with ``labels`` and ``index``.
2. :class:`InMemoryImageDataset` serves it: items ``{"pixel_values": uint8 (3, S, S), "labels", "index"}``;
   ``__getitems__`` gathers a whole batch with one indexing op. The images may live on the accelerator
   (``device=``); then use ``dataloader_num_workers=0`` and ``dataloader_pin_memory=False`` (pinning fails on
   device tensors). As with any extra key, ``remove_unused_columns=False`` keeps ``index``.
3. :class:`DeviceAugmentation` is called on the device right after the batch is moved there
   (``batch_transform(pixel_values, training, index=batch["index"], epoch=epoch)``): batched zero-pad crop +
   horizontal flip by one ``gather`` with per-sample offsets (no Python loop over images), then normalisation by
   table lookup. With ``training=False`` it only normalises. With the same seed, epoch and sample index the result
   is bitwise the per-sample transform's (:mod:`rrd_hf.data.transforms`).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError, MissingColumnError
from .images import decode_image, image_to_uint8_array
from .augmentation import augmentation_params
from .registry import StatsLike, resolve_stats
from .transforms import normalization_table, normalize_with_table

__all__ = ["decode_to_uint8", "labels_and_index", "InMemoryImageDataset", "DeviceAugmentation", "load_in_memory"]

logger = logging.getLogger(__name__)


class _DecodeChunks(torch.utils.data.Dataset):
    """Chunks of rows decoded to uint8 arrays; run through a DataLoader so that workers can decode in parallel."""

    def __init__(self, raw, chunk_size, image_size, source, image_column, label_column, index_column):
        self.raw, self.chunk_size, self.image_size, self.source = raw, chunk_size, image_size, source
        self.image_column, self.label_column, self.index_column = image_column, label_column, index_column

    def __len__(self):
        return (len(self.raw) + self.chunk_size - 1) // self.chunk_size

    def __getitem__(self, k):
        start = k * self.chunk_size
        batch = self.raw[start : start + self.chunk_size]
        count = len(batch[self.image_column])
        rows = batch[self.index_column] if self.index_column in batch else list(range(start, start + count))
        arrays = [
            image_to_uint8_array(decode_image(value, row=row, source=self.source), self.image_size)
            for value, row in zip(batch[self.image_column], rows)
        ]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise DataError(
                f"images of {self.source} have different sizes ({sorted(shapes)[:3]}...) around row {rows[0]}; pass "
                "image_size= to resize them all to one size."
            )
        images = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, 0, 0, 3, dtype=torch.uint8)
        labels = torch.as_tensor(batch[self.label_column], dtype=torch.int64)
        return start, images, labels, torch.as_tensor(rows, dtype=torch.int64)


def labels_and_index(dataset, label_column: str = "label", index_column: str = "index"):
    """int64 ``(N,)`` labels and sample ids (the ``index`` column, else ``0..N-1``) of a dataset, without decoding."""
    columns = [label_column] + ([index_column] if index_column in dataset.column_names else [])
    table = dataset.select_columns(columns).with_format("numpy")[:]
    labels = torch.as_tensor(table[label_column], dtype=torch.int64)
    index = torch.as_tensor(table[index_column], dtype=torch.int64) if index_column in table else \
        torch.arange(len(labels), dtype=torch.int64)
    return labels, index


def decode_to_uint8(
    dataset,
    image_size: int | None = 32,
    *,
    image_column: str = "image",
    label_column: str = "label",
    index_column: str = "index",
    num_workers: int = 0,
    chunk_size: int = 1000,
    source: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode every image of a (normalised) ``datasets.Dataset`` once.

    Returns ``(images, labels, index)``: uint8 ``(N, 3, S, S)`` (RGB, resized to ``image_size``² with the same
    Pillow bilinear filter as the per-sample transform; ``None`` keeps the native size, which must then be the
    same for all images), int64 ``(N,)`` labels and int64 ``(N,)`` sample ids (the ``index`` column, else
    ``0..N-1``). Decoding is Python-bound in Pillow (one call per image), so
    ``num_workers > 0`` decodes chunks of ``chunk_size`` rows in that many worker processes. A corrupt image
    raises :class:`CorruptImageError` with its index and the source.
    """
    import datasets

    from .provenance import describe_source

    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise MissingColumnError(
                f"column {column!r} not found in {describe_source(dataset)}; columns present: {dataset.column_names}. "
                "Load the data with rrd_hf.data.load_image_dataset or pass image_column=/label_column=."
            )
    source = source or describe_source(dataset)
    columns = [image_column, label_column] + ([index_column] if index_column in dataset.column_names else [])
    raw = dataset.select_columns(columns).cast_column(image_column, datasets.Image(decode=False)).with_format(None)
    n = len(raw)
    chunks = _DecodeChunks(raw, chunk_size, image_size, source, image_column, label_column, index_column)
    # Starting a worker process costs time: no more workers than chunks, and none for a single chunk.
    workers = min(num_workers, len(chunks)) if len(chunks) > 1 else 0
    loader = torch.utils.data.DataLoader(chunks, batch_size=None, shuffle=False, num_workers=workers)
    images = None
    labels = torch.empty(n, dtype=torch.int64)
    index = torch.empty(n, dtype=torch.int64)
    for start, chunk_images, chunk_labels, chunk_rows in loader:
        count = len(chunk_labels)
        if images is None:
            images = torch.empty((n, *chunk_images.shape[1:]), dtype=torch.uint8)
        if chunk_images.shape[1:] != images.shape[1:]:
            raise DataError(
                f"image at row {int(chunk_rows[0])} of {source} is {chunk_images.shape[2]}x{chunk_images.shape[1]} but "
                f"the first one was {images.shape[2]}x{images.shape[1]}; pass image_size= to resize them all to one size."
            )
        images[start : start + count] = chunk_images
        labels[start : start + count] = chunk_labels
        index[start : start + count] = chunk_rows
    if images is None:
        size = image_size or 0
        images = torch.empty((0, size, size, 3), dtype=torch.uint8)
    return images.permute(0, 3, 1, 2).contiguous(), labels, index


class InMemoryImageDataset(torch.utils.data.Dataset):
    """Decoded images kept in memory (on the CPU or an accelerator) as one uint8 ``(N, 3, H, W)`` tensor.

    Items are ``{"pixel_values": uint8 (3, H, W), "labels", "index"}``; feed the batches through
    :class:`DeviceAugmentation` with ``index=batch["index"]``. ``labels`` and ``index`` (the attributes) always stay
    on the CPU for whoever inspects the data. Serving:

    * images on the CPU: ``labels``/``index`` of items are Python ints; the ``DataLoader`` may use workers and
      pinned memory (``dataloader_pin_memory=True``, the Trainer's default), so the copy to the device is async;
    * images on an accelerator (``.to(device)``): items hold device tensors (labels and index too, so that
      nothing is copied or synchronised per batch); use ``dataloader_num_workers=0`` and
      ``dataloader_pin_memory=False`` (device tensors cannot be pinned nor shared with worker processes).

    ``__getitems__`` gathers a whole batch with one indexing op. ``stats`` records the mean/std its batches are
    to be normalised with (``DeviceAugmentation(dataset.stats, ...)``); :func:`dataset_stats` reads it. Build it
    with :meth:`from_dataset` or :func:`load_in_memory`, which also record ``split`` and ``split_size`` (what a
    model card says was evaluated).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        index: torch.Tensor | Sequence[int] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        stats: StatsLike | None = None,
        split: str | None = None,
        split_size: int | None = None,
        dataset_name: str | None = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DataError(f"images must be a uint8 (N, 3, H, W) tensor, got {images.dtype} {tuple(images.shape)}.")
        labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
        index = torch.arange(len(images)) if index is None else torch.as_tensor(index, dtype=torch.int64).cpu()
        if not len(images) == len(labels) == len(index):
            raise DataError(f"got {len(images)} images, {len(labels)} labels and {len(index)} indices.")
        self.images, self.labels, self.index = images, labels, index
        self.class_names = list(class_names) if class_names is not None else None
        self.stats = resolve_stats(stats) if stats is not None else None
        # The split these images came from and that split's full size, for the model card (None when unknown).
        self.split, self.split_size = (str(split) if split else None), split_size
        self.dataset_name = dataset_name  # the known dataset these images are (rrd_hf.data.provenance), if known
        self._served_labels, self._served_index = self._serving_copies()

    def _serving_copies(self):
        if self.images.device.type == "cpu":
            return None, None
        return self.labels.to(self.images.device), self.index.to(self.images.device)

    @classmethod
    def from_dataset(
        cls,
        dataset,
        image_size: int | None = 32,
        *,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        cache_file: str | os.PathLike | None = None,
        stats: StatsLike | None = None,
    ) -> "InMemoryImageDataset":
        """Decode a normalised ``datasets.Dataset`` (from :func:`load_image_dataset`) once.

        ``cache_file``: keep the decoded images for later runs (:mod:`rrd_hf.data.decoded_cache`): ``"auto"`` in the
        dataset's folder of the ``datasets`` cache (nothing where it has none), or a ``.safetensors`` path. The file
        is read back only for the same data (dataset fingerprint), ``image_size`` and decoding, and only when its
        pixels match the digest written with them, else rewritten; labels and sample ids always come from
        ``dataset``. ``stats``: default, those of the known dataset it holds (if any).
        """
        import datasets

        from .decoded_cache import check_replaceable, decoded_cache_path, read_decoded, write_decoded
        from .loading import infer_dataset_info
        from .provenance import known_dataset_name, split_facts

        if stats is None:
            info = infer_dataset_info(dataset=dataset)
            stats = info.stats if info is not None else None

        feature = dataset.features.get("label")
        class_names = feature.names if isinstance(feature, datasets.ClassLabel) else None
        if cache_file == "auto":
            cache_file = decoded_cache_path(dataset, image_size)
        if len(dataset) == 0:
            cache_file = None
        if cache_file is not None:
            check_replaceable(cache_file)  # before decoding: a file of the user's is never overwritten
        images = read_decoded(cache_file, dataset, image_size) if cache_file is not None else None
        if images is not None:
            labels, index = labels_and_index(dataset)
            logger.info("%d decoded images read from %s", len(images), cache_file)
        else:
            images, labels, index = decode_to_uint8(dataset, image_size, num_workers=num_workers)
            if cache_file is not None and write_decoded(cache_file, images, dataset, image_size):
                logger.info("%d decoded images (%.1f MB) kept in %s for later runs", len(images),
                            images.numel() / 1e6, cache_file)
        split, split_size = split_facts(dataset)
        out = cls(images, labels, index, class_names=class_names, stats=stats, split=split, split_size=split_size,
                  dataset_name=known_dataset_name(dataset))
        return out.to(device) if device is not None else out

    def to(self, device) -> "InMemoryImageDataset":
        """Move the images to ``device`` (in place; returns ``self``)."""
        self.images = self.images.to(device)
        self._served_labels, self._served_index = self._serving_copies()
        return self

    @property
    def device(self) -> torch.device:
        """Where the images are (and batches are served from)."""
        return self.images.device

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names is not None else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        if self._served_labels is not None:
            return {"pixel_values": self.images[i], "labels": self._served_labels[i], "index": self._served_index[i]}
        return {"pixel_values": self.images[i], "labels": int(self.labels[i]), "index": int(self.index[i])}

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """A whole batch with one gather (``DataLoader`` uses this instead of ``__getitem__`` when present)."""
        positions = torch.as_tensor(indices, dtype=torch.int64)
        if self._served_labels is None:
            images = self.images[positions]
            labels, index = self.labels[positions].tolist(), self.index[positions].tolist()
        else:  # the sampler's positions travel asynchronously; nothing comes back to the host
            if self.images.device.type == "cuda":
                positions = positions.pin_memory()
            positions = positions.to(self.images.device, non_blocking=True)
            images = self.images[positions]
            labels, index = self._served_labels[positions], self._served_index[positions]
        return [{"pixel_values": img, "labels": lab, "index": idx} for img, lab, idx in zip(images, labels, index)]


def load_in_memory(
    source,
    split: str,
    image_size: int | None = 32,
    *,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    cache_file: str | os.PathLike | None = None,
    stats: StatsLike | None = None,
    **load_kwargs,
) -> InMemoryImageDataset:
    """``load_image_dataset(source, split, **load_kwargs)`` decoded into an :class:`InMemoryImageDataset`."""
    from .loading import load_image_dataset

    dataset = load_image_dataset(source, split, **load_kwargs)
    return InMemoryImageDataset.from_dataset(
        dataset, image_size, device=device, num_workers=num_workers, cache_file=cache_file, stats=stats
    )


class DeviceAugmentation(nn.Module):
    """Batched train/eval augmentation on whatever device the batch is on, with no host-device synchronisation.

    ``aug(pixel_values, training, index=index, epoch=epoch)`` takes uint8 ``(B, 3, H, W)`` (or ``(B, 1, H, W)``,
    expanded to RGB) or a float batch in ``[0, 1]`` and returns float (``dtype``, default float32) ``(B, 3, H, W)``:

    * ``training=True``: zero-pad by ``padding``, crop ``H×W`` at an offset per sample in ``[0, 2·padding]``²
      (like torchvision's RandomCrop), flip left-right with probability ``flip_prob``, normalise;
    * ``training=False``: normalise only (deterministic). ``training=None`` uses ``self.training``.

    With a ``seed`` the offsets and flips are :func:`augmentation_params` of ``(seed, epoch, index)``, computed
    on the batch's device from the sample ids ``index`` (``InMemoryImageDataset`` batches carry them): the same
    crops as the per-sample :class:`ImageClassificationTransform` (bitwise the same float32 images), whatever the
    device, the process count or a resume. With ``seed=None`` they are drawn from torch's global RNG on the batch's
    device: random, but not reproducible across resumes or process counts.

    uint8 pixels are normalised by lookup in :func:`normalization_table` (a buffer, like ``mean``/``std``): move the
    module to the device once with ``.to(device)``; a first call on another device moves it there (once).
    """

    def __init__(
        self,
        stats: StatsLike,
        *,
        padding: int = 4,
        flip_prob: float = 0.5,
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        resolved = resolve_stats(stats)
        self.stats = resolved
        self.padding = int(padding)
        self.flip_prob = float(flip_prob)
        if self.padding < 0 or not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"need padding >= 0 and 0 <= flip_prob <= 1, got padding={padding}, flip_prob={flip_prob}.")
        self.seed = None if seed is None else int(seed)
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor(resolved.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(resolved.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("table", normalization_table(resolved), persistent=False)

    def manual_seed(self, seed: int | None) -> "DeviceAugmentation":
        """Use ``seed`` from now on (``None``: torch's global RNG)."""
        self.seed = None if seed is None else int(seed)
        return self

    def sample_params(
        self, index: torch.Tensor | Sequence[int], epoch: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(top, left, flip)`` for the samples ``index`` at ``epoch``: int64, int64, bool ``(B,)`` on ``index``'s
        device. With ``seed=None``: drawn from torch's global RNG on that device (``index`` only gives the count)."""
        index = torch.as_tensor(index)
        if self.seed is None:
            offsets = torch.randint(0, 2 * self.padding + 1, (2, len(index)), device=index.device)
            return offsets[0], offsets[1], torch.rand(len(index), device=index.device) < self.flip_prob
        return augmentation_params(self.seed, epoch, index, self.padding, self.flip_prob)

    def crop_flip(self, x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Zero-pad, crop each sample at ``(top[b], left[b])`` of the padded image and mirror where ``flip[b]``:
        a single ``gather`` over the flattened padded images, any dtype, any device."""
        batch, channels, height, width = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p)) if p else x
        padded_width = width + 2 * p
        device = x.device
        top, left, flip = top.to(device), left.to(device), flip.to(device)
        rows = top[:, None] + torch.arange(height, device=device)  # (B, H)
        columns = torch.arange(width, device=device).expand(batch, width)
        columns = torch.where(flip[:, None], (width - 1) - columns, columns) + left[:, None]  # (B, W)
        flat = (rows[:, :, None] * padded_width + columns[:, None, :]).reshape(batch, 1, height * width)
        out = padded.reshape(batch, channels, -1).gather(2, flat.expand(batch, channels, height * width))
        return out.view(batch, channels, height, width)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 by table lookup (bitwise the per-sample transform's values); float in ``[0, 1]`` arithmetically."""
        if not x.is_floating_point():
            out = normalize_with_table(x, self.table)
        else:
            out = (x.to(torch.float32) - self.mean) / self.std
        return out if self.dtype == torch.float32 else out.to(self.dtype)

    def forward(
        self,
        pixel_values: torch.Tensor,
        training: bool | None = None,
        *,
        index: torch.Tensor | None = None,
        epoch: int = 0,
        params: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Augment (``training``) or only normalise a batch. ``index``: the samples' ids (required with a seed when
        training; keep it on the batch's device); ``epoch``: 0-based; ``params=(top, left, flip)`` fixes the crops."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] not in (1, 3):
            raise DataError(
                f"DeviceAugmentation needs a (B, 3, H, W) or (B, 1, H, W) batch, got shape {tuple(pixel_values.shape)}."
            )
        x = pixel_values
        if self.table.device != x.device:  # once: later calls find the buffers on the batch's device
            self.to(x.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        training = self.training if training is None else training
        if training and (self.padding > 0 or self.flip_prob > 0 or params is not None):
            if params is None:
                if index is None and self.seed is not None:
                    raise DataError(
                        "DeviceAugmentation with a seed takes each image's crop and flip from (seed, epoch, sample "
                        "index), but no index= was given. Pass index=batch['index'] (InMemoryImageDataset batches carry "
                        "it; per-sample datasets need prepare_dataset(..., with_index=True)), or build it with "
                        "seed=None for unseeded (non-reproducible) augmentation."
                    )
                ids = index if index is not None else torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
                if len(ids) != x.shape[0]:
                    raise DataError(f"index has {len(ids)} sample ids for a batch of {x.shape[0]} images.")
                params = self.sample_params(torch.as_tensor(ids).to(x.device, non_blocking=True), epoch)
            top, left, flip = params
            x = self.crop_flip(x, top, left, flip)
        return self.normalize(x)

    def extra_repr(self) -> str:
        return (
            f"padding={self.padding}, flip_prob={self.flip_prob}, seed={self.seed}, mean={self.stats.mean}, "
            f"std={self.stats.std}"
        )
