"""Where a dataset came from, carried with it: its source, the known dataset it holds, its split and columns.

`load_image_dataset` records the source and, when it knows it, the known dataset's name in the dataset's own
`info.description` (which `datasets` carries through `select`, `shuffle`, `map` and `with_transform`), and
`InMemoryImageDataset` keeps them as attributes. Errors far downstream name the source, and the model card names
the dataset it was told, never one guessed back from class names.
"""

from __future__ import annotations

__all__ = ["IMAGE_COLUMN", "LABEL_COLUMN", "INDEX_COLUMN", "set_tag", "read_tag", "split_facts", "describe_source",
           "columns_description", "known_dataset_name"]

IMAGE_COLUMN, LABEL_COLUMN, INDEX_COLUMN = "image", "label", "index"
_SOURCE_TAG = "[rrd_hf source] "
_KNOWN_TAG = " [rrd_hf dataset] "


def set_tag(dataset, description: str, info) -> None:
    """Record where a dataset came from in ``dataset.info.description`` (it is carried through
    ``select``/``shuffle``/``map``/``with_transform``), so errors far downstream can name the source."""
    old = dataset.info.description or ""
    kept = [line for line in old.splitlines() if not line.startswith(_SOURCE_TAG)]
    tag = _SOURCE_TAG + description + (_KNOWN_TAG + info.name if info is not None else "")
    dataset.info.description = "\n".join(kept + [tag])


def read_tag(dataset) -> tuple[str | None, str | None]:
    info = getattr(dataset, "info", None)
    for line in ((info.description if info is not None else None) or "").splitlines():
        if line.startswith(_SOURCE_TAG):
            body = line[len(_SOURCE_TAG) :]
            if _KNOWN_TAG in body:
                body, known = body.split(_KNOWN_TAG, 1)
                return body, known.strip()
            return body, None
    return None, None


def split_facts(dataset) -> tuple[str | None, int | None]:
    """The split a dataset was loaded as and that split's full size, None where unknown: ``datasets`` keeps both
    through ``select`` (so a ``max_eval_samples`` subset still names them); rrd_hf's in-memory datasets record them."""
    split = getattr(dataset, "split", None)
    split = str(split) if split else None
    size = getattr(dataset, "split_size", None)
    if size is None and split is not None:
        splits = getattr(getattr(dataset, "info", None), "splits", None) or {}
        size = getattr(splits.get(split), "num_examples", None)
    return split, size or None


def describe_source(dataset) -> str:
    """A human-readable description of where ``dataset`` came from (used in error messages)."""
    described, _ = read_tag(dataset)
    if described:
        return described
    split = getattr(dataset, "split", None)
    files = getattr(dataset, "cache_files", None) or []
    if files:
        return f"{files[0]['filename']}" + (f" (split '{split}')" if split else "")
    return "an in-memory dataset" + (f" (split '{split}')" if split else "")


def columns_description(dataset) -> str:
    return ", ".join(f"{c} ({type(f).__name__})" for c, f in dataset.features.items())


def known_dataset_name(dataset) -> str | None:
    """The short name of the known dataset (`rrd_hf.data.KNOWN_DATASETS`) `dataset` was loaded as, if it was."""
    if dataset is None:
        return None
    name = getattr(dataset, "dataset_name", None)  # InMemoryImageDataset
    if name is not None:
        return name
    return read_tag(dataset)[1]
