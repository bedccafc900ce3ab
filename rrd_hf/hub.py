"""Publishing students (and teachers) on the Hugging Face Hub: the clean export, an honest model card, one commit.

    from rrd_hf.hub import push_to_hub
    push_to_hub("runs/r8x4", "me/resnet8x4-rrd-cifar100", teacher="me/resnet32x4-cifar100")

    rrd-hf push runs/r8x4 me/resnet8x4-rrd-cifar100 --teacher me/resnet32x4-cifar100
    rrd-hf push runs/r8x4 me/resnet8x4-rrd-cifar100 --export-dir /tmp/export   # offline: write the folder only

What goes up is an allow-list, never "the folder minus some patterns": the weights (`model.safetensors`, or the
shards of its index), `config.json`, the modeling/configuration files that `config.auto_map` needs (with their
relative imports, e.g. `_cifar_common.py`), `preprocessor_config.json`, the card `README.md` and the figures
(`*.png`, `figures/*.png`). The teacher, the projection heads and memory (`rrd_state.safetensors`), the optimizer,
`training_args.bin`, `trainer_state.json` and `checkpoint-*` folders therefore never leave the machine. The files
are staged into a temporary folder and validated (the weights load with `AutoModelForImageClassification` with no
missing or unexpected keys, the card parses, the required files are there) before a single `upload_folder` commit,
so the Hub never sees a half-written folder and a failed upload leaves the local files untouched.

The card says what is known and says "not recorded" for what is not. Hyper-parameters, the teacher, the dataset,
the hardware and the training time come, in this order, from the arguments, `_rrd_run.json` (written next to the
weights by `HubMixin`), `results.json` (written by `rrd-hf train`), `training_args.bin` and the newest
`trainer_state.json`. The teacher is recorded as the custom metadata key `teacher_model`, never as `base_model`:
`base_model` would list the student in the teacher's model tree as a fine-tune of it, which a student trained from
scratch is not.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "HubMixin",
    "HubPublishError",
    "ExportError",
    "build_model_card",
    "export_student",
    "push_to_hub",
    "template_path",
    "hardware_description",
    "RUN_INFO_NAME",
    "RRD_CITATION",
]

logger = logging.getLogger(__name__)

#: Written next to the weights by `HubMixin`: what the card needs and the folder does not otherwise record
#: (hardware, world size, the teacher and dataset names). The leading underscore keeps `Trainer`'s own pushes off it.
RUN_INFO_NAME = "_rrd_run.json"
_TEMPLATE_NAMES = {"student": "student.md.jinja", "teacher": "teacher.md.jinja"}
_NOT_RECORDED = "not recorded"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_RELATIVE_IMPORT_RE = re.compile(r"^\s*from\s+\.(\w*)\s+import\s+([\w\s,()]+)", re.MULTILINE)
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PRETTY_DATASET = {
    "cifar100": "CIFAR-100", "cifar10": "CIFAR-10", "tiny-imagenet": "Tiny ImageNet", "stl10": "STL-10",
    "fashion_mnist": "Fashion-MNIST",
}
_SMALL_LR_ARCHITECTURES = ("MobileNetV2", "ShuffleV1", "ShuffleV2")

RRD_CITATION = """@article{giakoumoglou2024relational,
  title         = {Relational Representation Distillation},
  author        = {Giakoumoglou, Nikolaos and Stathaki, Tania},
  journal       = {arXiv preprint arXiv:2407.12073},
  year          = {2024},
  eprint        = {2407.12073},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2407.12073}
}"""


class HubPublishError(RuntimeError):
    """The Hub refused or could not be reached; the local checkpoint was not modified."""


class ExportError(ValueError):
    """The checkpoint folder cannot be published as it is (missing or inconsistent files)."""


# ------------------------------------------------------------------------------------------------- templates


def template_path(kind: str = "student") -> str:
    """Path of the card template: inside the installed package (`rrd_hf/model_cards/`, mapped from the top-level
    `model_cards/` folder by pyproject.toml), else the source checkout's `model_cards/`."""
    if kind not in _TEMPLATE_NAMES:
        raise ValueError(f"kind must be one of {sorted(_TEMPLATE_NAMES)}, got {kind!r}.")
    here = Path(__file__).resolve().parent
    for folder in (here / "model_cards", here.parent / "model_cards"):
        candidate = folder / _TEMPLATE_NAMES[kind]
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"model-card template {_TEMPLATE_NAMES[kind]} not found next to {here}: the installation is incomplete. "
        "Reinstall rrd_hf (`pip install .` from the repository root ships model_cards/ as rrd_hf/model_cards)."
    )


# ------------------------------------------------------------------------------------------------- run facts


def hardware_description(device=None, world_size: int | None = None) -> str:
    """'1 × NVIDIA H100 80GB HBM3' or 'CPU (x86_64, 16 cores)': what trained the model, for the card."""
    import torch

    device = torch.device(device) if device is not None else None
    processes = f"{world_size} × " if world_size else ""
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return f"{processes}{torch.cuda.get_device_name(device)}"
    if device is not None and device.type not in ("cpu", "cuda"):
        return f"{processes}{device.type}"
    cpu = platform.processor() or platform.machine() or "unknown"
    try:  # Linux: the CPU model says more than the architecture
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    plural = "es" if (world_size or 1) > 1 else ""
    return f"CPU ({cpu}, {os.cpu_count()} cores), {world_size or 1} process{plural}"


def _read_json(path: str | os.PathLike) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _newest_trainer_state(folder: str) -> tuple[dict | None, str | None]:
    """`trainer_state.json` of the folder itself, else of its newest `checkpoint-*` (for the log history)."""
    direct = os.path.join(folder, "trainer_state.json")
    if os.path.isfile(direct):
        return _read_json(direct), direct
    checkpoints = []
    for path in glob.glob(os.path.join(folder, "checkpoint-*", "trainer_state.json")):
        match = re.search(r"checkpoint-(\d+)", path)
        if match:
            checkpoints.append((int(match.group(1)), path))
    if not checkpoints:
        return None, None
    path = max(checkpoints)[1]
    return _read_json(path), path


def _load_training_args(folder: str) -> dict | None:
    """`training_args.bin` as a dict. It is a pickle (as Trainer writes it): read only your own checkpoints."""
    path = os.path.join(folder, "training_args.bin")
    if not os.path.isfile(path):
        return None
    try:
        import torch

        args = torch.load(path, weights_only=False, map_location="cpu")
        return args.to_dict() if hasattr(args, "to_dict") else dict(vars(args))
    except Exception as error:  # an incompatible pickle must not stop a push; the card then says "not recorded"
        logger.warning("could not read %s (%s): the card will list the hyper-parameters as not recorded.", path, error)
        return None


def _train_runtime(log_history: Iterable[dict] | None) -> float | None:
    for log in reversed(list(log_history or [])):
        if "train_runtime" in log:
            return float(log["train_runtime"])
    return None


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return _NOT_RECORDED
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"
    return f"{text} ({seconds:.0f} s)"


def _dataset_meta(name_or_path: str | None, eval_split: str | None = None) -> dict | None:
    """Hub id, display name and evaluation split of a known name, Hub id or local folder (when recognisable)."""
    if not name_or_path:
        return None
    from .data import find_dataset_info
    from .data.loading import infer_dataset_info

    text = os.fspath(name_or_path)
    info = find_dataset_info(text)
    if info is None and os.path.exists(text):
        try:
            info = infer_dataset_info(text)
        except Exception:
            info = None
    if info is not None:
        return {"hub_id": info.hub_id, "name": _PRETTY_DATASET.get(info.name, info.name), "short": info.name,
                "split": eval_split or info.eval_split, "train_split": info.train_split,
                "url": f"https://huggingface.co/datasets/{info.hub_id}", "local": False}
    if os.path.exists(text) or not _HUB_ID_RE.match(text):
        return {"hub_id": None, "name": os.path.basename(os.path.normpath(text)) or text, "short": None,
                "split": eval_split or "test", "train_split": "train", "url": None, "local": True}
    return {"hub_id": text, "name": text, "short": None, "split": eval_split or "test", "train_split": "train",
            "url": f"https://huggingface.co/datasets/{text}", "local": False}


def _display_name(name_or_path: str) -> str:
    """A Hub id as is; a local path by its last component only (a card must not publish local paths)."""
    text = os.fspath(name_or_path)
    return text if _HUB_ID_RE.match(text) and not os.path.exists(text) else os.path.basename(os.path.normpath(text))


def _model_meta(name_or_path: str | None, architecture: str | None = None, local: bool = False) -> dict | None:
    """Hub id / link of a teacher, or a note that it is a local folder (then not put in the metadata)."""
    if not name_or_path:
        return {"id": None, "name": None, "url": None, "local": False, "architecture": architecture} if architecture else None
    text = os.fspath(name_or_path)
    local = local or os.path.isdir(text)
    if local and architecture is None:
        config = _read_json(os.path.join(text, "config.json")) or {}
        architecture = config.get("zoo_name") or (config.get("architectures") or [None])[0] or config.get("model_type")
    hub = not local and bool(_HUB_ID_RE.match(text))
    return {"id": text if hub else None, "name": text if hub else os.path.basename(os.path.normpath(text)),
            "url": f"https://huggingface.co/{text}" if hub else None, "local": local, "architecture": architecture}


def _num_parameters(folder: str) -> int | None:
    """Parameter count from the safetensors headers (no tensor is loaded)."""
    try:
        from safetensors import safe_open

        files = [os.path.join(folder, "model.safetensors")]
        index = _read_json(os.path.join(folder, "model.safetensors.index.json"))
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


_METHOD_NAMES = {"kd_ls": "KD-LS", "dkd_ls": "DKD-LS", "fitnet": "FitNet", "nst": "NST"}


def _objective(args: dict) -> tuple[float, list] | None:
    """(ce_weight, loss terms) of saved arguments, old runs included; None when they cannot be resolved."""
    from .config import resolve_loss_terms

    try:
        return resolve_loss_terms(args)
    except ValueError:
        return None


def _method(args: dict | None, teacher: dict | None, override: str | None = None) -> tuple[str, str | None, list[str]]:
    """(display name, tag slug, loss terms) of the training objective; slug None when nothing was distilled."""
    if override:
        return override, re.sub(r"[^a-z0-9]+", "-", override.lower()).strip("-"), []
    objective = _objective(args) if args else None
    if objective is None:
        return ("distillation (method not recorded)", None, []) if teacher else ("not recorded", None, [])
    terms = [_METHOD_NAMES.get(term.method, term.method.upper()) for term in objective[1]]
    if not terms:
        return "cross-entropy only (no distillation)", None, []
    if "RRD" in terms:  # RRD first (RRD+KD, RRD+DKD), as the paper names its runs
        terms = ["RRD", *(t for t in terms if t != "RRD")]
    elif "KD" in terms and len(terms) > 1:  # the benchmark's naming: CRD+KD, DKD+KD... the other method first
        terms = [*(t for t in terms if t != "KD"), "KD"]
    name = "+".join(terms)
    return name, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"), terms


def _fmt(value) -> str:
    if value is None:
        return _NOT_RECORDED
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _hyperparameter_rows(args: dict | None, world_size: int | None, method_slug: str | None) -> list[tuple[str, str]]:
    """(name, value) rows of every setting that changes the result; empty when the arguments were not recorded."""
    if not args:
        return []
    a = args.get
    rows: list[tuple[str, str]] = []
    objective = _objective(args)
    terms = {term.method: term for term in objective[1]} if objective else {}
    if method_slug is not None and objective is not None:
        loss = " + ".join([f"{_fmt(objective[0])} · CE"] + [
            f"{_fmt(term.weight)} · {_METHOD_NAMES.get(term.method, term.method.upper())}" for term in objective[1]])
        rows.append(("loss", loss))
    for term in objective[1] if objective else []:
        if term.method in ("rrd", "kd"):
            continue
        rows.append(("distillation method (rrd_hf.methods)", term.method))
        if term.kwargs:
            rows.append(("method arguments", json.dumps(term.kwargs, sort_keys=True, default=str)))
        if a("init_epochs") is not None:
            rows.append(("initialisation-stage epochs", _fmt(a("init_epochs"))))
    if "rrd" in terms:
        options = terms["rrd"].kwargs
        if a("rrd_preset"):
            rows.append(("RRD preset", _fmt(a("rrd_preset"))))
        rows += [
            ("τ_s (student temperature)", _fmt(options.get("student_temperature"))),
            ("τ_t (teacher temperature)", _fmt(options.get("teacher_temperature"))),
            ("enqueue order", _fmt(options.get("enqueue"))),
            ("memory type", _fmt(options.get("memory_type"))),
            ("memory size K", _fmt(options.get("memory_size"))),
        ]
        if options.get("memory_type") == "momentum":
            rows.append(("memory momentum", _fmt(options.get("memory_momentum"))))
        rows.append(("embedding dim (projection heads)", _fmt(options.get("embedding_dim"))))
    if "kd" in terms:
        rows.append(("KD temperature T", _fmt(terms["kd"].kwargs.get("temperature", a("kd_temperature")))))
    max_steps = a("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        rows.append(("training length", f"{max_steps} optimizer steps"))
    else:
        rows.append(("epochs", _fmt(a("num_train_epochs"))))
    per_device = a("per_device_train_batch_size")
    accumulation = a("gradient_accumulation_steps") or 1
    if per_device is not None:
        if world_size:
            batch = f"{per_device} per process × {world_size} process{'es' if world_size > 1 else ''}"
            batch += f" × {accumulation} accumulation steps" if accumulation > 1 else ""
            batch += f" = {per_device * world_size * accumulation}"
        else:
            batch = f"{per_device} per process × number of processes {_NOT_RECORDED}"
        rows.append(("batch size", batch))
    optim = _fmt(a("optim"))
    if a("optim_args"):
        optim += f" ({a('optim_args')})"
    elif str(a("optim") or "").startswith("adam"):
        optim += f" (β1 {_fmt(a('adam_beta1'))}, β2 {_fmt(a('adam_beta2'))}, ε {_fmt(a('adam_epsilon'))})"
    rows.append(("optimizer", optim))
    rows.append(("learning rate", _fmt(a("learning_rate"))))
    if a("lr_decay_epochs"):
        schedule = f"× {_fmt(a('lr_decay_rate'))} at epochs {_fmt(a('lr_decay_epochs'))}"
    else:
        schedule = _fmt(a("lr_scheduler_type"))
        if a("warmup_steps"):
            schedule += f", warm-up {_fmt(a('warmup_steps'))}"
    rows.append(("LR schedule", schedule))
    decay = _fmt(a("weight_decay"))
    if a("weight_decay"):
        decay += " (every parameter)" if a("decay_all_parameters") else " (not on biases and norms)"
    rows.append(("weight decay", decay))
    if a("label_smoothing_factor"):
        rows.append(("label smoothing", _fmt(a("label_smoothing_factor"))))
    if a("max_grad_norm"):
        rows.append(("gradient clipping (max norm)", _fmt(a("max_grad_norm"))))
    precision = "bf16 autocast" if a("bf16") else "fp16 autocast" if a("fp16") else "fp32"
    rows.append(("precision", precision))
    rows.append(("seed", _fmt(a("seed"))))
    return rows


def _figures(folder: str) -> list[dict]:
    """The PNGs of the folder (root and `figures/`), with captions for the ones `rrd-hf plots` writes."""
    captions = {
        "correlation_difference": "|M_S − M_T|: difference of the class-correlation matrices of the student's and "
        "the teacher's standardised logits (diagonal zeroed; darker = larger difference).",
        "tsne": "t-SNE of the student's penultimate embeddings on the evaluation split, coloured by class.",
    }
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.png")) + glob.glob(os.path.join(folder, "figures", "*.png"))):
        relative = os.path.relpath(path, folder).replace(os.sep, "/")
        stem = Path(path).stem
        caption = next((text for key, text in captions.items() if stem.startswith(key)), stem.replace("_", " "))
        out.append({"path": relative, "caption": caption})
    return out


def _transfer_results(folder: str) -> list[dict]:
    """Linear-probe results saved as `probe*.json` by `rrd-hf probe --output`."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "probe*.json"))):
        result = _read_json(path)
        if result and "last_top1" in result:
            out.append(result)
    return out


# ------------------------------------------------------------------------------------------------- the card


def _choose_reported(summary: dict, args: dict | None, report: str) -> tuple[str | None, float | None, float | None]:
    """Which evaluation describes the uploaded weights: the last one, unless the best was loaded at the end."""
    if not summary or summary.get("last_top1") is None and summary.get("best_top1") is None:
        return None, None, None
    if report == "auto":
        report = "best" if args and args.get("load_best_model_at_end") and summary.get("best_top1") is not None else "last"
    if report not in ("best", "last"):
        raise ValueError(f"report must be 'auto', 'best' or 'last', got {report!r}.")
    return report, summary.get(f"{report}_top1"), summary.get(f"{report}_top5")


def build_model_card(
    checkpoint_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    kind: str = "student",
    teacher: str | None = None,
    dataset: str | None = None,
    eval_split: str | None = None,
    license: str = "apache-2.0",
    language: str | list[str] | None = None,
    tags: Iterable[str] | None = None,
    model_name: str | None = None,
    training_args: Any = None,
    log_history: list[dict] | None = None,
    results: dict | None = None,
    hardware: str | None = None,
    world_size: int | None = None,
    train_runtime: float | None = None,
    base_model: str | None = None,
    method: str | None = None,
    report: str = "auto",
):
    """The `huggingface_hub.ModelCard` of a saved student (or teacher) folder.

    Explicit arguments win over what the folder records (see the module docstring). `results` is a
    `rrd_hf.results.summarize_log_history` dict (top-1/top-5 in %); `report` picks which evaluation goes into the
    model-index ("auto": the best one only when `load_best_model_at_end` loaded it, else the last one, i.e. the
    evaluation of the weights being published). `base_model` is only for a student *initialised* from a Hub
    checkpoint; the teacher never goes there.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from .results import summarize_log_history

    folder = os.fspath(checkpoint_dir)
    if kind not in _TEMPLATE_NAMES:
        raise ValueError(f"kind must be one of {sorted(_TEMPLATE_NAMES)}, got {kind!r}.")
    config = _read_json(os.path.join(folder, "config.json"))
    if config is None:
        raise ExportError(f"{folder} has no readable config.json: pass a folder written by save_pretrained / save_model.")
    run = _read_json(os.path.join(folder, RUN_INFO_NAME)) or {}
    saved_results = _read_json(os.path.join(folder, "results.json")) or {}
    state, state_path = _newest_trainer_state(folder)

    if training_args is not None and not isinstance(training_args, dict):
        training_args = training_args.to_dict() if hasattr(training_args, "to_dict") else dict(vars(training_args))
    args = training_args or run.get("training_args") or _load_training_args(folder)

    if results is None:  # the first source that holds evaluations
        candidates = [summarize_log_history(log_history)] if log_history is not None else []
        candidates += [run.get("summary"), saved_results]
        if state is not None:
            from_state = summarize_log_history(state.get("log_history", []))
            candidates.append({**from_state, "source": os.path.relpath(state_path, folder).replace(os.sep, "/")})
        results = next((c for c in candidates if c and c.get("num_evaluations")), None)
    results = results or {}
    if train_runtime is None:
        train_runtime = _train_runtime(log_history) or run.get("train_runtime") or _train_runtime(
            (state or {}).get("log_history"))
    world_size = world_size or run.get("world_size")
    hardware = hardware or run.get("hardware")
    global_step = (run.get("global_step") or saved_results.get("global_step") or (state or {}).get("global_step"))

    teacher_name = teacher or run.get("teacher") or saved_results.get("teacher") or (args or {}).get(
        "teacher_model_name_or_path")
    # A path recorded at training time may not resolve from here: the run info remembers that it was local.
    teacher_local = bool(teacher_name) and teacher_name == run.get("teacher") and bool(run.get("teacher_local"))
    teacher_meta = _model_meta(teacher_name, run.get("teacher_architecture"), teacher_local) if kind == "student" else None
    dataset_meta = _dataset_meta(dataset or run.get("dataset") or saved_results.get("dataset"), eval_split)
    method_name, method_slug, terms = _method(args, teacher_meta, method)
    if kind == "teacher":
        method_name, method_slug, terms = "cross-entropy (teacher)", None, []

    architecture = config.get("zoo_name") or (config.get("architectures") or [config.get("model_type")])[0]
    repo_id = repo_id or model_name or Path(folder).resolve().name
    model_name = model_name or repo_id.split("/")[-1]
    reported, top1, top5 = _choose_reported(results, args, report)

    card_tags = ["image-classification"]
    if kind == "student" and method_slug is not None:
        card_tags += ["knowledge-distillation", *(["rrd"] if "RRD" in terms or not terms else []),
                      f"distillation:{method_slug}"]
    elif kind == "teacher":
        card_tags += ["rrd", "distillation-teacher"]
    card_tags.append("rrd_hf")
    for tag in tags or []:
        if tag not in card_tags:
            card_tags.append(tag)

    eval_results = None
    if dataset_meta is not None and top1 is not None:
        common = dict(task_type="image-classification", task_name="Image Classification",
                      dataset_type=dataset_meta["hub_id"] or dataset_meta["name"], dataset_name=dataset_meta["name"],
                      dataset_split=dataset_meta["split"])
        eval_results = [EvalResult(metric_type="accuracy", metric_value=top1, metric_name="Top-1 accuracy (%)", **common)]
        if top5 is not None:
            eval_results.append(EvalResult(metric_type="top_5_accuracy", metric_value=top5,
                                           metric_name="Top-5 accuracy (%)", **common))
    extra = {}
    if teacher_meta is not None and teacher_meta["id"]:
        extra["teacher_model"] = teacher_meta["id"]
    card_data = ModelCardData(
        license=license,
        language=language,
        library_name="transformers",
        pipeline_tag="image-classification",
        datasets=[dataset_meta["hub_id"]] if dataset_meta and dataset_meta["hub_id"] else None,
        metrics=["accuracy", "top_5_accuracy"] if eval_results else None,
        tags=card_tags,
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results,
        **extra,
    )
    processor = _read_json(os.path.join(folder, "preprocessor_config.json"))
    size = (processor or {}).get("size") or {}
    context = {
        "kind": kind,
        "repo_id": repo_id,
        "title": model_name,
        "architecture": architecture,
        "num_labels": config.get("num_labels") or len(config.get("id2label") or {}) or None,
        "num_parameters": _num_parameters(folder),
        "remote_code": bool(config.get("auto_map")),
        "processor": processor is not None,
        "image_size": size.get("height") or size.get("shortest_edge"),
        "image_mean": (processor or {}).get("image_mean"),
        "image_std": (processor or {}).get("image_std"),
        "method": method_name,
        "method_slug": method_slug,
        "terms": terms,
        "other_method": next((t for t in terms if t not in ("RRD", "KD")), None),
        "teacher": teacher_meta,
        "dataset": dataset_meta,
        "hyperparameters": _hyperparameter_rows(args, world_size, method_slug),
        "args_recorded": bool(args),
        "lr_note": architecture in _SMALL_LR_ARCHITECTURES,
        "hardware": hardware or _NOT_RECORDED,
        "world_size": world_size,
        "train_time": _format_duration(train_runtime),
        "global_step": global_step,
        "last_eval_step": results.get("last_step"),
        "results": results if results.get("num_evaluations") or results.get("best_top1") is not None else None,
        "reported": reported,
        "top1": top1,
        "top5": top5,
        "transfer": _transfer_results(folder),
        "figures": _figures(folder),
        "correlation": _read_json(os.path.join(folder, "figures", "plots.json")) or _read_json(
            os.path.join(folder, "plots.json")),
        "base_model": base_model,
        "student_init": _display_name(run["student_init"]) if run.get("student_init") else run.get("student_init"),
        "citation": RRD_CITATION,
        "not_recorded": _NOT_RECORDED,
    }
    return ModelCard.from_template(card_data, template_path=template_path(kind), ctx=context)


# ------------------------------------------------------------------------------------------------- the export


def _module_closure(folder: str, config: dict) -> list[str]:
    """The .py files `config.auto_map` names, plus every sibling they import relatively (recursively)."""
    auto_map = config.get("auto_map") or {}
    pending = []
    for reference in auto_map.values():
        for item in reference if isinstance(reference, (list, tuple)) else [reference]:
            if isinstance(item, str) and "." in item:
                pending.append(item.split("--")[-1].rsplit(".", 1)[0])
    seen: list[str] = []
    while pending:
        module = pending.pop()
        filename = f"{module}.py"
        if filename in seen:
            continue
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            raise ExportError(
                f"{folder}: config.json's auto_map needs {filename}, which is missing. Re-save the model with "
                "save_pretrained after registering it for the Auto classes (rrd_hf.models does this), or remove auto_map."
            )
        seen.append(filename)
        source = Path(path).read_text(encoding="utf-8")
        for match in _RELATIVE_IMPORT_RE.finditer(source):
            if match.group(1):
                pending.append(match.group(1))
            else:  # from . import a, b
                pending.extend(n.strip() for n in match.group(2).strip("() \n").split(",") if n.strip())
    return sorted(seen)


def _weight_files(folder: str) -> list[str]:
    index = _read_json(os.path.join(folder, "model.safetensors.index.json"))
    if index is not None:
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if missing or not all(_SHARD_RE.match(s) for s in shards):
            raise ExportError(f"{folder}: model.safetensors.index.json lists missing or oddly named shards {missing or shards}.")
        return ["model.safetensors.index.json", *shards]
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        return ["model.safetensors"]
    hint = " (it holds pytorch_model.bin: re-save with save_pretrained, which writes safetensors)" if os.path.isfile(
        os.path.join(folder, "pytorch_model.bin")) else ""
    raise ExportError(f"{folder} has no model.safetensors{hint}: pass the folder written by save_model / save_pretrained.")


def _validate_stage(stage: str, config: dict) -> None:
    """The staged folder loads as it will from the Hub: all weights used, nothing missing, the card parses."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForImageClassification

    from . import models as _models  # noqa: F401  (registers rrd_hf's architectures)

    try:
        try:
            model, info = AutoModelForImageClassification.from_pretrained(stage, output_loading_info=True)
        except ValueError:
            if not config.get("auto_map"):
                raise
            # An architecture this process does not know: load it the way the Hub will, from the staged code.
            model, info = AutoModelForImageClassification.from_pretrained(
                stage, output_loading_info=True, trust_remote_code=True)
    except Exception as error:
        raise ExportError(f"the exported weights do not load with AutoModelForImageClassification: {error}") from error
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    del model
    if problems:
        raise ExportError(f"the exported weights do not match config.json: {problems}")
    try:
        card = ModelCard.load(os.path.join(stage, "README.md"))
    except Exception as error:
        raise ExportError(f"the model card does not parse: {error}") from error
    data = card.data.to_dict()
    if data.get("pipeline_tag") != "image-classification" or data.get("library_name") != "transformers":
        raise ExportError("the model card lacks `pipeline_tag: image-classification` / `library_name: transformers`.")


def _card_from(card, folder: str, card_kwargs: dict):
    from huggingface_hub import ModelCard

    if card is None:
        return build_model_card(folder, **card_kwargs)
    if isinstance(card, ModelCard):
        return card
    if isinstance(card, (str, os.PathLike)) and os.path.isfile(card):
        return ModelCard.load(card)
    return ModelCard(str(card))


def export_student(checkpoint_dir: str | os.PathLike, export_dir: str | os.PathLike, *, card=None,
                   **card_kwargs) -> list[str]:
    """Copy the clean, publishable files of `checkpoint_dir` into the empty (or new) `export_dir`, write the card,
    validate the result, and return the relative paths written.

    `card`: a `ModelCard`, a path to a README.md, or None to build one with `build_model_card(**card_kwargs)`.
    Nothing in `checkpoint_dir` is modified.
    """
    folder, stage = os.fspath(checkpoint_dir), os.fspath(export_dir)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder: pass the output_dir of a run (or a save_pretrained folder).")
    if os.path.exists(stage) and os.listdir(stage):
        raise ExportError(f"{stage} is not empty: export into a new or empty folder.")
    config = _read_json(os.path.join(folder, "config.json"))
    if config is None:
        raise ExportError(f"{folder} has no readable config.json: pass a folder written by save_pretrained / save_model.")
    files = ["config.json", *_weight_files(folder), *_module_closure(folder, config)]
    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        files.append("preprocessor_config.json")
    else:
        logger.warning("%s has no preprocessor_config.json: `pipeline(...)` will not work on the published model.", folder)
    files += [figure["path"] for figure in _figures(folder)]
    rendered = _card_from(card, folder, card_kwargs)
    os.makedirs(stage, exist_ok=True)
    for relative in files:
        target = os.path.join(stage, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(folder, relative), target)
    rendered.save(os.path.join(stage, "README.md"))
    files.append("README.md")
    _validate_stage(stage, config)
    return sorted(files)


def _default_api():
    from huggingface_hub import HfApi

    from . import __version__

    return HfApi(library_name="rrd_hf", library_version=__version__)


def _publish_error(error: Exception, repo_id: str, folder: str) -> HubPublishError:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    intact = f"Nothing was changed locally ({folder} is intact) and no partial commit was made."
    if isinstance(error, OfflineModeIsEnabled) or "offline" in str(error).lower():
        return HubPublishError(
            f"cannot upload to {repo_id}: the Hub is offline (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE and retry, or "
            f"write the clean folder with `rrd-hf push {folder} {repo_id} --export-dir DIR` (rrd_hf.hub.export_student) "
            f"and upload it later with `hf upload {repo_id} DIR`. {intact}")
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            why = "not authorised: log in with `hf auth login` or pass a token (token= / HF_TOKEN) with write access to"
        elif status == 404:
            why = "repository or revision not found:"
        else:
            why = f"the Hub answered HTTP {status}" if status else "the Hub refused the upload"
            why += " for"
        return HubPublishError(f"upload failed, {why} {repo_id}: {error}. {intact}")
    if isinstance(error, (ConnectionError, TimeoutError, OSError)) or type(error).__module__.startswith(("httpx", "requests")):
        return HubPublishError(f"cannot reach the Hub to upload {repo_id} ({type(error).__name__}: {error}): check the "
                               f"network or HF_ENDPOINT. {intact}")
    return HubPublishError(f"upload to {repo_id} failed ({type(error).__name__}: {error}). {intact}")


def push_to_hub(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    api=None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload student distilled with rrd_hf",
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    card=None,
    **card_kwargs,
):
    """Publish the clean student of `checkpoint_dir` to `repo_id` in one commit; returns the `CommitInfo`.

    Stages and validates first (see `export_student`), then `api.create_repo(exist_ok=True)` and one
    `api.upload_folder`. `api` defaults to `huggingface_hub.HfApi()`; any object with those two methods works (tests
    pass a fake). `card_kwargs` go to `build_model_card` (teacher=, dataset=, license=, kind="teacher", ...).
    Raises `HubPublishError` (with the reason and what to do) when the Hub call fails; local files are never touched.
    """
    folder = os.fspath(checkpoint_dir)
    card_kwargs.setdefault("repo_id", repo_id)
    with tempfile.TemporaryDirectory(prefix="rrd_hf_push_") as stage:
        files = export_student(folder, stage, card=card, **card_kwargs)
        api = api if api is not None else _default_api()
        try:
            url = api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        except Exception as error:
            raise _publish_error(error, repo_id, folder) from error
        final_id = getattr(url, "repo_id", None) or repo_id
        if final_id != repo_id and card is None:  # "name" became "user/name": the card's snippets must say so
            card_kwargs["repo_id"] = final_id
            build_model_card(folder, **card_kwargs).save(os.path.join(stage, "README.md"))
        logger.info("uploading %d files to %s: %s", len(files), final_id, ", ".join(files))
        try:
            return api.upload_folder(
                repo_id=final_id, folder_path=stage, commit_message=commit_message,
                commit_description=commit_description, token=token, repo_type="model", revision=revision,
                create_pr=create_pr,
            )
        except Exception as error:
            raise _publish_error(error, final_id, folder) from error


# ------------------------------------------------------------------------------------------------- the Trainer mixin


def _dataset_name_of(dataset) -> str | None:
    """Known-dataset name of a training set (prepared `datasets.Dataset` or `InMemoryImageDataset`), if recognisable."""
    if dataset is None:
        return None
    try:
        from .data import KNOWN_DATASETS
        from .data.loading import infer_dataset_info

        names = getattr(dataset, "class_names", None)
        if names is not None:
            for info in KNOWN_DATASETS.values():
                if info.class_names is not None and tuple(names) == tuple(info.class_names):
                    return info.name
            if len(names) == 200 and all(re.fullmatch(r"n\d{8}", str(n)) for n in names):
                return "tiny-imagenet"  # its class names are WordNet ids
            return None
        if hasattr(dataset, "features"):
            info = infer_dataset_info(dataset=dataset)
            return info.name if info is not None else None
    except Exception:
        return None
    return None


def _architecture_of(model) -> str | None:
    config = getattr(model, "config", None)
    if config is None:
        return type(model).__name__ if model is not None else None
    return getattr(config, "zoo_name", None) or (getattr(config, "architectures", None) or [type(model).__name__])[0]


class HubMixin:
    """Put in front of `Trainer` (`class RRDTrainer(HubMixin, Trainer)`): honest cards and clean-student pushes.

    * `create_model_card` writes rrd_hf's card (teacher as `teacher_model`, hyper-parameters, best/last accuracy,
      hardware, training time) to `output_dir/README.md` instead of transformers' fine-tuning card.
    * `push_to_hub` saves the model, writes the card and publishes through `rrd_hf.hub.push_to_hub`: only the clean
      student goes up (no heads, memory, optimizer, `training_args.bin` or checkpoints).
    * Pushes during training (`args.push_to_hub` with `hub_strategy` every_save/checkpoint/all_checkpoints) also
      publish only the clean student of the checkpoint; resumable checkpoints are never uploaded.
    * Every save also writes `_rrd_run.json` (hardware, world size, teacher, dataset, arguments, log summary), so
      `rrd-hf push FOLDER` later gives the same card.

    `hub_api`: an `HfApi`-like object to use (tests); default `transformers.trainer.hf_api()`.
    """

    hub_api = None

    def _rrd_hub_api(self):
        if self.hub_api is not None:
            return self.hub_api
        import transformers.trainer

        return transformers.trainer.hf_api()

    def _rrd_teacher_name(self) -> str | None:
        teacher = getattr(self, "teacher", None)
        name = getattr(teacher, "name_or_path", None) or getattr(getattr(teacher, "config", None), "_name_or_path", None)
        return name or getattr(self.args, "teacher_model_name_or_path", None)

    def _rrd_run_info(self, dataset: str | None = None) -> dict:
        from .results import summarize_log_history

        world_size = getattr(getattr(self, "accelerator", None), "num_processes", None) or self.args.world_size
        history = list(self.state.log_history)
        return {
            "hardware": hardware_description(self.args.device, world_size),
            "world_size": world_size,
            "teacher": self._rrd_teacher_name(),
            "teacher_local": bool(self._rrd_teacher_name()) and os.path.isdir(self._rrd_teacher_name()),
            "teacher_architecture": _architecture_of(getattr(self, "teacher", None)),
            # "" = built from a config (random init); a path/id = the weights it started from
            "student_init": getattr(self.model, "name_or_path", None),
            "dataset": dataset or _dataset_name_of(self.train_dataset),
            "global_step": self.state.global_step,
            "epoch": self.state.epoch,
            "train_runtime": _train_runtime(history),
            "summary": summarize_log_history(history),
            "training_args": json.loads(json.dumps(self.args.to_dict(), default=str)),
        }

    def _rrd_write_run_info(self, output_dir: str, dataset: str | None = None) -> None:
        try:
            with open(os.path.join(output_dir, RUN_INFO_NAME), "w", encoding="utf-8") as handle:
                json.dump(self._rrd_run_info(dataset), handle, indent=2)
        except Exception as error:  # the card can do without it; saving must not fail for it
            logger.warning("could not write %s in %s: %s", RUN_INFO_NAME, output_dir, error)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            self._rrd_write_run_info(output_dir if output_dir is not None else self.args.output_dir)

    def _rrd_card(self, folder: str, *, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                  dataset_tags=None, dataset=None, **card_kwargs):
        info = self._rrd_run_info()
        first = lambda value: value[0] if isinstance(value, (list, tuple)) and value else value  # noqa: E731
        kwargs = dict(
            repo_id=self._rrd_repo_id(),
            model_name=model_name,
            teacher=card_kwargs.pop("teacher", None) or info["teacher"],
            dataset=first(dataset_tags) or first(dataset) or info["dataset"],
            training_args=info["training_args"],
            log_history=list(self.state.log_history),
            hardware=info["hardware"],
            world_size=info["world_size"],
            base_model=finetuned_from,
            tags=self._rrd_tags(tags),
            language=language,
        )
        if license is not None:
            kwargs["license"] = license
        kwargs.update(card_kwargs)
        return build_model_card(folder, **kwargs)

    def _rrd_tags(self, tags) -> list[str]:
        """User tags plus tags added to the model (`add_model_tags`), minus the trainer's generic ones (the card
        decides about `knowledge-distillation`/`rrd` from what the run did)."""
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        own = set(getattr(self, "_tag_names", None) or [])
        for tag in getattr(self.model, "model_tags", None) or []:
            if tag not in own and tag not in tags:
                tags.append(tag)
        return tags

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs) -> None:
        """Write rrd_hf's card to `output_dir/README.md` (process 0 only). `finetuned_from` sets `base_model` (only
        for a student initialised from that checkpoint); `dataset_tags`/`dataset` name the training set."""
        if not self.is_world_process_zero():
            return
        output_dir = self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        card = self._rrd_card(output_dir, language=language, license=license, tags=tags, model_name=model_name,
                              finetuned_from=finetuned_from, dataset_tags=dataset_tags, dataset=dataset, **kwargs)
        card.save(os.path.join(output_dir, "README.md"))
        named = dataset_tags or dataset
        self._rrd_write_run_info(output_dir, dataset=named[0] if isinstance(named, (list, tuple)) and named else named)

    def _rrd_repo_id(self) -> str:
        return getattr(self, "hub_model_id", None) or self.args.hub_model_id or Path(self.args.output_dir).absolute().name

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token: str | None = None,
                    revision: str | None = None, private: bool | None = None, **kwargs):
        """Save the model, write the card, publish the clean student of `output_dir` (see `rrd_hf.hub.push_to_hub`).

        `kwargs` go to `create_model_card` (license, tags, dataset, teacher, ...), plus `api=` for a Hub client.
        With `blocking=False` the upload runs in the Hub client's background thread and a `Future` is returned.
        """
        api = kwargs.pop("api", None) or self._rrd_hub_api()
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        kwargs.pop("model_name", None)
        self.create_model_card(model_name=self._rrd_repo_id().split("/")[-1], **kwargs)
        if hasattr(self, "_finish_current_push"):
            self._finish_current_push()
        push = dict(
            api=api, private=private if private is not None else self.args.hub_private_repo,
            token=token if token is not None else self.args.hub_token,
            revision=revision if revision is not None else self.args.hub_revision,
            commit_message=commit_message or "End of training",
            card=os.path.join(self.args.output_dir, "README.md"),
        )
        if not blocking and hasattr(api, "run_as_future"):
            return api.run_as_future(push_to_hub, self.args.output_dir, self._rrd_repo_id(), **push)
        return push_to_hub(self.args.output_dir, self._rrd_repo_id(), **push)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Checkpoint-time pushes (`args.push_to_hub`): the clean student of the checkpoint, never the checkpoint.

        Synchronous (unlike Trainer's background push): the checkpoint may be rotated away right after this returns.
        A failed push is logged and training continues."""
        from transformers.trainer_utils import HubStrategy

        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            logger.warning("hub_strategy=%s would upload resumable checkpoints (optimizer, RRD heads and memory): "
                           "rrd_hf uploads only the clean student.", self.args.hub_strategy)
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        step = self.state.global_step
        try:
            push_to_hub(checkpoint_folder, self._rrd_repo_id(), api=self._rrd_hub_api(), token=self.args.hub_token,
                        revision=self.args.hub_revision, commit_message=f"Training in progress, step {step}",
                        card=self._rrd_card(checkpoint_folder))
        except HubPublishError as error:  # training goes on; the final push will report again
            logger.warning("push of step %d failed: %s", step, error)


# ------------------------------------------------------------------------------------------------- command line


def _push(argv: list[str]) -> None:
    """`rrd-hf push CHECKPOINT REPO_ID [...]`."""
    parser = argparse.ArgumentParser(
        prog="rrd-hf push",
        description="Publish the clean student of a run folder (weights, config, model code, processor, card, figures) "
        "in one commit. The teacher, RRD heads/memory, optimizer, training_args.bin and checkpoint-* never go up.",
    )
    parser.add_argument("checkpoint", help="run output_dir or save_pretrained folder")
    parser.add_argument("repo_id", help="namespace/name of the model repo (created if missing)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo private")
    parser.add_argument("--teacher", default=None, help="Hub id of the teacher (default: what the run recorded)")
    parser.add_argument("--dataset", default=None, help="training dataset: known name or Hub id (default: recorded)")
    parser.add_argument("--eval-split", default=None, help="split the accuracies were measured on (default: the dataset's)")
    parser.add_argument("--kind", choices=sorted(_TEMPLATE_NAMES), default="student", help="card template (default student)")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--tag", action="append", default=None, help="extra card tag (repeatable)")
    parser.add_argument("--report", choices=["auto", "best", "last"], default="auto",
                        help="which evaluation goes into the model-index (default: the one of the published weights)")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN)")
    parser.add_argument("--revision", default=None, help="branch to commit to")
    parser.add_argument("--commit-message", default="Upload student distilled with rrd_hf")
    parser.add_argument("--export-dir", default=None, help="only write the validated clean folder here (no upload)")
    args = parser.parse_args(argv)
    card_kwargs = dict(repo_id=args.repo_id, teacher=args.teacher, dataset=args.dataset, eval_split=args.eval_split,
                       kind=args.kind, license=args.license, tags=args.tag, report=args.report)
    if args.export_dir:
        files = export_student(args.checkpoint, args.export_dir, **card_kwargs)
        print(json.dumps({"export_dir": args.export_dir, "files": files}, indent=2))
        return
    card_kwargs.pop("repo_id")
    info = push_to_hub(args.checkpoint, args.repo_id, private=args.private, token=args.token, revision=args.revision,
                       commit_message=args.commit_message, **card_kwargs)
    print(json.dumps({"repo_id": args.repo_id, "commit_url": str(getattr(info, "commit_url", info))}, indent=2))
