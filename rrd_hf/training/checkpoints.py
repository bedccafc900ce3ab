"""Checkpoints that are complete or invisible, and output folders that are never silently overwritten.

A process killed while `Trainer` writes `checkpoint-N` leaves a partial folder that transformers would happily try
to resume from. After every file of a checkpoint is written (by every process), rrd_hf writes a marker,
`checkpoint_complete.json`, listing the files and their sizes, atomically (temporary file + rename). A checkpoint
is complete when its marker is there and every listed file still has its size; checkpoints of versions that wrote
no marker count as complete when their `trainer_state.json` (the last file Trainer writes) parses. Resuming with
`"latest"` (or `True`) picks the newest complete checkpoint and says which incomplete ones it skipped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = ["COMPLETE_MARKER", "DISTILL_STATE_NAME", "LEGACY_STATE_NAME", "mark_complete", "is_complete",
           "incomplete_reason", "list_checkpoints", "latest_complete_checkpoint", "resolve_resume", "finished_outputs",
           "check_output_dir", "rotate_checkpoints", "save_method_state", "load_method_state"]

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
#: File inside each `checkpoint-*` folder with every method's state (heads, memories; never in the final model).
DISTILL_STATE_NAME = "distill_state.safetensors"
#: Its name before every term was a method; still read when resuming.
LEGACY_STATE_NAME = "rrd_state.safetensors"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: Files a finished run leaves in output_dir (save_model's folder): their presence means "a model lives here".
_FINISHED_FILES = ("model.safetensors", "model.safetensors.index.json", "results.json")


def _files_with_sizes(folder: str) -> dict[str, int]:
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name == COMPLETE_MARKER or name.endswith(".tmp"):
                continue
            path = os.path.join(root, name)
            sizes[os.path.relpath(path, folder)] = os.path.getsize(path)
    return sizes


def mark_complete(folder: str, step: int) -> None:
    """Write the marker of a fully written checkpoint (call once every process has finished writing)."""
    for root, _, names in os.walk(folder):  # the files' contents reach the disk before the marker does
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
    marker = os.path.join(folder, COMPLETE_MARKER)
    with open(marker + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"step": step, "files": _files_with_sizes(folder)}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(marker + ".tmp", marker)


def incomplete_reason(folder: str) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is."""
    marker = os.path.join(folder, COMPLETE_MARKER)
    if os.path.isfile(marker):
        try:
            with open(marker, encoding="utf-8") as handle:
                files = json.load(handle)["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"its {COMPLETE_MARKER} is unreadable"
        missing = [name for name in files if not os.path.isfile(os.path.join(folder, name))]
        changed = [name for name, size in files.items()
                   if name not in missing and os.path.getsize(os.path.join(folder, name)) != size]
        if missing or changed:
            return "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                           changed and f"changed since it was written: {', '.join(changed)}"]))
        return None
    try:  # written before markers existed: Trainer writes trainer_state.json last
        with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as handle:
            json.load(handle)
        return None
    except (OSError, ValueError):
        return f"it has no {COMPLETE_MARKER} and no readable trainer_state.json (interrupted while saving)"


def is_complete(folder: str) -> bool:
    return incomplete_reason(folder) is None


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """`(step, path)` of every `checkpoint-N` folder, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint of `output_dir`, warning about newer incomplete ones; None when there is none."""
    skipped = []
    for _, path in reversed(list_checkpoints(output_dir)):
        if is_complete(path):
            if skipped:
                logger.warning("skipped incomplete checkpoints (interrupted while saving?): %s; resuming from %s.",
                               ", ".join(skipped), path)
            return path
        skipped.append(path)
    if skipped:
        logger.warning("no complete checkpoint in %s (incomplete: %s).", output_dir, ", ".join(skipped))
    return None


def finished_outputs(output_dir: str) -> list[str]:
    """What in `output_dir` a new run would overwrite or mix with: a saved model, results, complete checkpoints
    (half-written ones hold nothing to resume from, and a new run writes over them)."""
    if not os.path.isdir(output_dir):
        return []
    found = [name for name in _FINISHED_FILES if os.path.exists(os.path.join(output_dir, name))]
    checkpoints = [os.path.basename(path) for _, path in list_checkpoints(output_dir) if is_complete(path)]
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint folder(s) ({checkpoints[-1]}, ...)")
    return found


def resolve_resume(value, output_dir: str) -> str | None:
    """The checkpoint folder a `resume_from_checkpoint` value names: `"latest"`/`True` the newest complete one (None
    when there is none yet: a new run), a path that folder once it is checked to be complete."""
    if value in (None, False, ""):
        return None
    if value is True or value == "latest":
        path = latest_complete_checkpoint(output_dir)
        if path is None:
            logger.info("no complete checkpoint in %s: starting a new run.", output_dir)
        return path
    path = os.fspath(value)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"resume_from_checkpoint={path!r} is not a folder: give a checkpoint-N folder of this "
                                "run, or 'latest' for the newest complete one.")
    reason = incomplete_reason(path)
    if reason is not None:
        raise ValueError(f"{path} is not a complete checkpoint ({reason}): resume from 'latest', which picks the newest "
                         "complete checkpoint.")
    return path


def check_output_dir(output_dir: str, overwrite: bool, remove_checkpoints: bool = True) -> None:
    """Refuse to start a new run where a finished one lives, unless `overwrite`; then old checkpoints go (they must
    not mix with the new run's). Call only for runs that do not resume."""
    found = finished_outputs(output_dir)
    if not found:
        return
    if not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds a run ({'; '.join(found)}). Resume it with resume_from_checkpoint='latest' "
            "(--resume_from_checkpoint latest), choose another output_dir, or pass overwrite_output_dir=True "
            "(--overwrite_output_dir) to replace it."
        )
    if remove_checkpoints:
        for _, path in list_checkpoints(output_dir):
            shutil.rmtree(path)
        logger.warning("overwrite_output_dir: replacing the run in %s (%s).", output_dir, "; ".join(found))


def rotate_checkpoints(run_dir: str, limit: int | None, best: str | None = None) -> None:
    """Keep the newest `limit` complete checkpoints (and `best`); delete older ones and partial ones older than the
    newest complete checkpoint (left by an interrupted save)."""
    checkpoints = list_checkpoints(run_dir)
    complete = [path for _, path in checkpoints if is_complete(path)]
    if not complete:
        return
    newest_step = max(step for step, path in checkpoints if path == complete[-1])
    keep = set(complete[-limit:]) if limit else set(complete)
    if best:
        keep.add(os.path.join(run_dir, os.path.basename(best)))
    for step, path in checkpoints:
        if (path in complete and path not in keep) or (path not in complete and step < newest_step):
            logger.info("deleting checkpoint %s (save_total_limit=%s)", path, limit)
            shutil.rmtree(path, ignore_errors=True)


def save_method_state(methods: nn.Module, folder: str) -> None:
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in methods.state_dict().items()}
    save_file(state, os.path.join(folder, DISTILL_STATE_NAME), metadata={"format": "pt"})


def load_method_state(methods: nn.Module, folder: str, device, objective: str) -> None:
    """Restore the methods' state from a checkpoint folder (the current file name or the legacy one)."""
    path = next((os.path.join(folder, name) for name in (DISTILL_STATE_NAME, LEGACY_STATE_NAME)
                 if os.path.isfile(os.path.join(folder, name))), None)
    if path is None:
        raise FileNotFoundError(
            f"{folder} has no {DISTILL_STATE_NAME}: it was not written by RRDTrainer with these losses, so the methods' "
            "heads and memories cannot be restored and the resumed run would differ from an uninterrupted one. Resume "
            "from a checkpoint of this run, or start a new run (resume_from_checkpoint=None)."
        )
    try:
        state = load_file(path, device=str(device))
    except SafetensorError as error:
        raise OSError(f"{path} cannot be read ({error}): the file is truncated or corrupt. Resume from another "
                      "checkpoint ('latest' skips incomplete ones).") from error
    try:
        methods.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not match this run's objective ({objective}; options, embedding sizes, memory sizes or the "
            f"feature sizes changed): {str(error).rstrip('.')}. Resume with the settings the checkpoint was written with, or start a "
            "new run in another output_dir."
        ) from error
