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

__all__ = ["COMPLETE_MARKER", "mark_complete", "is_complete", "incomplete_reason", "list_checkpoints", "latest_complete_checkpoint",
           "finished_outputs"]

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
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
    """What in `output_dir` a new run would overwrite or mix with: a saved model, results, checkpoints."""
    if not os.path.isdir(output_dir):
        return []
    found = [name for name in _FINISHED_FILES if os.path.exists(os.path.join(output_dir, name))]
    checkpoints = [os.path.basename(path) for _, path in list_checkpoints(output_dir)]
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint folder(s) ({checkpoints[-1]}, ...)")
    return found
