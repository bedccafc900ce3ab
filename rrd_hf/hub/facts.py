"""Facts of a run turned into card text: names and links, durations, sizes, and what was evaluated."""

from __future__ import annotations

import math
import os
import re

from ..runs.record import read_json

NOT_RECORDED = "not recorded"
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PRETTY_DATASET = {
    "cifar100": "CIFAR-100", "cifar10": "CIFAR-10", "tiny-imagenet": "Tiny ImageNet", "stl10": "STL-10",
    "fashion_mnist": "Fashion-MNIST",
}
SMALL_LR_ARCHITECTURES = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return NOT_RECORDED
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"
    return f"{text} ({seconds:.0f} s)"


def describe_dataset(name_or_path: str | None) -> dict | None:
    """Hub id, display name and evaluation split (None when unknown) of a known name, Hub id or local folder."""
    if not name_or_path:
        return None
    from ..data import find_dataset_info
    from ..data.loading import infer_dataset_info

    text = os.fspath(name_or_path)
    info = find_dataset_info(text)
    if info is None and os.path.exists(text):
        try:
            info = infer_dataset_info(text)
        except Exception:
            info = None
    if info is not None:
        return {"hub_id": info.hub_id, "name": PRETTY_DATASET.get(info.name, info.name), "short": info.name,
                "split": info.eval_split, "url": f"https://huggingface.co/datasets/{info.hub_id}", "local": False}
    if os.path.exists(text) or not HUB_ID_RE.match(text):
        return {"hub_id": None, "name": os.path.basename(os.path.normpath(text)) or text, "short": None,
                "split": None, "url": None, "local": True}
    return {"hub_id": text, "name": text, "short": None, "split": None,
            "url": f"https://huggingface.co/datasets/{text}", "local": False}


def display_name(name_or_path: str) -> str:
    """A Hub id as is; a local path by its last component only (a card must not publish local paths)."""
    text = os.fspath(name_or_path)
    return text if HUB_ID_RE.match(text) and not os.path.exists(text) else os.path.basename(os.path.normpath(text))


def describe_model(name_or_path: str | None, architecture: str | None = None, local: bool = False) -> dict | None:
    """Hub id / link of a teacher, or a note that it is a local folder (then not put in the metadata)."""
    if not name_or_path:
        return {"id": None, "name": None, "url": None, "local": False, "architecture": architecture} if architecture else None
    text = os.fspath(name_or_path)
    local = local or os.path.isdir(text)
    if local and architecture is None:
        config = read_json(os.path.join(text, "config.json")) or {}
        architecture = config.get("zoo_name") or (config.get("architectures") or [None])[0] or config.get("model_type")
    hub = not local and bool(HUB_ID_RE.match(text))
    return {"id": text if hub else None, "name": text if hub else os.path.basename(os.path.normpath(text)),
            "url": f"https://huggingface.co/{text}" if hub else None, "local": local, "architecture": architecture}


def num_parameters(folder: str) -> int | None:
    """Parameter count from the safetensors headers (no tensor is loaded)."""
    try:
        from safetensors import safe_open

        files = [os.path.join(folder, "model.safetensors")]
        index = read_json(os.path.join(folder, "model.safetensors.index.json"))
        if index is not None:
            files = [os.path.join(folder, f) for f in sorted(set(index.get("weight_map", {}).values()))]
        total = 0
        for path in files:
            with safe_open(path, framework="pt") as handle:
                for name in handle.keys():
                    if name.endswith("num_batches_tracked"):
                        continue
                    total += math.prod(handle.get_slice(name).get_shape())
        return total
    except Exception:
        return None


def fmt(value) -> str:
    if value is None:
        return NOT_RECORDED
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def split_size(dataset: dict | None, split: str | None, recorded: int | None = None) -> int | None:
    """Images in the full `split`: the official size for a known dataset (a local copy may hold fewer), else what
    the run recorded from the loaded dataset."""
    if split is None:
        return None
    if dataset and dataset.get("short"):
        from ..data import KNOWN_DATASETS

        info = KNOWN_DATASETS.get(dataset["short"])
        if info is not None and split in info.split_sizes:
            return info.split_sizes[split]
    return recorded


def describe_evaluation(dataset: dict | None, num_samples: int | None, split: str | None, size: int | None,
                        assumed_split: bool = False) -> dict:
    """What the accuracies were measured on, in words that claim no more than was recorded.

    Returns `text` (for the card's sentence), `split` (for the model-index, None when unknown) and `qualifier`
    (for the model-index metric name when the evaluation covered part of a split, or an unknown share of it).
    """
    of = f" of {dataset['name']}" if dataset else ""
    n = num_samples
    if n is not None and split is not None and size is not None and n <= size:
        if n == size:
            return {"text": f"on all {n:,} images of the `{split}` split{of}", "split": split, "qualifier": None}
        return {"text": f"on {n:,} of the {size:,} images of the `{split}` split{of} (a subset of the split, not all "
                        "of it)", "split": split, "qualifier": f"{n:,} of {size:,} {split} images"}
    if n is not None and split is not None:
        return {"text": f"on {n:,} images of the `{split}` split{of} (the split's full size is not known here, so "
                        "whether that is all of it is not recorded)",
                "split": split, "qualifier": f"{n:,} {split} images"}
    if n is not None:
        return {"text": f"on {n:,} evaluation images{of} (which split was {NOT_RECORDED})", "split": None,
                "qualifier": f"{n:,} evaluation images"}
    if split is not None and assumed_split:
        return {"text": f"on the `{split}` split{of}, the dataset's evaluation split (assumed: neither the split nor "
                        "the number of images evaluated was recorded, so it may be a subset)", "split": split,
                "qualifier": None}
    if split is not None:
        return {"text": f"on the `{split}` split{of} (the number of images evaluated was {NOT_RECORDED}, so it may be "
                        "a subset)", "split": split, "qualifier": None}
    return {"text": f"on the evaluation data{of} (the split and the number of images were {NOT_RECORDED})",
            "split": None, "qualifier": None}
