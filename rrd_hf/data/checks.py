"""Checks of a loaded dataset before training on it: labels in range, every image decodable."""

from __future__ import annotations

import numpy as np

from .errors import DataError, LabelOutOfRangeError, MissingColumnError
from .images import decode_image
from .provenance import IMAGE_COLUMN, INDEX_COLUMN, LABEL_COLUMN, columns_description, describe_source

__all__ = ["check_labels", "verify_images"]


def _label_array(dataset, label_column):
    import datasets

    if isinstance(dataset, datasets.Dataset):
        if label_column not in dataset.column_names:
            raise MissingColumnError(
                f"label column {label_column!r} not found in {describe_source(dataset)}; columns present: "
                f"{columns_description(dataset)}. Pass label_column=."
            )
        feature = dataset.features[label_column]
        values = dataset.with_format("numpy", columns=[label_column])[:][label_column]
        indices = None
        if INDEX_COLUMN in dataset.column_names:
            indices = dataset.with_format("numpy", columns=[INDEX_COLUMN])[:][INDEX_COLUMN]
        return np.asarray(values), indices, feature, describe_source(dataset)
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise DataError(
            f"check_labels needs a datasets.Dataset/DatasetDict or an object with a 'labels' tensor, got "
            f"{type(dataset).__name__}."
        )
    index = getattr(dataset, "index", None)
    to_numpy = lambda t: t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)  # noqa: E731
    return to_numpy(labels), (to_numpy(index) if index is not None else None), None, type(dataset).__name__


def check_labels(dataset, num_labels: int, *, label_column: str = LABEL_COLUMN) -> None:
    """Raise :class:`LabelOutOfRangeError` unless every label is an integer in ``[0, num_labels)``.

    Works on a ``Dataset``, a ``DatasetDict`` (every split) or an :class:`InMemoryImageDataset`. The message
    names the first offending value, its row (and ``index``), how many rows are affected, and what to do.
    """
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        for split_dataset in dataset.values():
            check_labels(split_dataset, num_labels, label_column=label_column)
        return
    if int(num_labels) < 1:
        raise DataError(f"num_labels must be >= 1, got {num_labels}.")
    values, indices, feature, source = _label_array(dataset, label_column)
    if values.size == 0:
        return
    if values.dtype.kind == "f" or values.dtype.kind == "O":
        nulls = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in values.tolist()])
        if nulls.any():
            row = int(np.argmax(nulls))
            raise LabelOutOfRangeError(
                f"missing (null) label in row {row} of {source} ({int(nulls.sum())} rows affected); drop unlabelled rows "
                "first, e.g. dataset.filter(lambda ex: ex['label'] is not None)."
            )
        values = values.astype(np.int64)
    bad = (values < 0) | (values >= num_labels)
    if not bad.any():
        return
    row = int(np.argmax(bad))
    value = int(values[row])
    index_note = f", index {int(indices[row])}" if indices is not None else ""
    classes = ""
    if isinstance(feature, datasets.ClassLabel):
        classes = f" The label column is a ClassLabel with {feature.num_classes} classes."
    raise LabelOutOfRangeError(
        f"label {value} in row {row}{index_note} of {source} is out of range for a model with num_labels={num_labels} "
        f"(valid labels are 0..{num_labels - 1}); {int(bad.sum())} rows are affected, labels seen span "
        f"{int(values.min())}..{int(values.max())}.{classes} Build the model with num_labels={int(values.max()) + 1} "
        f"(or the dataset's number of classes), pick the right label column, or filter/remap the labels, e.g. "
        f"dataset.filter(lambda ex: 0 <= ex['{label_column}'] < {num_labels})."
    )


def verify_images(dataset, *, image_column: str = IMAGE_COLUMN, source: str | None = None) -> int:
    """Decode every image of ``dataset``; raise :class:`CorruptImageError` (row index and source) at the first
    unreadable one. Returns the number of images checked."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        return sum(verify_images(d, image_column=image_column, source=source) for d in dataset.values())
    if image_column not in dataset.column_names:
        raise MissingColumnError(
            f"image column {image_column!r} not found in {describe_source(dataset)}; columns present: "
            f"{columns_description(dataset)}."
        )
    source = source or describe_source(dataset)
    columns = [image_column] + ([INDEX_COLUMN] if INDEX_COLUMN in dataset.column_names else [])
    raw = dataset.select_columns(columns).cast_column(image_column, datasets.Image(decode=False))
    raw = raw.with_format(None)
    count = 0
    for batch in raw.iter(batch_size=256):
        rows = batch.get(INDEX_COLUMN) or range(count, count + len(batch[image_column]))
        for value, row in zip(batch[image_column], rows):
            decode_image(value, row=row, source=source)
        count += len(batch[image_column])
    return count
