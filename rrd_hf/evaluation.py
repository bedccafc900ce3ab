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
                        image_size: int = 32, batch_size: int = 256, max_samples: int | None = None,
                        device: str | None = None, progress: bool = True) -> dict:
    """Load `checkpoint` (folder or Hub id), run it on `dataset`/`split` with evaluation transforms, return metrics."""
    from .data import find_dataset_info, load_image_dataset, prepare_dataset
    from .metrics import topk_accuracy
    from .pretrained import load_image_classifier

    model = load_image_classifier(checkpoint, role="checkpoint")
    info = find_dataset_info(dataset)
    split = split or (info.eval_split if info is not None else "test")
    raw = load_image_dataset(dataset, split)
    if max_samples is not None:
        raw = raw.select(range(min(max_samples, len(raw))))
    data = prepare_dataset(raw, split, train=False, image_size=image_size, num_labels=model.config.num_labels,
                           stats=info, dataset_name=info.name if info else None)
    logits, labels = predict_logits(model, data, batch_size=batch_size, device=device, progress=progress)
    accuracy = topk_accuracy(logits, labels, ks=(1, 5))
    return {"checkpoint": checkpoint, "dataset": dataset, "split": split, "num_samples": int(len(labels)),
            "top1": round(100 * accuracy[1], 4), "top5": round(100 * accuracy[5], 4)}
