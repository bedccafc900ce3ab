"""Decoded splits kept next to the `datasets` cache, so that a later run reads them instead of decoding again.

The in-memory path decodes every image once per run (`decode_to_uint8`, a Pillow decode per image), and without a
cache it pays that again in every run on the same data. `datasets` keeps what `map` computes in the dataset's cache
folder under the dataset's fingerprint; this module does the same for the decoded uint8 images: one safetensors file
(tensors only: loading it runs no code) per dataset, image size and decoding version, written once and read back by
later runs.

* **Key.** The dataset's `_fingerprint` (which `datasets` derives from the data files, with their modification times
  for local files, and from every select, rename or cast since), the image size, `DECODING_VERSION` (raised
  whenever decoding changes its output) and Pillow's version (the decoder). The file name carries a hash of the key and its metadata the key itself.
* **Where.** `auto` writes only inside the `datasets` cache folder (`HF_DATASETS_CACHE`): never into a folder the user
  saved (`save_to_disk`), nor for an in-memory dataset, nor when `datasets.disable_caching()` is in effect.
* **Trust.** A file is used only when its metadata holds the same key, its one tensor is uint8 `(N, 3, H, W)` with
  N the dataset's length (and H = W = the image size when one is given), and the SHA-256 of that tensor's bytes is the
  one written with it. The metadata alone says which data the file claims to hold, not that its pixels are intact:
  flipped bits (a failing disk) or a file whose metadata was copied onto other pixels would otherwise be trained on
  silently by every later run. Anything that fails (truncated, another version, another digest, put there by hand)
  is decoded again and rewritten, with a warning. The digest catches damage and mix-ups, not a forger who recomputes
  it: the cache folder must be no more writable than the dataset files themselves. Labels and sample ids always come
  from the dataset, never from the file.
* **Writing** goes to a temporary file in the same folder, renamed over the final name: a crash leaves no half file,
  and the file gets the mode the umask gives a new file (as `datasets` gives its own cache files), so that a cache
  shared by several users stays readable to them (safetensors alone creates it readable by its owner only),
  and several processes writing the same split leave one complete copy; the temporary file of a process that died
  while writing is removed by the next write. A folder that cannot be written (read-only,
  full) only costs the saving, with a log line. An explicit `cache_file` that holds anything but such a cache is
  refused before any decoding, never overwritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import torch

__all__ = ["DECODING_VERSION", "decoded_cache_path", "read_decoded", "write_decoded", "check_replaceable"]

logger = logging.getLogger(__name__)

#: Raised whenever `decode_to_uint8` would give other pixels for the same data (resize filter, colour conversion...).
DECODING_VERSION = 1
FORMAT = "rrd_hf.decoded_images"
PREFIX = "rrd_hf-decoded-"


DIGEST_KEY = "sha256"


def _digest(images: torch.Tensor) -> str:
    """SHA-256 of the tensor's bytes (C order), hex."""
    array = images.detach().cpu().contiguous().numpy()
    return hashlib.sha256(memoryview(array).cast("B")).hexdigest()


def _umask_mode() -> int:
    """The mode a new regular file gets here: 0o666 minus the process's umask (read from /proc where it can be, since
    reading it with os.umask means setting it for a moment, which other threads creating files would see)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _key(dataset, image_size: int | None) -> dict[str, str]:
    import PIL

    # Pillow's version too: another libjpeg/zlib or resampling code may decode the same bytes to other pixels.
    return {"format": FORMAT, "version": str(DECODING_VERSION), "fingerprint": str(dataset._fingerprint),
            "image_size": str(image_size), "decoder": f"Pillow {PIL.__version__}"}


def decoded_cache_path(dataset, image_size: int | None) -> Path | None:
    """The cache file of `dataset` decoded at `image_size` inside the `datasets` cache, or None where none is kept."""
    import datasets

    files = getattr(dataset, "cache_files", None) or []
    if not files or not getattr(dataset, "_fingerprint", None) or not datasets.is_caching_enabled():
        return None
    folder = Path(files[0]["filename"]).resolve().parent
    cache_root = Path(datasets.config.HF_DATASETS_CACHE).resolve()
    if not folder.is_relative_to(cache_root):  # e.g. a save_to_disk folder: the user's, not the cache's
        return None
    digest = hashlib.sha256(repr(sorted(_key(dataset, image_size).items())).encode()).hexdigest()[:24]
    return folder / f"{PREFIX}{digest}.safetensors"


def read_decoded(path: str | os.PathLike, dataset, image_size: int | None) -> torch.Tensor | None:
    """The uint8 `(N, 3, H, W)` images cached in `path` for `dataset`, or None (absent, stale, damaged, or not
    trustworthy: pixels that do not match the digest written with them)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            digest = metadata.pop(DIGEST_KEY, None)
            if metadata != _key(dataset, image_size):
                logger.warning("decoded-image cache %s is for other data or another rrd_hf: decoding again", path)
                return None
            if set(handle.keys()) != {"images"}:
                raise ValueError(f"unexpected tensors {sorted(handle.keys())}")
            images = handle.get_tensor("images")
    except Exception as error:  # whatever is wrong with the file, the data can be decoded again
        logger.warning("decoded-image cache %s cannot be read (%s): decoding again", path, error)
        return None
    size_ok = image_size is None or tuple(images.shape[-2:]) == (image_size, image_size)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3 or len(images) != len(dataset) \
            or not size_ok:
        logger.warning("decoded-image cache %s holds %s %s, not %d uint8 images of size %s: decoding again",
                       path, images.dtype, tuple(images.shape), len(dataset), image_size)
        return None
    if digest is None or _digest(images) != digest:
        logger.warning("decoded-image cache %s: its pixels do not match the digest written with them (damaged, or "
                       "another file's metadata): decoding again", path)
        return None
    return images


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse a `path` that holds something else than a decoded-image cache: it is the user's, not to be replaced."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists() or path.name.startswith(PREFIX):  # absent, or named by `decoded_cache_path`
        return
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("format") == FORMAT:
                return
    except Exception:
        pass
    raise FileExistsError(
        f"cache_file {path} exists and is not a decoded-image cache written by rrd_hf: it is left as it is. "
        "Pass another path (or \"auto\"), or remove the file if it is not needed."
    )


def _remove_orphans(path: Path) -> None:
    """Temporary files of this cache file left by processes that died while writing (killed, out of memory)."""
    for orphan in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(orphan.name[len(path.name) + 2:].split(".", 1)[0])
            os.kill(pid, 0)  # raises when no such process exists
        except ProcessLookupError:
            orphan.unlink(missing_ok=True)
        except (ValueError, PermissionError):  # not named by write_decoded, or another user's live process
            continue


def write_decoded(path: str | os.PathLike, images: torch.Tensor, dataset, image_size: int | None) -> bool:
    """Write the decoded images atomically; False (with a log line) when the folder cannot take them."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    check_replaceable(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        images = images.contiguous()
        metadata = {**_key(dataset, image_size), DIGEST_KEY: _digest(images)}
        save_file({"images": images}, temporary, metadata=metadata)
        os.chmod(temporary, _umask_mode())
        os.replace(temporary, path)
    except (OSError, SafetensorError) as error:
        logger.info("decoded images not cached in %s (%s): later runs decode again", path.parent, error)
        return False
    finally:
        if temporary.exists():
            temporary.unlink()
    return True
