"""Decoding one image to an RGB ``uint8`` array, with errors that name the row and the source.

Shared by the per-sample transforms, the in-memory fast path, :func:`verify_images` and
:func:`compute_mean_std`, so that all of them decode and resize the same way (Pillow, bilinear with
Pillow's antialiasing when shrinking, like torchvision's ``Resize`` on PIL images).
"""

from __future__ import annotations

import io
import os

import numpy as np
import PIL.Image

from .errors import CorruptImageError

__all__ = ["decode_image", "image_to_uint8_array", "describe_row"]


def describe_row(row, source) -> str:
    where = f"row {row}" if row is not None else "a row (unknown index: keep the 'index' column to get it)"
    return f"{where} of {source or 'the dataset (source unknown)'}"


def decode_image(value, *, row=None, source=None) -> PIL.Image.Image:
    """Decode one value of an ``Image`` column to an RGB PIL image.

    ``value`` may be a PIL image (an ``Image()`` column decoded by ``datasets``), a ``{"bytes", "path"}`` dict
    (an ``Image(decode=False)`` column), raw encoded bytes, a path, or an ``(H, W[, C])`` uint8 array.
    Grayscale, palette, RGBA and CMYK images are converted to RGB. A value that cannot be decoded raises
    :class:`CorruptImageError` naming ``row`` and ``source``.
    """
    path = None
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        elif isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is not None:
                image = PIL.Image.open(io.BytesIO(data))
            elif path is not None:
                image = PIL.Image.open(path)
            else:
                raise ValueError("the image value has neither bytes nor a path (a null image)")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            image = PIL.Image.open(io.BytesIO(bytes(value)))
        elif isinstance(value, (str, os.PathLike)):
            path = os.fspath(value)
            image = PIL.Image.open(path)
        elif isinstance(value, np.ndarray):
            image = PIL.Image.fromarray(value)
        elif value is None:
            raise ValueError("the image is null (None)")
        else:
            raise TypeError(f"unsupported image value of type {type(value).__name__}")
        image.load()  # force the full decode here, where the error can be reported with its row
        if image.mode != "RGB":
            image = image.convert("RGB")
        return image
    except CorruptImageError:
        raise
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
        file_hint = f" (file {path})" if path else ""
        raise CorruptImageError(
            f"could not decode the image in {describe_row(row, source)}{file_hint}: {type(exc).__name__}: {exc}. "
            "The stored bytes are not a readable image; re-export or replace that image, or drop the row, e.g. "
            f"dataset.filter(lambda ex: ex['index'] != {row if row is not None else 'ROW'})."
        ) from exc


def image_to_uint8_array(image: PIL.Image.Image, image_size: int | None = None) -> np.ndarray:
    """An RGB PIL image as a writable ``(H, W, 3)`` uint8 array, resized to ``image_size``² when it differs."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), PIL.Image.Resampling.BILINEAR)
    return np.array(image, dtype=np.uint8)
