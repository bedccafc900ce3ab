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


def load_training_args(folder: str) -> dict | None:
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
