"""The clean export: an allow-list of files staged into a folder and validated before anything is published.

What goes up is an allow-list, never "the folder minus some patterns": the weights (`model.safetensors`, or the
shards of its index), `config.json`, the modeling/configuration files that `config.auto_map` needs (with their
relative imports, e.g. `_cifar_common.py`), `preprocessor_config.json`, the card `README.md` and the figures
(`*.png`, `figures/*.png`). The teacher, the projection heads and memory (`rrd_state.safetensors`), the optimizer,
`training_args.bin`/`training_args.json`, `_rrd_run.json`, `results.json`, `trainer_state.json` and `checkpoint-*`
folders therefore never leave the machine (the card carries what they say). The files are staged into a temporary
folder and validated (the weights load with `AutoModelForImageClassification` with no missing or unexpected keys,
the card parses, the required files are there) before a single `upload_folder` commit, so the Hub never sees a
half-written folder and a failed upload leaves the local files untouched. Nothing of the folder is executed on the
way: no pickle is opened and its `.py` files are imported only with the user's `trust_remote_code=True` (see
`custom_code`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from .card import build_model_card
from .custom_code import check_code_trust, module_closure, requires_remote_code, rrd_hf_model_types
from .errors import ExportError
from ..runs.record import figures, read_json

logger = logging.getLogger(__name__)

SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


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


def validate_stage(stage: str, config: dict, trust_remote_code: bool = False) -> None:
    """The staged folder loads as it will from the Hub: all weights used, nothing missing, the card parses.

    The weights load through the Auto classes this process registered (transformers' and rrd_hf's), never through
    the staged `.py` files, unless the architecture is unknown here and the user passed `trust_remote_code=True`.
    """
    from huggingface_hub import ModelCard
    from transformers import AutoModelForImageClassification

    run_code = requires_remote_code(config) and trust_remote_code
    try:
        model, info = AutoModelForImageClassification.from_pretrained(
            stage, output_loading_info=True, trust_remote_code=run_code)
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


def _inside(folder: str, relative: str) -> str:
    """The path of `relative` in `folder`, refused unless it is a regular file that resolves inside the folder
    (no absolute path, no `..`, no symbolic link to elsewhere)."""
    if os.path.isabs(relative) or ".." in relative.replace("\\", "/").split("/"):
        raise ExportError(f"{folder}: refusing to export {relative!r}: not a plain path inside the folder.")
    path = os.path.join(folder, relative)
    real, root = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root or not os.path.isfile(real) or os.path.islink(path):
        raise ExportError(f"{folder}: refusing to export {relative}: it is a link or resolves outside the folder "
                          "(only the folder's own regular files are published). Replace it by a copy of the file.")
    return path


def _code_source(relative: str, config: dict) -> str | None:
    """rrd_hf's own copy of a model-code file for rrd_hf's architectures (the folder's copy may have been edited):
    None for other architectures, whose code is the folder's."""
    if config.get("model_type") not in rrd_hf_model_types():
        return None
    import rrd_hf.models

    own = os.path.join(os.path.dirname(rrd_hf.models.__file__), relative)
    if not os.path.isfile(own):
        raise ExportError(f"config.json names the rrd_hf architecture {config.get('model_type')!r}, but its auto_map "
                          f"asks for {relative}, which is not one of rrd_hf's model files: re-save the model with "
                          "rrd_hf's save_pretrained.")
    return own


def export_student(checkpoint_dir: str | os.PathLike, export_dir: str | os.PathLike, *, card=None,
                   trust_remote_code: bool = False, **card_kwargs) -> list[str]:
    """Copy the clean, publishable files of `checkpoint_dir` into the empty (or new) `export_dir`, write the card,
    validate the result, and return the relative paths written.

    `card`: a `ModelCard`, a path to a README.md, or None to build one with `build_model_card(**card_kwargs)`.
    `trust_remote_code`: let validation import the folder's own `.py` files, which is needed only for an
    architecture that neither transformers nor rrd_hf knows (read them first); never assumed.
    Nothing in `checkpoint_dir` is modified and none of its code runs unless `trust_remote_code=True`.
    """
    folder, stage = os.fspath(checkpoint_dir), os.fspath(export_dir)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder: pass the output_dir of a run (or a save_pretrained folder).")
    if os.path.exists(stage) and os.listdir(stage):
        raise ExportError(f"{stage} is not empty: export into a new or empty folder.")
    config = read_json(os.path.join(folder, "config.json"))
    if config is None:
        raise ExportError(f"{folder} has no readable config.json: pass a folder written by save_pretrained / save_model.")
    check_code_trust(folder, config, trust_remote_code)
    code = module_closure(folder, config)
    files = ["config.json", *weight_files(folder), *code]
    if os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        files.append("preprocessor_config.json")
    else:
        logger.warning("%s has no preprocessor_config.json: `pipeline(...)` will not work on the published model.", folder)
    files += [figure["path"] for figure in figures(folder)]
    rendered = card_from(card, folder, card_kwargs)
    os.makedirs(stage, exist_ok=True)
    sources = {relative: _inside(folder, relative) for relative in files}  # every file checked before any copy
    for relative in code:
        own = _code_source(relative, config)
        if own is not None:
            with open(sources[relative], "rb") as theirs, open(own, "rb") as ours:
                if theirs.read() != ours.read():
                    logger.warning("%s differs from rrd_hf's own copy: rrd_hf's is exported.", sources[relative])
            sources[relative] = own
    for relative, source in sources.items():
        target = os.path.join(stage, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)
    rendered.save(os.path.join(stage, "README.md"))
    files.append("README.md")
    validate_stage(stage, config, trust_remote_code)
    return sorted(files)
