"""Checkpoints that are complete or invisible, output folders that are never silently overwritten or shared, and
resumes that continue the run they claim to continue.

A process killed while `Trainer` writes `checkpoint-N` leaves a partial folder that transformers would happily try
to resume from. After every file of a checkpoint is written (by every process), rrd_hf writes a marker,
`checkpoint_complete.json`, listing the files and their sizes, atomically (temporary file + rename). A checkpoint
is complete when its marker is there and every listed file still has its size; checkpoints of versions that wrote
no marker count as complete when their `trainer_state.json` (the last file Trainer writes) parses and the files a
resume reads are all there (a folder half-deleted by an interrupted rotation is not). Rotation first renames a
folder out of the `checkpoint-N` namespace and only then deletes it, so a kill during the deletion leaves nothing
that looks like a checkpoint. Resuming with `"latest"` (or `True`) picks the newest complete checkpoint and says
which incomplete ones it skipped.

A complete checkpoint can still be unusable: a file changed after it was written, or a folder from elsewhere that
holds a pickle naming code. Loading it then fails with one message that names the file and the checkpoint to
resume from instead (`CheckpointError`), never with a traceback that suggests unpickling it.

One run at a time writes into an output folder: the main process holds an exclusive `flock` on
`output_dir/.rrd_hf.lock` for the run's life. The operating system drops the lock when the process ends, however it
ends, so a killed run never blocks the next one. A resume is compared with what the checkpoint was made with
(`training_args.json`, and `run_arguments.json` for what the command line adds: data, student, teacher), because the
files written at the end record only the new values. Overwriting a run first moves its outputs into
`output_dir/.replaced-<time>/`, so an interrupted new run never leaves the old model looking like its own.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import re
import shutil
import socket

import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = ["COMPLETE_MARKER", "DISTILL_STATE_NAME", "LEGACY_STATE_NAME", "LOCK_NAME", "REPLACED_PREFIX",
           "RUN_ARGUMENTS_NAME", "CheckpointError", "OutputDirBusyError", "ResumeSettingsError", "mark_complete",
           "is_complete", "incomplete_reason", "list_checkpoints", "latest_complete_checkpoint", "resolve_resume",
           "finished_outputs", "check_output_dir", "rotate_checkpoints", "save_method_state", "load_method_state",
           "output_dir_lock", "move_outputs_aside", "safetensors_problem", "final_model_problem",
           "read_trainer_state", "finished_results", "resume_changes", "check_resume_settings",
           "write_run_arguments", "run_record_values", "resolved_path", "checkpoint_error", "resume_hint"]

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
#: File inside each `checkpoint-*` folder with every method's state (heads, memories; never in the final model).
DISTILL_STATE_NAME = "distill_state.safetensors"
#: Its name before every term was a method; still read when resuming.
LEGACY_STATE_NAME = "rrd_state.safetensors"
#: The lock file of a run in progress (removed when the run ends; a stale one left by a killed run holds no lock).
LOCK_NAME = ".rrd_hf.lock"
#: Folder (inside output_dir) the outputs of a run replaced with overwrite_output_dir are moved into.
REPLACED_PREFIX = ".replaced-"
#: What the command line trains with beyond the training arguments (data, student, teacher), in every checkpoint.
RUN_ARGUMENTS_NAME = "run_arguments.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_DELETING_PREFIX = ".deleting-"
_SAVING_PREFIX = ".saving-"
#: Files a finished run leaves in output_dir (save_model's folder): their presence means "a model lives here".
_FINISHED_FILES = ("model.safetensors", "model.safetensors.index.json", "results.json")
#: What a run writes at the top of output_dir (moved aside, with its checkpoints, when the run is overwritten).
_RUN_OUTPUT_FILES = frozenset({
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
    "config.json", "generation_config.json", "preprocessor_config.json", "README.md", "results.json", "_rrd_run.json",
    "training_args.json", "training_args.bin", "trainer_state.json", "all_results.json", "train_results.json",
    "eval_results.json", RUN_ARGUMENTS_NAME, "plots.json", "figures", "runs",
})
_RUN_OUTPUT_RE = re.compile(r"^(checkpoint-\d+|model-\d{5}-of-\d{5}\.safetensors|pytorch_model-\d{5}-of-\d{5}\.bin|"
                            r"probe.*\.json|.*\.png)$")
#: Files a resume reads: a checkpoint without a marker (written before markers existed) must hold them all.
_RESUME_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (corrupt, changed since it was written, or holding code)."""


class ResumeSettingsError(ValueError):
    """A resume whose settings differ from those the checkpoint was trained with."""


class OutputDirBusyError(OSError):
    """Another run holds the output folder."""


def _files_with_sizes(folder: str) -> dict[str, int]:
    sizes = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(_SAVING_PREFIX)]
        for name in names:
            if name == COMPLETE_MARKER or name.endswith(".tmp"):
                continue
            path = os.path.join(root, name)
            sizes[os.path.relpath(path, folder)] = os.path.getsize(path)
    return sizes


def _fsync_folder(folder: str) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:  # some filesystems refuse fsync on folders
        pass
    finally:
        os.close(handle)


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


def _legacy_missing(folder: str) -> list[str]:
    """What a resume reads and a checkpoint without a marker lacks (half-deleted, or interrupted while saving)."""
    names = set(os.listdir(folder))
    missing = [name for name in _RESUME_FILES if name not in names]
    if not names & set(_WEIGHT_FILES):
        missing.append("model.safetensors")
    if not any(name.startswith("rng_state") and name.endswith(".pth") for name in names):
        missing.append("rng_state.pth")
    return missing


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
    except (OSError, ValueError):
        return f"it has no {COMPLETE_MARKER} and no readable trainer_state.json (interrupted while saving)"
    missing = _legacy_missing(folder)
    if missing:
        return (f"it has no {COMPLETE_MARKER} and lacks {', '.join(missing)} (partly deleted by an interrupted "
                "rotation of old checkpoints, or interrupted while saving)")
    return None


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
        reason = incomplete_reason(path)
        if reason is None:
            if skipped:
                logger.warning("skipped incomplete checkpoints: %s; resuming from %s.", "; ".join(skipped), path)
            return path
        skipped.append(f"{path} ({reason})")
    if skipped:
        logger.warning("no complete checkpoint in %s (incomplete: %s).", output_dir, "; ".join(skipped))
    return None


# ------------------------------------------------------------------------------------------------ reading them


def safetensors_problem(path: str) -> str | None:
    """Why the safetensors file at `path` cannot be loaded whole (truncated, corrupt header), or None.

    Reads the header only: the format says the file is exactly its 8-byte length, the JSON header and the tensors
    the header indexes, so a truncated file shows without reading the tensors."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"truncated to {size} bytes"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return "truncated, or its header is corrupt (the header runs past the end of the file)"
            header = json.loads(handle.read(length))
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        return f"its header is corrupt ({type(error).__name__})"
    if 8 + length + end > size:
        return f"truncated ({size} of {8 + length + end} bytes)"
    if 8 + length + end < size:
        return "corrupt (bytes past the tensors its header lists)"
    return None


def final_model_problem(folder: str) -> str | None:
    """Why the model saved in `folder` (save_model's files) cannot be loaded, or None; "missing" when there is none."""
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "model.safetensors.index.json is unreadable"
        for shard in shards:
            problem = safetensors_problem(os.path.join(folder, shard))
            if problem:
                return f"{shard}: {problem}"
        return None
    return safetensors_problem(os.path.join(folder, "model.safetensors"))


def read_trainer_state(checkpoint: str) -> dict:
    """`trainer_state.json` of a checkpoint, refused with the file named when it is not what Trainer writes."""
    path = os.path.join(checkpoint, "trainer_state.json")
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            raise ValueError("it is not a trainer state: no integer global_step")
        from transformers import TrainerState

        TrainerState(**state)  # what Trainer will build from it
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path} cannot be read ({_first_line(error)}): the file was changed or damaged after the checkpoint was "
            f"written, so Trainer cannot resume from it. {resume_hint(checkpoint)}") from error
    return state


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__).rstrip(".")


def resume_hint(checkpoint: str) -> str:
    """What to resume from instead of the unusable `checkpoint` (the complete checkpoints beside it, newest first)."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    others = [path for _, path in reversed(list_checkpoints(folder))
              if os.path.abspath(path) != os.path.abspath(checkpoint) and is_complete(path)]
    if others:
        return (f"Resume from another checkpoint: --resume_from_checkpoint {others[0]} (resume_from_checkpoint="
                f"'{others[0]}'), or move {checkpoint} out of {folder} so that 'latest' picks {os.path.basename(others[0])}.")
    return (f"There is no other complete checkpoint in {folder}: start a new run (--overwrite_output_dir moves the "
            "old files aside) or resume from a copy of this checkpoint that is intact.")


def checkpoint_error(checkpoint: str, name: str, error: BaseException) -> CheckpointError:
    """The one-message error for a file of a complete checkpoint that fails to load: corrupt, or holding code."""
    import pickle

    path = os.path.join(checkpoint, name)
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in text or "Unsupported global" in text:
        found = re.search(r"(?:Unsupported global|GLOBAL)[:\s]+(?:GLOBAL\s+)?([\w.]+)", text)
        what = f" (it names {found.group(1)})" if found else ""
        return CheckpointError(
            f"{path} is not a plain tensor file: it is a pickle that refers to code{what}, so it is not trusted and was "
            "not loaded (rrd_hf loads checkpoints as data only and never runs code from them). The checkpoint did not "
            f"come from this run as written. {resume_hint(checkpoint)}")
    return CheckpointError(
        f"{path} cannot be loaded ({_first_line(error)}): the file was damaged after its checkpoint was written. "
        f"{resume_hint(checkpoint)}")


# ------------------------------------------------------------------------------------------------ resuming


def resolve_resume(value, output_dir: str) -> str | None:
    """The checkpoint folder a `resume_from_checkpoint` value names: `"latest"`/`True` the newest complete one (None
    when there is none yet: a new run), a path that folder once it is checked to be complete. Its
    `trainer_state.json` is read here, so a damaged one is named before anything is loaded."""
    if value in (None, False, ""):
        return None
    if value is True or value == "latest":
        path = latest_complete_checkpoint(output_dir)
        if path is None:
            logger.info("no complete checkpoint in %s: starting a new run.", output_dir)
            return None
    else:
        path = os.fspath(value)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"resume_from_checkpoint={path!r} is not a folder: give a checkpoint-N folder of "
                                    "this run, or 'latest' for the newest complete one.")
        reason = incomplete_reason(path)
        if reason is not None:
            raise ValueError(f"{path} is not a complete checkpoint ({reason}): resume from 'latest', which picks the "
                             "newest complete checkpoint.")
    read_trainer_state(path)
    return path


def resolved_path(value):
    """A path-like setting as the absolute path it names when it exists here (so `./data` and `/abs/data` compare
    equal); anything else unchanged."""
    if isinstance(value, str) and value and os.path.exists(value):
        return os.path.realpath(value)
    return value


def run_record_values(values: dict) -> dict:
    """Data or model arguments as a checkpoint records them: path-valued ones as the absolute folders they name."""
    return {key: resolved_path(value) if key in _PATH_FIELDS else value for key, value in values.items()}


def write_run_arguments(checkpoint: str, values: dict) -> None:
    """Record in a checkpoint what the run trains with beyond its training arguments, atomically."""
    path = os.path.join(checkpoint, RUN_ARGUMENTS_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2, sort_keys=True, default=str)
    os.replace(path + ".tmp", path)


#: Data and model arguments whose paths are compared as the folders they name.
_PATH_FIELDS = frozenset({"dataset", "data_dir", "student", "teacher_model_name_or_path"})
#: Fields that say which run this is: they can never change on resume (a different model, data, objective, seed or
#: batch would be trained partly with each). The objective's fields (`OBJECTIVE_FIELDS`) are added below.
RESUME_FIXED = frozenset({
    "seed", "data_seed", "teacher_model_name_or_path", "student", "student_init_kwargs",
    "dataset", "data_dir", "dataset_config", "train_split", "max_train_samples", "image_size", "image_column",
    "label_column", "per_device_train_batch_size", "gradient_accumulation_steps", "dataloader_drop_last",
    "train_sampling_strategy",
})


def _resume_fixed() -> frozenset:
    from ..methods.objective import OBJECTIVE_FIELDS

    return RESUME_FIXED | OBJECTIVE_FIELDS


def _resume_ignored() -> frozenset:
    """Settings a resume may change freely: where and how often things are logged or saved, devices and loader
    processes, how the images are read (both data paths give the same images), how long the run is (resuming to
    train longer is what resuming is for) and when it is evaluated (evaluation does not change the training)."""
    from ..runs.results import NOT_CONFIGURATION

    return frozenset((NOT_CONFIGURATION | {
        "data_pipeline", "in_memory_device", "decoded_cache",
        "max_steps", "num_train_epochs", "eval_strategy", "eval_steps", "eval_delay", "eval_on_start",
        "per_device_eval_batch_size", "overwrite_output_dir",
    }) - {"seed", "data_seed", "teacher_model_name_or_path"})


def _comparable(key: str, value):
    value = resolved_path(value) if key in _PATH_FIELDS else value
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def recorded_settings(checkpoint: str) -> dict:
    """What `checkpoint` was trained with: its training arguments and the run arguments of the command line."""
    from ..runs.record import TRAINING_ARGS_NAME, read_json

    recorded = dict(read_json(os.path.join(checkpoint, TRAINING_ARGS_NAME)) or {})
    run = read_json(os.path.join(checkpoint, RUN_ARGUMENTS_NAME)) or {}
    for group in ("model_args", "data_args"):
        recorded.update(run.get(group) or {})
    if run.get("teacher") is not None:
        recorded["teacher_model_name_or_path"] = run["teacher"]
    return recorded


def resume_changes(checkpoint: str, current: dict) -> dict[str, tuple]:
    """`{field: (value in the checkpoint, value now)}` for every setting that changes the training; settings the
    checkpoint did not record (older versions, plain Trainer checkpoints) are not compared."""
    recorded = recorded_settings(checkpoint)
    ignored = _resume_ignored()
    changes = {}
    for key, new in current.items():
        if key in ignored or key not in recorded:
            continue
        old = recorded[key]
        if _comparable(key, old) != _comparable(key, new):
            changes[key] = (old, new)
    return changes


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if isinstance(value, str) or len(text) <= 80 else text[:77] + "..."  # a path is shown whole


def check_resume_settings(checkpoint: str, current: dict, allow=(), log: bool = True) -> dict[str, tuple]:
    """Refuse to resume `checkpoint` with settings that change the training, naming each difference.

    The files a run writes at its end (results.json, training_args.json, the card) record the settings of the last
    process only, so a resume with another seed, learning rate or data would produce a model trained partly with
    each and recorded as trained with the new ones. `allow`: field names (or "all") whose change is accepted;
    `RESUME_FIXED` fields and the objective's never are. Returns the accepted changes (to record with the results),
    said in the log unless `log` is False (a caller that checks early, before the trainer checks again)."""
    changes = resume_changes(checkpoint, current)
    if not changes:
        return {}
    if isinstance(allow, str):
        allow = [name.strip() for name in allow.split(",")]
    allow = {name for name in (allow or ()) if name}
    fixed = [key for key in changes if key in _resume_fixed()]
    refused = [key for key in changes if key in fixed or not ("all" in allow or key in allow)]
    if refused:
        listed = ", ".join(f"{key} {_show(old)} -> {_show(new)}" for key, (old, new) in changes.items())
        allowable = [key for key in refused if key not in fixed]
        advice = "Resume with the checkpoint's settings, or start a new run in another output_dir"
        if allowable:
            advice += (f", or accept the change with --allow_resume_changes {','.join(allowable)} "
                       f"(train(..., allow_resume_changes=[{', '.join(map(repr, allowable))}]))")
        if fixed:
            advice += f" ({', '.join(fixed)} cannot change on resume: they define the run)"
        raise ResumeSettingsError(
            f"{checkpoint} was trained with other settings: {listed}. A resumed run would be trained partly with each, "
            f"while results.json, training_args.json and the model card record only the new values. {advice}.")
    if log:
        logger.warning("resuming %s with changed settings (accepted): %s; kept as RRDTrainer.resume_changes and, from "
                       "the command line, in results.json's resume_changes.",
                       checkpoint, ", ".join(f"{key} {_show(old)} -> {_show(new)}" for key, (old, new) in changes.items()))
    return changes


def finished_results(output_dir: str, max_steps: int, num_train_epochs: float) -> dict | None:
    """`results.json` of the run in `output_dir` when that run is finished (it reached `max_steps`, or
    `num_train_epochs` when max_steps is not set, and its final model is intact), else None."""
    from ..runs.record import RUN_INFO_NAME, read_json

    results = read_json(os.path.join(output_dir, "results.json"))
    if not results or not isinstance(results.get("global_step"), int) or final_model_problem(output_dir):
        return None
    step = results["global_step"]
    if any(checkpoint_step > step for checkpoint_step, path in list_checkpoints(output_dir) if is_complete(path)):
        return None  # resumed past its last final save, then interrupted
    if max_steps and max_steps > 0:
        return results if step >= max_steps else None
    epoch = (read_json(os.path.join(output_dir, RUN_INFO_NAME)) or {}).get("epoch")
    return results if isinstance(epoch, (int, float)) and epoch >= num_train_epochs - 1e-6 else None


# ------------------------------------------------------------------------------------------------ output folders


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


def _is_run_output(name: str) -> bool:
    return name in _RUN_OUTPUT_FILES or bool(_RUN_OUTPUT_RE.match(name))


def move_outputs_aside(output_dir: str) -> str | None:
    """Move what a run wrote in `output_dir` (model, results, records, checkpoints) into a new
    `output_dir/.replaced-<UTC time>/` and return that folder; None when there was nothing to move.

    Moving instead of deleting keeps the old run until the user deletes it; moving instead of overwriting in place
    means a new run killed before its final save leaves no old model beside its own checkpoints."""
    if not os.path.isdir(output_dir):
        return None
    names = sorted(name for name in os.listdir(output_dir) if _is_run_output(name))
    if not names:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target, n = os.path.join(output_dir, REPLACED_PREFIX + stamp), 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(output_dir, f"{REPLACED_PREFIX}{stamp}-{n}")
    os.makedirs(target)
    for name in names:
        os.replace(os.path.join(output_dir, name), os.path.join(target, name))
    _fsync_folder(output_dir)
    return target


def _unusable_final_model(output_dir: str) -> str | None:
    """Why the final model of `output_dir` cannot be loaded; None when it is fine or there is none."""
    if not any(os.path.exists(os.path.join(output_dir, name)) for name in _FINISHED_FILES[:2]):
        return None
    return final_model_problem(output_dir)


def check_output_dir(output_dir: str, overwrite: bool, replace: bool = True, resuming: bool = False) -> str | None:
    """Refuse to start a new run where a run lives, unless `overwrite`; then (with `replace`) its outputs are moved
    into `output_dir/.replaced-<time>/`, whose path is returned. Call only for runs that do not resume; `resuming`
    says that a resume was asked for and found no checkpoint, which changes the advice."""
    found = finished_outputs(output_dir)
    if not found:
        return None
    if not overwrite:
        problem = _unusable_final_model(output_dir)
        has_checkpoints = any(is_complete(path) for _, path in list_checkpoints(output_dir))
        if problem is not None and not has_checkpoints:
            raise FileExistsError(
                f"{output_dir} holds a model.safetensors that cannot be loaded ({problem}: its final save was "
                "interrupted) and no complete checkpoint, so the run can be neither resumed nor completed. Train it "
                "again with --overwrite_output_dir (overwrite_output_dir=True; the old files are moved into "
                f"{output_dir}/{REPLACED_PREFIX}<time>/), or choose another output_dir.")
        if resuming:
            raise FileExistsError(
                f"resume_from_checkpoint='latest' found no complete checkpoint in {output_dir}, which holds a finished "
                f"run ({'; '.join(found)}): there is nothing to resume. To train again choose another output_dir, or "
                "pass --overwrite_output_dir (overwrite_output_dir=True) to replace it.")
        raise FileExistsError(
            f"{output_dir} already holds a run ({'; '.join(found)}). Resume it with resume_from_checkpoint='latest' "
            "(--resume_from_checkpoint latest), choose another output_dir, or pass overwrite_output_dir=True "
            "(--overwrite_output_dir) to replace it."
        )
    if not replace:
        return None
    target = move_outputs_aside(output_dir)
    if target is not None:
        logger.warning("overwrite_output_dir: the previous run in %s (%s) was moved into %s; delete that folder when "
                       "you no longer need it.", output_dir, "; ".join(found), target)
    return target


def rotate_checkpoints(run_dir: str, limit: int | None, best: str | None = None) -> None:
    """Keep the newest `limit` complete checkpoints (and `best`); delete older ones and partial ones older than the
    newest complete checkpoint (left by an interrupted save).

    Each folder is first renamed out of the `checkpoint-N` namespace, then deleted: a kill during the deletion
    leaves a hidden `.deleting-*` folder (removed by the next rotation), never a half-deleted checkpoint."""
    for name in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
        if name.startswith(_DELETING_PREFIX):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
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
            doomed = os.path.join(run_dir, _DELETING_PREFIX + os.path.basename(path))
            try:
                os.replace(path, doomed)
            except OSError:
                doomed = path
            shutil.rmtree(doomed, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the lock


_HELD: dict[str, list] = {}  # realpath of output_dir -> [file descriptor or None, depth, created the folder]


def _holder(handle: int) -> str:
    try:
        os.lseek(handle, 0, os.SEEK_SET)
        info = json.loads(os.read(handle, 4096).decode() or "{}")
        return f" (pid {info['pid']} on {info['host']}, started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _acquire(output_dir: str) -> str:
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    key = os.path.realpath(output_dir)
    if key in _HELD:  # this process already runs there (the command holds it, then RRDTrainer.train asks again)
        _HELD[key][1] += 1
        return key
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock
        _HELD[key] = [None, 1, created]
        return key
    path = os.path.join(key, LOCK_NAME)
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a refused run removed the folder it had created: make it again
            os.makedirs(key, exist_ok=True)
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            os.close(handle)
            busy = OutputDirBusyError(
                f"{output_dir} is in use by another run{holder}: two runs in one output_dir would mix their "
                "checkpoints and overwrite each other's model. Wait for that run to end, or choose another output_dir.")
            busy.errno = errno.EBUSY
            raise busy from None
        except OSError as error:  # a filesystem without locks (some network mounts)
            os.close(handle)
            logger.warning("could not lock %s (%s): nothing stops another run from writing into it at the same time.",
                           output_dir, error)
            _HELD[key] = [None, 1, created]
            return key
        try:  # the previous holder removes the file when it ends: the lock must be on the file that is there now
            same = os.path.samestat(os.fstat(handle), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    os.ftruncate(handle, 0)
    os.write(handle, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode())
    _HELD[key] = [handle, 1, created]
    return key


def _release(key: str) -> None:
    held = _HELD[key]
    held[1] -= 1
    if held[1]:
        return
    del _HELD[key]
    if held[0] is not None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(key, LOCK_NAME))  # while still locked: a waiting opener then sees another file
        os.close(held[0])
    if held[2]:  # a run refused before writing anything leaves no empty folder behind
        with contextlib.suppress(OSError):
            os.rmdir(key)


@contextlib.contextmanager
def output_dir_lock(output_dir: str, enabled: bool = True):
    """Hold the output folder for one run: an exclusive `flock` on `output_dir/.rrd_hf.lock`, taken without
    waiting (`OutputDirBusyError` names the holder) and released on any exit.

    The kernel drops a `flock` when its process dies, so a SIGKILLed run leaves at most a stale file that locks
    nothing. Re-entrant within a process. `enabled=False` (every process of a distributed run but the main one)
    does nothing."""
    if not enabled:
        yield
        return
    key = _acquire(output_dir)
    try:
        yield
    finally:
        _release(key)


# ------------------------------------------------------------------------------------------------ the methods' state


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
    except (SafetensorError, OSError) as error:
        raise checkpoint_error(folder, os.path.basename(path), error) from error
    try:
        methods.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not match this run's objective ({objective}; options, embedding sizes, memory sizes or the "
            f"feature sizes changed): {str(error).rstrip('.')}. Resume with the settings the checkpoint was written with, or start a "
            "new run in another output_dir."
        ) from error
