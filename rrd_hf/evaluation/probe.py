"""The transfer probe of CRD/RRD: freeze a (CIFAR-100) student, train a new linear classifier on another dataset.

    rrd-hf probe runs/wrn_16_2_rrd --dataset stl10 --data-dir ../data/stl10 --output runs/wrn_16_2_rrd/probe_stl10.json

Protocol (the RRD authors' `transfer_student.py`, giakoumoglou/distillers, see docs/references.md): the classifier is replaced by
`nn.Linear(feature_dim, n_cls)` with weights N(0, 0.01) and bias 0, everything else is frozen; images are resized
to 32×32; training augmentation Resize(32) → RandomCrop(32, padding 4) → horizontal flip, per-dataset
normalisation; SGD lr 0.05 (0.01 for MobileNetV2/ShuffleV1/ShuffleV2), momentum 0.9, weight decay 5e-4, batch 64,
120 epochs with the LR ×0.1 at epochs 30/60/90. Top-1 is measured after every epoch on the test split (STL-10) or
the valid split (Tiny ImageNet); both the last and the best epoch are reported (the reference prints the best,
its comment says papers report the last).

BatchNorm: by default the backbone runs in eval mode, so its BatchNorm statistics stay those learnt on the source
data and the probe measures the frozen representation. The reference code instead leaves the whole model in train
mode while probing, so BatchNorm running statistics adapt to the target data (and batch statistics normalise each
training batch) even though no weight is trained; `bn_train=True` (`--bn-train`) reproduces that, which matters
when comparing with the published transfer numbers.

Data go through the in-memory fast path: decoded and resized once to a uint8 tensor on the device, augmented per
batch on the device by `DeviceAugmentation`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["linear_probe", "attach_linear_probe", "LinearProbeHead", "default_probe_lr", "PROBE_DEFAULTS"]

logger = logging.getLogger(__name__)

#: The reference protocol's settings (HEAD of the authors' code).
PROBE_DEFAULTS = {"epochs": 120, "milestones": (30, 60, 90), "lr": 0.05, "small_lr": 0.01, "lr_decay_rate": 0.1,
                  "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64, "image_size": 32, "padding": 4,
                  "init_std": 0.01}
_SMALL_LR_NAMES = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}
_SMALL_LR_MODEL_TYPES = {"cifar_mobilenetv2", "cifar_shufflenetv1", "cifar_shufflenetv2"}


class LinearProbeHead(nn.Module):
    """`nn.Linear(in_features, num_classes)` on the flattened classifier input, initialised N(0, std²) / 0."""

    def __init__(self, in_features: int, num_classes: int, std: float = 0.01, generator: torch.Generator | None = None):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)
        with torch.no_grad():
            self.linear.weight.normal_(0.0, std, generator=generator)
            self.linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.flatten(1))


def attach_linear_probe(model: nn.Module, num_classes: int, *, module_name: str | None = None, std: float = 0.01,
                        seed: int = 0) -> LinearProbeHead:
    """Freeze every parameter of `model` and replace its classifier (in place) by a trainable `LinearProbeHead`."""
    from ..classifiers.activations import feature_dim, find_classifier

    name, _ = find_classifier(model, module_name)
    dim = feature_dim(model, module_name)
    model.requires_grad_(False)
    head = LinearProbeHead(dim, num_classes, std=std, generator=torch.Generator().manual_seed(seed))
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, head)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "num_labels", None) != num_classes:
        config.num_labels = num_classes  # keeps config-driven code (and a later save_pretrained) consistent
    return head


def default_probe_lr(model: nn.Module) -> float:
    """0.05, or 0.01 for MobileNetV2 / ShuffleV1 / ShuffleV2 as in the reference protocol."""
    config = getattr(model, "config", None)
    if getattr(config, "zoo_name", None) in _SMALL_LR_NAMES or getattr(config, "model_type", None) in _SMALL_LR_MODEL_TYPES:
        return PROBE_DEFAULTS["small_lr"]
    return PROBE_DEFAULTS["lr"]


def _check_protocol(epochs, batch_size, eval_batch_size, lr, max_train_samples, max_eval_samples) -> None:
    """Refuse settings that would run for hours and report nothing meaningful (no epoch, a NaN learning rate) or fail
    only after the data is decoded (a zero batch)."""
    import math

    for name, value, minimum in (("epochs", epochs, 1), ("batch_size", batch_size, 1),
                                 ("eval_batch_size", eval_batch_size, 1), ("max_train_samples", max_train_samples, 1),
                                 ("max_eval_samples", max_eval_samples, 1)):
        if value is None and name.startswith("max_"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0 (None for the protocol's), got {lr!r}.")


def _subset(dataset, n: int | None, seed: int):
    """A seeded random subset (splits are often sorted by class, so the first n rows would miss classes)."""
    if n is None or n >= len(dataset):
        return dataset
    return dataset.select(sorted(random.Random(seed).sample(range(len(dataset)), n)))


@torch.no_grad()
def _evaluate(model, data, augment, device, batch_size: int) -> tuple[float, float]:
    from .metrics import topk_accuracy

    model.eval()
    logits = []
    for start in range(0, len(data), batch_size):
        images = data.images[start : start + batch_size].to(device, non_blocking=True)
        logits.append(model(pixel_values=augment(images, training=False)).logits.float().cpu())
    accuracy = topk_accuracy(torch.cat(logits).numpy(), data.labels.numpy(), ks=(1, 5))
    return 100.0 * accuracy[1], 100.0 * accuracy[5]


def linear_probe(
    model: nn.Module | str | os.PathLike,
    dataset: str = "stl10",
    *,
    data_dir: str | os.PathLike | None = None,
    train_split: str | None = None,
    eval_split: str | None = None,
    epochs: int = PROBE_DEFAULTS["epochs"],
    milestones: Sequence[int] = PROBE_DEFAULTS["milestones"],
    lr: float | None = None,
    lr_decay_rate: float = PROBE_DEFAULTS["lr_decay_rate"],
    momentum: float = PROBE_DEFAULTS["momentum"],
    weight_decay: float = PROBE_DEFAULTS["weight_decay"],
    batch_size: int = PROBE_DEFAULTS["batch_size"],
    eval_batch_size: int = 256,
    image_size: int = PROBE_DEFAULTS["image_size"],
    padding: int = PROBE_DEFAULTS["padding"],
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    bn_train: bool = False,
    feature_module: str | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
) -> dict:
    """Linear-probe `model` (a checkpoint folder, a Hub id or a module) on `dataset`; return the metrics (top-1 in %).

    A module passed in is probed in place: its classifier is replaced and its parameters frozen (pass a copy to
    keep it). `dataset` is a known name (stl10, tiny-imagenet, ...) that gives splits, classes and normalisation;
    `data_dir` a local copy of it (Hub layout, parquet, imagefolder), else the Hub id is used. `max_*_samples` take
    a seeded random subset. `bn_train`: see the module docstring. Every other knob is the protocol's, overridable.
    """
    from tqdm.auto import tqdm

    from ..data import DeviceAugmentation, InMemoryImageDataset, resolve_dataset
    from ..classifiers.loading import load_image_classifier
    from .checkpoint import describe_evaluated

    _check_protocol(epochs, batch_size, eval_batch_size, lr, max_train_samples, max_eval_samples)
    started = time.time()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = None
    if isinstance(model, (str, os.PathLike)):
        checkpoint = os.fspath(model)
        model = load_image_classifier(checkpoint, role="checkpoint")
    resolved = resolve_dataset(dataset, data_dir=data_dir, train_split=train_split, eval_split=eval_split)
    source = os.fspath(data_dir) if data_dir is not None else dataset
    stats = resolved.require_stats()
    train_split, eval_split = resolved.train_split, resolved.eval_split
    eval_split_size = len(resolved.eval)
    train_raw = _subset(resolved.train, max_train_samples, seed)
    eval_raw = _subset(resolved.eval, max_eval_samples, seed + 1)
    train = InMemoryImageDataset.from_dataset(train_raw, image_size, device=device, num_workers=num_workers, stats=stats)
    evaluation = InMemoryImageDataset.from_dataset(eval_raw, image_size, device=device, num_workers=num_workers,
                                                   stats=stats)
    num_classes = len(train.class_names) if train.class_names is not None else resolved.num_labels

    head = attach_linear_probe(model, num_classes, module_name=feature_module, std=PROBE_DEFAULTS["init_std"], seed=seed)
    model.to(device)
    lr = default_probe_lr(model) if lr is None else float(lr)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=lr_decay_rate)
    augment = DeviceAugmentation(stats, padding=padding, seed=seed).to(device)
    train_ids = train.index.to(device)
    order = torch.Generator().manual_seed(seed)

    history = []
    bar = tqdm(range(1, epochs + 1), desc=f"probe {resolved.name}", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train(bn_train)  # eval mode keeps the source BatchNorm statistics; train mode adapts them
        epoch_lr = optimizer.param_groups[0]["lr"]
        loss_sum, correct, seen = 0.0, 0, 0
        permutation = torch.randperm(len(train), generator=order)
        for start in range(0, len(train), batch_size):
            positions = permutation[start : start + batch_size]
            images = train.images[positions.to(train.images.device)].to(device, non_blocking=True)
            labels = train.labels[positions].to(device, non_blocking=True)
            ids = train_ids[positions.to(train_ids.device)]
            logits = model(pixel_values=augment(images, training=True, index=ids, epoch=epoch - 1)).logits
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        scheduler.step()
        top1, top5 = _evaluate(model, evaluation, augment, device, eval_batch_size)
        history.append({"epoch": epoch, "lr": epoch_lr, "train_loss": loss_sum / max(seen, 1),
                        "train_top1": 100.0 * correct / max(seen, 1), "eval_top1": top1, "eval_top5": top5})
        bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", top1=f"{top1:.2f}")
    best = max(history, key=lambda h: h["eval_top1"]) if history else {}
    last = history[-1] if history else {}
    return {
        "checkpoint": checkpoint,
        "dataset": resolved.name,
        "source": source,
        "train_split": train_split,
        "eval_split": eval_split,
        "num_train": len(train),
        "num_eval": len(evaluation),
        "evaluated_on": describe_evaluated(len(evaluation), eval_split_size, eval_split),
        "num_classes": num_classes,
        "feature_dim": head.linear.in_features,
        "epochs": epochs,
        "milestones": list(milestones),
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "image_size": image_size,
        "bn_train": bn_train,
        "seed": seed,
        "last_top1": round(last.get("eval_top1", float("nan")), 4),
        "last_top5": round(last.get("eval_top5", float("nan")), 4),
        "best_top1": round(best.get("eval_top1", float("nan")), 4),
        "best_epoch": best.get("epoch"),
        "chance_top1": round(100.0 / num_classes, 4),
        "device": str(device),
        "seconds": round(time.time() - started, 2),
        "history": history,
    }
