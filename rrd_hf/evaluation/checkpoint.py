"""Top-1/top-5 of any image-classification checkpoint on any supported dataset."""

from __future__ import annotations

import logging

import numpy as np
import torch

__all__ = ["evaluate_checkpoint", "predict_logits", "describe_evaluated"]

logger = logging.getLogger(__name__)


def describe_evaluated(num_samples: int, split_size: int, split: str | None) -> str:
    """'128 of 10,000 test images (a subset ...)' or 'all 10,000 test images': an accuracy on part of a
    split is not the split's accuracy, and whoever reads the number must see which it is."""
    what = f"{split} images" if split else "images"
    if num_samples < split_size:
        return f"{num_samples:,} of {split_size:,} {what} (a subset of the split, not all of it)"
    return f"all {split_size:,} {what}"


def _warn_on_other_classes(model, class_names, checkpoint: str) -> None:
    """A checkpoint whose saved class names differ from the dataset's would be scored against the wrong ids: say so
    (names such as LABEL_0, which carry no meaning, are not compared)."""
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label.get(i, "")) for i in range(len(id2label))]
    if not class_names or not names or all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return
    data = [str(name) for name in class_names]
    if data != names:
        first = next((i for i, (a, b) in enumerate(zip(names, data)) if a != b), min(len(names), len(data)))
        logger.warning("%s names its %d classes differently from the dataset's %d (first difference at id %d: %r in "
                       "the model, %r in the data): its accuracy here may compare unrelated ids", checkpoint,
                       len(names), len(data), first, names[first] if first < len(names) else None,
                       data[first] if first < len(data) else None)


@torch.no_grad()
def predict_logits(model, dataset, batch_size: int = 256, device: str | torch.device | None = None,
                   batch_transform=None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of `model` (in eval mode) over a dataset yielding `pixel_values`/`labels`."""
    from tqdm.auto import tqdm
    from transformers import default_data_collator

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=default_data_collator)
    all_logits, all_labels = [], []
    for batch in tqdm(loader, desc="evaluating", disable=not progress, unit="batch"):
        pixel_values = batch["pixel_values"].to(device)
        if batch_transform is not None:
            pixel_values = batch_transform(pixel_values, False)
        all_logits.append(model(pixel_values=pixel_values).logits.float().cpu())
        all_labels.append(batch["labels"])
    return torch.cat(all_logits).numpy(), torch.cat(all_labels).numpy()


def evaluate_checkpoint(checkpoint: str, dataset: str = "cifar100", split: str | None = None, *,
                        data_dir: str | None = None, image_size: int = 32, batch_size: int = 256,
                        max_samples: int | None = None, device: str | None = None, progress: bool = True) -> dict:
    """Load `checkpoint` (folder or Hub id) and return its top-1/top-5 (%) on `dataset` with evaluation transforms.

    `dataset`: a known name, Hub id or local path; `data_dir`: a local copy of it (read as that dataset, e.g.
    offline). `split` defaults to the dataset's evaluation split that exists (`valid` for Tiny ImageNet, else the
    first of test/validation/valid/...). `max_samples` evaluates the first N images; the result says how many of
    the split's were used (`num_samples` of `split_size`, `subset`, and in words `evaluated_on`).
    """
    from ..data import prepare_dataset, resolve_dataset
    from .metrics import topk_accuracy
    from ..classifiers.loading import load_image_classifier

    if max_samples is not None and (isinstance(max_samples, bool) or int(max_samples) != max_samples
                                    or max_samples < 1):
        raise ValueError(f"max_samples must be a whole number >= 1 (None for the whole split), got {max_samples!r}.")
    model = load_image_classifier(checkpoint, role="checkpoint")
    resolved = resolve_dataset(dataset, data_dir=data_dir, eval_split=split)
    raw, stats = resolved.eval, resolved.require_stats()
    _warn_on_other_classes(model, resolved.class_names, checkpoint)
    split_size = len(raw)
    if max_samples is not None:
        raw = raw.select(range(min(max_samples, len(raw))))
    data = prepare_dataset(raw, resolved.eval_split, train=False, image_size=image_size,
                           num_labels=model.config.num_labels, stats=stats)
    logits, labels = predict_logits(model, data, batch_size=batch_size, device=device, progress=progress)
    accuracy = topk_accuracy(logits, labels, ks=(1, 5))
    return {"checkpoint": checkpoint, "dataset": dataset, "split": resolved.eval_split,
            "num_samples": int(len(labels)), "split_size": int(split_size), "subset": int(len(labels)) < split_size,
            "evaluated_on": describe_evaluated(int(len(labels)), int(split_size), resolved.eval_split),
            "top1": round(100 * accuracy[1], 4), "top5": round(100 * accuracy[5], 4)}
