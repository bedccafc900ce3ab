"""What per-sample state needs from a training set: how many `index` slots, and the label of every index."""

from __future__ import annotations

import torch

__all__ = ["index_slots", "labels_by_index"]


def _index_and_labels(dataset, with_labels: bool):
    """(index, labels) tensors read without running image transforms; None when the dataset has no index."""
    index = getattr(dataset, "index", None)  # rrd_hf.data.InMemoryImageDataset
    if isinstance(index, torch.Tensor):
        labels = getattr(dataset, "labels", None)
        return index, (labels if isinstance(labels, torch.Tensor) else None)
    column_names = getattr(dataset, "column_names", None) or []
    if "index" not in column_names:  # a datasets.Dataset carries its columns; anything else is opaque
        return None, None
    label_column = next((name for name in ("label", "labels") if name in column_names), None)
    columns = ["index"] + ([label_column] if with_labels and label_column else [])
    table = dataset.select_columns(columns).with_format("numpy")
    index = torch.as_tensor(table["index"])
    labels = torch.as_tensor(table[label_column]) if with_labels and label_column else None
    return index, labels


def index_slots(dataset) -> int | None:
    """Slots per-sample state needs: the largest dataset `index` + 1 (indices may skip rows after a select), or
    the dataset's length when it has no readable index column; None without a length."""
    if dataset is None:
        return None
    index, _ = _index_and_labels(dataset, with_labels=False)
    if index is not None:
        return int(index.max()) + 1 if index.numel() else 0
    return len(dataset) if hasattr(dataset, "__len__") else None


def labels_by_index(dataset, slots: int) -> torch.Tensor | None:
    """The label of every index slot (`-1` where no sample has that index), when cheaply readable."""
    index, labels = _index_and_labels(dataset, with_labels=True)
    if index is None or labels is None:
        return None
    out = torch.full((slots,), -1, dtype=torch.long)
    out[index.long()] = labels.long()
    return out
