"""What a run recorded next to its weights, and how to read it back without trusting the folder."""

from __future__ import annotations

import glob
import json
import logging
import os
import platform
import re
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

#: Written next to the weights by `HubMixin`: what the card needs and the folder does not otherwise record
#: (hardware, world size, the teacher and dataset names). The leading underscore keeps `Trainer`'s own pushes off it.
RUN_INFO_NAME = "_rrd_run.json"
#: The training arguments as JSON, written beside `training_args.bin` (a pickle that publishing never opens).
TRAINING_ARGS_NAME = "training_args.json"


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


def read_json(path: str | os.PathLike) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def newest_trainer_state(folder: str) -> tuple[dict | None, str | None]:
    """`trainer_state.json` of the folder itself, else of its newest `checkpoint-*` (for the log history)."""
    direct = os.path.join(folder, "trainer_state.json")
    if os.path.isfile(direct):
        return read_json(direct), direct
    checkpoints = []
    for path in glob.glob(os.path.join(folder, "checkpoint-*", "trainer_state.json")):
        match = re.search(r"checkpoint-(\d+)", path)
        if match:
            checkpoints.append((int(match.group(1)), path))
    if not checkpoints:
        return None, None
    path = max(checkpoints)[1]
    return read_json(path), path


def json_safe(value):
    """`value` as plain JSON types (what `json.dumps` cannot write becomes its `str`)."""
    return json.loads(json.dumps(value, default=str))


def training_args_dict(training_args) -> dict:
    """The training arguments as a JSON-safe dict, from a `TrainingArguments`, a mapping or a JSON file's path.

    `TrainingArguments.to_dict` already replaces tokens with placeholders, so the result holds no secret.
    """
    if isinstance(training_args, (str, os.PathLike)):
        values = read_json(training_args)
        if values is None:
            raise ValueError(f"{os.fspath(training_args)} is not a readable JSON object of training arguments: pass "
                             f"the {TRAINING_ARGS_NAME} of a run (or a dict / TrainingArguments).")
        return values
    if hasattr(training_args, "to_dict"):
        return json_safe(training_args.to_dict())
    return json_safe(dict(training_args if isinstance(training_args, dict) else vars(training_args)))


def write_training_args(training_args, output_dir: str) -> None:
    """Write `training_args.json`: the arguments as data, so publishing never has to unpickle `training_args.bin`."""
    with open(os.path.join(output_dir, TRAINING_ARGS_NAME), "w", encoding="utf-8") as handle:
        json.dump(training_args_dict(training_args), handle, indent=2, sort_keys=True)


def read_training_args(folder: str) -> dict | None:
    """`training_args.json` of the folder; None (with a warning saying what to do) when only the pickle is there.

    `training_args.bin` is never read: unpickling runs whatever code the file names, and the folder being
    published is not trusted.
    """
    values = read_json(os.path.join(folder, TRAINING_ARGS_NAME))
    if values is not None:
        return values
    if os.path.isfile(os.path.join(folder, "training_args.bin")):
        logger.warning(
            "%s holds training_args.bin but no %s: rrd_hf never unpickles training_args.bin when publishing (a pickle "
            "can run arbitrary code), so the card lists the hyper-parameters as not recorded. To include them, re-save "
            "the run with rrd_hf (RRDTrainer writes %s with every save), or pass them: training_args= (a dict, "
            "TrainingArguments or JSON file) to build_model_card / push_to_hub, or "
            "`rrd-hf push --training-args FILE.json`.",
            folder, TRAINING_ARGS_NAME, TRAINING_ARGS_NAME)
    return None


def _dataset_facts(dataset, prefix: str) -> dict:
    """`<prefix>_num_samples`, `<prefix>_split` and `<prefix>_split_size` of a dataset: its number of images, the
    split it was loaded as and that split's full size (`datasets.Dataset` keeps both through `select`, so a
    subset is seen as one)."""
    from ..data.provenance import split_facts

    try:
        num_samples = len(dataset) if dataset is not None else None
    except TypeError:  # an iterable dataset has no length
        num_samples = None
    split, size = split_facts(dataset)
    return {f"{prefix}_num_samples": num_samples, f"{prefix}_split": split, f"{prefix}_split_size": size}


def evaluation_facts(dataset) -> dict:
    """What an evaluation set says about itself (a `max_eval_samples` subset is seen as one)."""
    return _dataset_facts(dataset, "eval")


def training_facts(dataset) -> dict:
    """What the training set says about itself, so that the card of a run trained on a `max_train_samples` subset
    says so (its accuracy is not the full data's)."""
    return _dataset_facts(dataset, "train")


def loss_terms_record(training_args) -> dict:
    """`loss_terms` (list of dicts) and `ce_weight` of arguments that resolve the objective (`RRDConfig.loss_terms`);
    empty for arguments that do not."""
    terms = getattr(training_args, "loss_terms", None)
    if terms is None:
        return {}
    fields = ("name", "method", "weight", "kwargs")
    return json_safe({"ce_weight": getattr(training_args, "ce_weight", None),
                      "loss_terms": [{key: getattr(term, key) for key in fields} for term in terms]})


def runtime_from_logs(log_history: Iterable[dict] | None) -> float | None:
    for log in reversed(list(log_history or [])):
        if "train_runtime" in log:
            return float(log["train_runtime"])
    return None


def figures(folder: str) -> list[dict]:
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


def transfer_results(folder: str) -> list[dict]:
    """Linear-probe results saved as `probe*.json` by `rrd-hf probe --output`."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "probe*.json"))):
        result = read_json(path)
        if result and "last_top1" in result:
            out.append(result)
    return out
