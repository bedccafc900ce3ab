"""The accelerator fast path: decode once to a ``uint8`` tensor, augment batched on the device.

1. :func:`decode_to_uint8` decodes (and resizes) every image once into a ``(N, 3, S, S)`` uint8 tensor
   (CIFAR-10 train: 150 MB; Tiny ImageNet train at 32×32: 300 MB), with ``labels`` and ``index``.
2. :class:`InMemoryImageDataset` serves it: items ``{"pixel_values": uint8 (3, S, S), "labels": int,
   "index": int}``; ``__getitems__`` gathers a whole batch with one indexing op. The images may live on the
   accelerator (``device=``); then use ``dataloader_num_workers=0`` and ``dataloader_pin_memory=False``
   (pinning fails on device tensors). As with any extra key, ``remove_unused_columns=False`` keeps ``index``.
3. :class:`DeviceAugmentation` is called on the device right after the batch is moved there
   (``batch_transform(pixel_values, training)``): batched zero-pad random crop + horizontal flip by one
   ``gather`` with per-sample offsets (no Python loop over images), then normalisation, on whatever device
   the batch is on. With ``training=False`` it only normalises. The result for given offsets is exactly the
   per-sample :func:`pad_crop_flip` + :func:`normalize_uint8` of :mod:`rrd_hf.data.transforms`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError, MissingColumnError
from .images import decode_image, image_to_uint8_array
from .registry import StatsLike, resolve_stats

__all__ = ["decode_to_uint8", "InMemoryImageDataset", "DeviceAugmentation", "load_in_memory"]


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
    ``0..N-1``). Decoding is Python-bound in Pillow (~0.2 ms per 32×32 JPEG on a slow core), so
    ``num_workers > 0`` decodes chunks of ``chunk_size`` rows in that many worker processes. A corrupt image
    raises :class:`CorruptImageError` with its index and the source.
    """
    import datasets

    from .loading import describe_source

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
    loader = torch.utils.data.DataLoader(chunks, batch_size=None, shuffle=False, num_workers=num_workers)
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
    """Decoded images kept in memory (optionally on an accelerator) as one uint8 ``(N, 3, H, W)`` tensor.

    Items are ``{"pixel_values": uint8 (3, H, W), "labels": int, "index": int}``; feed the batches through
    :class:`DeviceAugmentation`. ``labels`` and ``index`` stay on the CPU (they are small, and turning a device
    scalar into a Python ``int`` would synchronise). Build it with :meth:`from_dataset` or :func:`load_in_memory`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        index: torch.Tensor | Sequence[int] | None = None,
        *,
        class_names: Sequence[str] | None = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DataError(f"images must be a uint8 (N, 3, H, W) tensor, got {images.dtype} {tuple(images.shape)}.")
        labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
        index = torch.arange(len(images)) if index is None else torch.as_tensor(index, dtype=torch.int64).cpu()
        if not len(images) == len(labels) == len(index):
            raise DataError(f"got {len(images)} images, {len(labels)} labels and {len(index)} indices.")
        self.images, self.labels, self.index = images, labels, index
        self.class_names = list(class_names) if class_names is not None else None

    @classmethod
    def from_dataset(
        cls,
        dataset,
        image_size: int | None = 32,
        *,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        cache_file: str | os.PathLike | None = None,
    ) -> "InMemoryImageDataset":
        """Decode a normalised ``datasets.Dataset`` (from :func:`load_image_dataset`) once.

        ``cache_file``: a ``.pt`` file to reuse the decoded tensor across runs; it is rebuilt when the dataset
        fingerprint or ``image_size`` changes.
        """
        import datasets

        fingerprint = getattr(dataset, "_fingerprint", None)
        feature = dataset.features.get("label")
        class_names = feature.names if isinstance(feature, datasets.ClassLabel) else None
        cached = None
        if cache_file is not None and Path(cache_file).is_file():
            cached = torch.load(cache_file, map_location="cpu", weights_only=True)
            if cached.get("fingerprint") != fingerprint or cached.get("image_size") != image_size:
                cached = None
        if cached is not None:
            images, labels, index = cached["images"], cached["labels"], cached["index"]
        else:
            images, labels, index = decode_to_uint8(dataset, image_size, num_workers=num_workers)
            if cache_file is not None:
                Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {"images": images, "labels": labels, "index": index, "fingerprint": fingerprint,
                     "image_size": image_size},
                    cache_file,
                )
        out = cls(images, labels, index, class_names=class_names)
        return out.to(device) if device is not None else out

    def to(self, device) -> "InMemoryImageDataset":
        """Move the images to ``device`` (in place; returns ``self``)."""
        self.images = self.images.to(device)
        return self

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names is not None else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i], "labels": int(self.labels[i]), "index": int(self.index[i])}

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """A whole batch with one gather (``DataLoader`` uses this instead of ``__getitem__`` when present)."""
        positions = torch.as_tensor(indices, dtype=torch.int64)
        images = self.images[positions.to(self.images.device)]
        labels = self.labels[positions].tolist()
        index = self.index[positions].tolist()
        return [{"pixel_values": img, "labels": lab, "index": idx} for img, lab, idx in zip(images, labels, index)]


def load_in_memory(
    source,
    split: str,
    image_size: int | None = 32,
    *,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    cache_file: str | os.PathLike | None = None,
    **load_kwargs,
) -> InMemoryImageDataset:
    """``load_image_dataset(source, split, **load_kwargs)`` decoded into an :class:`InMemoryImageDataset`."""
    from .loading import load_image_dataset

    dataset = load_image_dataset(source, split, **load_kwargs)
    return InMemoryImageDataset.from_dataset(
        dataset, image_size, device=device, num_workers=num_workers, cache_file=cache_file
    )


class DeviceAugmentation(nn.Module):
    """Batched train/eval augmentation on whatever device the batch is on.

    ``aug(pixel_values, training)`` takes uint8 ``(B, 3, H, W)`` (or ``(B, 1, H, W)``, expanded to RGB) or a float
    batch in ``[0, 1]`` and returns float (``dtype``, default float32) ``(B, 3, H, W)``:

    * ``training=True``: zero-pad by ``padding``, crop ``H×W`` at a random offset per sample (uniform in
      ``[0, 2·padding]``² like torchvision's RandomCrop), flip each sample left-right with probability
      ``flip_prob``, normalise;
    * ``training=False``: normalise only (deterministic).

    Randomness comes from ``generator`` (any device) or a CPU ``torch.Generator`` seeded with ``seed``;
    with neither, from torch's global CPU RNG (seeded by ``transformers.set_seed``). Offsets are drawn on the
    generator's device and moved to the batch's device, so a seeded run gives the same crops on CPU and GPU.
    Under DDP give each rank its own seed (e.g. ``seed + rank``). ``training=None`` uses ``self.training``.
    """

    def __init__(
        self,
        stats: StatsLike,
        *,
        padding: int = 4,
        flip_prob: float = 0.5,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        resolved = resolve_stats(stats)
        self.stats = resolved
        self.padding = int(padding)
        self.flip_prob = float(flip_prob)
        if self.padding < 0 or not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"need padding >= 0 and 0 <= flip_prob <= 1, got padding={padding}, flip_prob={flip_prob}.")
        if generator is not None and seed is not None:
            raise ValueError("pass seed= or generator=, not both.")
        self.generator = generator if generator is not None else (
            torch.Generator().manual_seed(int(seed)) if seed is not None else None
        )
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor(resolved.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(resolved.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def manual_seed(self, seed: int) -> "DeviceAugmentation":
        """Restart the random stream from ``seed`` (on a CPU generator)."""
        self.generator = torch.Generator().manual_seed(int(seed))
        return self

    def sample_params(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(top, left, flip)`` for a batch: int64 ``(B,)``, int64 ``(B,)``, bool ``(B,)`` on the generator's device."""
        device = self.generator.device if self.generator is not None else torch.device("cpu")
        offsets = torch.randint(0, 2 * self.padding + 1, (2, batch_size), generator=self.generator, device=device)
        flip = torch.rand(batch_size, generator=self.generator, device=device) < self.flip_prob
        return offsets[0], offsets[1], flip

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
        mean = self.mean.to(x.device)
        std = self.std.to(x.device)
        out = x.to(torch.float32)
        if not x.is_floating_point():
            out = out.div_(255.0)
        elif out is x:
            out = out.clone()
        out = out.sub_(mean).div_(std)
        return out if self.dtype == torch.float32 else out.to(self.dtype)

    def forward(
        self,
        pixel_values: torch.Tensor,
        training: bool | None = None,
        *,
        params: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Augment (``training``) or only normalise a batch; ``params=(top, left, flip)`` fixes the offsets."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] not in (1, 3):
            raise DataError(
                f"DeviceAugmentation needs a (B, 3, H, W) or (B, 1, H, W) batch, got shape {tuple(pixel_values.shape)}."
            )
        x = pixel_values
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        training = self.training if training is None else training
        if training and (self.padding > 0 or self.flip_prob > 0 or params is not None):
            top, left, flip = params if params is not None else self.sample_params(x.shape[0])
            x = self.crop_flip(x, top, left, flip)
        return self.normalize(x)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip_prob={self.flip_prob}, mean={self.stats.mean}, std={self.stats.std}"
