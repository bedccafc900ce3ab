"""Facts of a run turned into card text: names and links, durations, hyper-parameter rows."""

from __future__ import annotations

import json
import re
import math
import os

from .objective import METHOD_NAMES
from .record import read_json

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


def describe_dataset(name_or_path: str | None, eval_split: str | None = None) -> dict | None:
    """Hub id, display name and evaluation split of a known name, Hub id or local folder (when recognisable)."""
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
                "split": eval_split or info.eval_split, "train_split": info.train_split,
                "url": f"https://huggingface.co/datasets/{info.hub_id}", "local": False}
    if os.path.exists(text) or not HUB_ID_RE.match(text):
        return {"hub_id": None, "name": os.path.basename(os.path.normpath(text)) or text, "short": None,
                "split": eval_split or "test", "train_split": "train", "url": None, "local": True}
    return {"hub_id": text, "name": text, "short": None, "split": eval_split or "test", "train_split": "train",
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


def hyperparameter_rows(args: dict | None, world_size: int | None, method_slug: str | None) -> list[tuple[str, str]]:
    """(name, value) rows of every setting that changes the result; empty when the arguments were not recorded."""
    if not args:
        return []
    a = args.get
    rows: list[tuple[str, str]] = []
    if method_slug is not None and a("rrd_weight") is not None:
        loss = f"{fmt(a('ce_weight'))} · CE + {fmt(a('kd_weight'))} · KD + {fmt(a('rrd_weight'))} · RRD"
        if a("distill_method"):
            loss += f" + {fmt(a('distill_weight'))} · {METHOD_NAMES.get(a('distill_method'), a('distill_method').upper())}"
        rows.append(("loss", loss))
    if a("distill_method"):
        rows.append(("distillation method (rrd_hf.methods)", fmt(a("distill_method"))))
        if a("distill_kwargs"):
            rows.append(("method arguments", json.dumps(a("distill_kwargs"), sort_keys=True)))
        if a("init_epochs") is not None:
            rows.append(("initialisation-stage epochs", fmt(a("init_epochs"))))
    if a("rrd_weight"):
        if a("rrd_preset"):
            rows.append(("RRD preset", fmt(a("rrd_preset"))))
        rows += [
            ("τ_s (student temperature)", fmt(a("student_temperature"))),
            ("τ_t (teacher temperature)", fmt(a("teacher_temperature"))),
            ("enqueue order", fmt(a("enqueue"))),
            ("memory type", fmt(a("memory_type"))),
            ("memory size K", fmt(a("memory_size"))),
        ]
        if a("memory_type") == "momentum":
            rows.append(("memory momentum", fmt(a("memory_momentum"))))
        rows.append(("embedding dim (projection heads)", fmt(a("embedding_dim"))))
    if a("kd_weight"):
        rows.append(("KD temperature T", fmt(a("kd_temperature"))))
    max_steps = a("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        rows.append(("training length", f"{max_steps} optimizer steps"))
    else:
        rows.append(("epochs", fmt(a("num_train_epochs"))))
    per_device = a("per_device_train_batch_size")
    accumulation = a("gradient_accumulation_steps") or 1
    if per_device is not None:
        if world_size:
            batch = f"{per_device} per process × {world_size} process{'es' if world_size > 1 else ''}"
            batch += f" × {accumulation} accumulation steps" if accumulation > 1 else ""
            batch += f" = {per_device * world_size * accumulation}"
        else:
            batch = f"{per_device} per process × number of processes {NOT_RECORDED}"
        rows.append(("batch size", batch))
    optim = fmt(a("optim"))
    if a("optim_args"):
        optim += f" ({a('optim_args')})"
    elif str(a("optim") or "").startswith("adam"):
        optim += f" (β1 {fmt(a('adam_beta1'))}, β2 {fmt(a('adam_beta2'))}, ε {fmt(a('adam_epsilon'))})"
    rows.append(("optimizer", optim))
    rows.append(("learning rate", fmt(a("learning_rate"))))
    if a("lr_decay_epochs"):
        schedule = f"× {fmt(a('lr_decay_rate'))} at epochs {fmt(a('lr_decay_epochs'))}"
    else:
        schedule = fmt(a("lr_scheduler_type"))
        if a("warmup_steps"):
            schedule += f", warm-up {fmt(a('warmup_steps'))}"
    rows.append(("LR schedule", schedule))
    decay = fmt(a("weight_decay"))
    if a("weight_decay"):
        decay += " (every parameter)" if a("decay_all_parameters") else " (not on biases and norms)"
    rows.append(("weight decay", decay))
    if a("label_smoothing_factor"):
        rows.append(("label smoothing", fmt(a("label_smoothing_factor"))))
    if a("max_grad_norm"):
        rows.append(("gradient clipping (max norm)", fmt(a("max_grad_norm"))))
    precision = "bf16 autocast" if a("bf16") else "fp16 autocast" if a("fp16") else "fp32"
    rows.append(("precision", precision))
    rows.append(("seed", fmt(a("seed"))))
    return rows
