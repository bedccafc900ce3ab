"""Top-1/top-5 accuracy for `Trainer(compute_metrics=...)` in numpy: no `evaluate`, no Hub, works offline."""

from __future__ import annotations

import numpy as np

__all__ = ["topk_accuracy", "compute_classification_metrics"]


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest logits, for each k (capped at the number of classes)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}.")
    if labels.size == 0:
        return {k: float("nan") for k in ks}
    k_max = min(max(ks), logits.shape[1])
    # argpartition keeps this O(N·C) for large label sets; then order the k_max candidates.
    candidates = np.argpartition(-logits, k_max - 1, axis=1)[:, :k_max]
    order = np.take_along_axis(-logits, candidates, axis=1).argsort(axis=1, kind="stable")
    top = np.take_along_axis(candidates, order, axis=1)
    hits = top == labels[:, None]
    return {k: float(hits[:, : min(k, k_max)].any(axis=1).mean()) for k in ks}


def compute_classification_metrics(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for image classification: `accuracy` (top-1) and `top5_accuracy`."""
    logits = eval_prediction.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    accuracy = topk_accuracy(logits, eval_prediction.label_ids, ks=(1, 5))
    return {"accuracy": accuracy[1], "top5_accuracy": accuracy[5]}
