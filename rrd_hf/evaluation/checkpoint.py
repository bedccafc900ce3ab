"""Top-1/top-5 of any image-classification checkpoint on any supported dataset."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["evaluate_checkpoint", "predict_logits"]


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
    the split's were used (`num_samples` of `split_size`, `subset`).
    """
    from ..data import prepare_dataset, resolve_dataset
    from .metrics import topk_accuracy
    from ..classifiers.loading import load_image_classifier

    model = load_image_classifier(checkpoint, role="checkpoint")
    resolved = resolve_dataset(dataset, data_dir=data_dir, eval_split=split)
    raw, stats = resolved.eval, resolved.require_stats()
    split_size = len(raw)
    if max_samples is not None:
        raw = raw.select(range(min(max_samples, len(raw))))
    data = prepare_dataset(raw, resolved.eval_split, train=False, image_size=image_size,
                           num_labels=model.config.num_labels, stats=stats)
    logits, labels = predict_logits(model, data, batch_size=batch_size, device=device, progress=progress)
    accuracy = topk_accuracy(logits, labels, ks=(1, 5))
    return {"checkpoint": checkpoint, "dataset": dataset, "split": resolved.eval_split,
            "num_samples": int(len(labels)), "split_size": int(split_size), "subset": int(len(labels)) < split_size,
            "top1": round(100 * accuracy[1], 4), "top5": round(100 * accuracy[5], 4)}
