"""The clean export: an allow-list of files staged into a folder and validated before anything is published.

What goes up is an allow-list, never "the folder minus some patterns": the weights (`model.safetensors`, or the
shards of its index), `config.json`, the modeling/configuration files that `config.auto_map` needs (with their
relative imports, e.g. `_cifar_common.py`), `preprocessor_config.json`, the card `README.md` and the figures
(`*.png`, `figures/*.png`). The teacher, the projection heads and memory (`rrd_state.safetensors`), the optimizer,
`training_args.bin`, `trainer_state.json` and `checkpoint-*` folders therefore never leave the machine. The files
are staged into a temporary folder and validated (the weights load with `AutoModelForImageClassification` with no
missing or unexpected keys, the card parses, the required files are there) before a single `upload_folder` commit,
so the Hub never sees a half-written folder and a failed upload leaves the local files untouched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from .card import build_model_card
from .errors import ExportError
from .record import figures, read_json

logger = logging.getLogger(__name__)

SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
RELATIVE_IMPORT_RE = re.compile(r"^\s*from\s+\.(\w*)\s+import\s+([\w\s,()]+)", re.MULTILINE)


def module_closure(folder: str, config: dict) -> list[str]:
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
        for match in RELATIVE_IMPORT_RE.finditer(source):
            if match.group(1):
                pending.append(match.group(1))
            else:  # from . import a, b
                pending.extend(n.strip() for n in match.group(2).strip("() \n").split(",") if n.strip())
    return sorted(seen)


def weight_files(folder: str) -> list[str]:
    index = read_json(os.path.join(folder, "model.safetensors.index.json"))
    if index is not None:
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if missing or not all(SHARD_RE.match(s) for s in shards):
            raise ExportError(f"{folder}: model.safetensors.index.json lists missing or oddly named shards {missing or shards}.")
        return ["model.safetensors.index.json", *shards]
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        return ["model.safetensors"]
    hint = " (it holds pytorch_model.bin: re-save with save_pretrained, which writes safetensors)" if os.path.isfile(
        os.path.join(folder, "pytorch_model.bin")) else ""
    raise ExportError(f"{folder} has no model.safetensors{hint}: pass the folder written by save_model / save_pretrained.")


def validate_stage(stage: str, config: dict) -> None:
    """The staged folder loads as it will from the Hub: all weights used, nothing missing, the card parses."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForImageClassification

    import rrd_hf.models  # noqa: F401  (registers rrd_hf's architectures)

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


def card_from(card, folder: str, card_kwargs: dict):
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
    config = read_json(os.path.join(folder, "config.json"))
    if config is None:
        raise ExportError(f"{folder} has no readable config.json: pass a folder written by save_pretrained / save_model.")
    files = ["config.json", *weight_files(folder), *module_closure(folder, config)]
    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        files.append("preprocessor_config.json")
    else:
        logger.warning("%s has no preprocessor_config.json: `pipeline(...)` will not work on the published model.", folder)
    files += [figure["path"] for figure in figures(folder)]
    rendered = card_from(card, folder, card_kwargs)
    os.makedirs(stage, exist_ok=True)
    for relative in files:
        target = os.path.join(stage, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(folder, relative), target)
    rendered.save(os.path.join(stage, "README.md"))
    files.append("README.md")
    validate_stage(stage, config)
    return sorted(files)
