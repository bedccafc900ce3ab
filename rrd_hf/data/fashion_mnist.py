"""Fashion-MNIST offline, from the Debian package ``dataset-fashion-mnist`` (the embedded demo dataset).

``apt-get install dataset-fashion-mnist`` puts the four original IDX files of Zalando's repository in
``/usr/share/datasets/fashion-mnist/`` (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; MIT/Expat licence). :func:`load_fashion_mnist`
reads them into a ``datasets.DatasetDict`` in the schema of the Hub repo ``zalando-datasets/fashion_mnist``:
``image`` (``Image``, 28×28 grayscale PNG) and ``label`` (``ClassLabel`` with the ten class names),
splits ``train`` (60,000) and ``test`` (10,000).

Other locations can be given with ``root=`` or the ``RRD_HF_FASHION_MNIST_DIR`` environment variable;
uncompressed IDX files (without ``.gz``) work too.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import numpy as np

from .errors import DataSourceNotFoundError
from .registry import FASHION_MNIST_CLASS_NAMES

__all__ = [
    "FASHION_MNIST_DEBIAN_DIR",
    "find_fashion_mnist_files",
    "fashion_mnist_available",
    "read_idx",
    "load_fashion_mnist",
]

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (``.gz`` or not) as a numpy array of its declared dtype and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataSourceNotFoundError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    array = np.frombuffer(data, dtype=np.dtype(_IDX_DTYPES[data[2]]), offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataSourceNotFoundError(f"{path} is truncated: header says {dims}, found {array.size} values.")
    return array.reshape(dims)


def _candidate_dirs(root) -> list[Path]:
    if root is not None:
        return [Path(root)]
    dirs = []
    if os.environ.get("RRD_HF_FASHION_MNIST_DIR"):
        dirs.append(Path(os.environ["RRD_HF_FASHION_MNIST_DIR"]))
    dirs.append(FASHION_MNIST_DEBIAN_DIR)
    return dirs


def find_fashion_mnist_files(root=None) -> dict[str, tuple[Path, Path]]:
    """``{"train": (images, labels), "test": (images, labels)}`` paths of the IDX files.

    Looks in ``root`` if given, else in ``$RRD_HF_FASHION_MNIST_DIR`` and then in the Debian package folder.
    Raises :class:`DataSourceNotFoundError` saying how to get the files when they are absent.
    """
    searched = []
    for folder in _candidate_dirs(root):
        found = {}
        for split, stems in _FILES.items():
            paths = []
            for stem in stems:
                for name in (stem + ".gz", stem):
                    if (folder / name).is_file():
                        paths.append(folder / name)
                        break
            if len(paths) == 2:
                found[split] = tuple(paths)
        if len(found) == 2:
            return found
        searched.append(str(folder))
    raise DataSourceNotFoundError(
        f"Fashion-MNIST IDX files not found in {searched}. Install them with `apt-get install dataset-fashion-mnist` "
        f"(they go to {FASHION_MNIST_DEBIAN_DIR}), or pass root= / set RRD_HF_FASHION_MNIST_DIR to a folder holding "
        "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and "
        "t10k-labels-idx1-ubyte(.gz), or load the Hub copy 'zalando-datasets/fashion_mnist' when online."
    )


def fashion_mnist_available(root=None) -> bool:
    try:
        find_fashion_mnist_files(root)
    except DataSourceNotFoundError:
        return False
    return True


def _generate(images_path: str, labels_path: str, stamp: str):  # stamp only feeds the cache fingerprint
    import PIL.Image

    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if len(images) != len(labels):
        raise DataSourceNotFoundError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels.")
    for array, label in zip(images, labels):
        buffer = io.BytesIO()
        # a 2-D uint8 array becomes a mode "L" image
        PIL.Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
        yield {"image": {"bytes": buffer.getvalue(), "path": None}, "label": int(label)}


def load_fashion_mnist(root=None, *, split: str | None = None, cache_dir: str | None = None):
    """Fashion-MNIST from the local IDX files as ``datasets`` objects in the Hub schema.

    Returns a ``DatasetDict`` (``train``/``test``) when ``split`` is None, else that split's ``Dataset``.
    Columns: ``image`` (``Image()``, 28×28 mode ``L``) and ``label`` (``ClassLabel`` with
    :data:`FASHION_MNIST_CLASS_NAMES`). The first call encodes the images to PNG; the result is cached by
    ``datasets`` (under ``cache_dir`` or the HF datasets cache), so later calls are instant. Use
    ``load_image_dataset("fashion_mnist", split)`` for the normalised RGB view with ``index``.
    """
    import datasets

    from .errors import UnknownSplitError

    files = find_fashion_mnist_files(root)
    if split is not None and split not in files:
        raise UnknownSplitError(f"Fashion-MNIST has no split {split!r}; available splits: {sorted(files)}.")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASS_NAMES))}
    )
    out = {}
    for name in [split] if split is not None else list(files):
        images_path, labels_path = files[name]
        stamp = ";".join(f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (images_path, labels_path))
        out[name] = datasets.Dataset.from_generator(
            _generate,
            features=features,
            cache_dir=cache_dir,
            gen_kwargs={"images_path": str(images_path), "labels_path": str(labels_path), "stamp": stamp},
            split=datasets.NamedSplit(name),
        )
    return out[split] if split is not None else datasets.DatasetDict(out)
