"""Results the way the field argues about them: best and last epoch top-1, and mean ± std over seeds.

`rrd-hf aggregate` reads every run rrd_hf writes: the folder of `rrd-hf train` (`results.json`, `_rrd_run.json`,
`config.json`) and the folder saved through the Python API (`_rrd_run.json` holds the same summary and the training
arguments). A mean over seeds means something only for runs of one configuration, so runs are grouped by
everything that changes the result (models, data, loss terms, optimisation) and a mixed set is refused, naming the
fields that differ.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

from ..methods.objective import OBJECTIVE_FIELDS, resolve_loss_terms
from .record import RUN_INFO_NAME

__all__ = [
    "summarize_log_history",
    "aggregate_results",
    "format_aggregate",
    "load_run",
    "group_runs",
    "aggregate_runs",
    "format_groups",
    "Run",
    "RunGroup",
    "MixedConfigurationsError",
    "RESULTS_NAME",
    "METRIC_KEYS",
    "NOT_CONFIGURATION",
]

RESULTS_NAME = "results.json"
METRIC_KEYS = ("best_top1", "last_top1", "best_top5", "last_top5")

#: Training arguments that do not change what is learnt: where and how often things are logged or saved, the seed
#: (what runs of one configuration differ in), devices and loader processes. Every other field is configuration.
NOT_CONFIGURATION = frozenset({
    "output_dir", "logging_dir", "overwrite_output_dir", "run_name", "project", "report_to", "disable_tqdm",
    "logging_strategy", "logging_steps", "logging_first_step", "log_on_each_node", "logging_nan_inf_filter",
    "log_level", "log_level_replica", "include_num_input_tokens_seen", "skip_memory_metrics", "debug",
    "save_strategy", "save_steps", "save_total_limit", "save_on_each_node", "save_only_model", "enable_jit_checkpoint",
    "push_to_hub", "hub_token", "hub_private_repo", "hub_model_id", "hub_strategy", "hub_always_push", "hub_revision",
    "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "seed", "data_seed", "resume_from_checkpoint", "ignore_data_skip", "restore_callback_states_from_checkpoint",
    "check_finite",  # it stops a run that would go wrong; it does not change one that finishes
    "do_train", "do_eval", "do_predict", "local_rank", "use_cpu", "torch_empty_cache_steps",
    "per_device_eval_batch_size", "eval_accumulation_steps", "eval_do_concat_batches", "eval_use_gather_object",
    "batch_eval_metrics", "include_for_metrics",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context", "ddp_backend", "ddp_timeout", "ddp_find_unused_parameters",
    "ddp_bucket_cap_mb",
    "teacher_model_name_or_path",  # compared as `teacher`, with local paths resolved
})
#: Data arguments that change where or how images are read, not which images a run sees (both data paths give the
#: same images for a seed; the decoded-image cache holds the decoded pixels bitwise).
_DATA_NOT_CONFIGURATION = frozenset({"dataset", "data_dir", "data_pipeline", "in_memory_device",
                                     "decoded_cache"})
#: Fields of a saved `config.json` that say where or how it was saved rather than which network it is.
_MODEL_CONFIG_NOISE = frozenset({
    "transformers_version", "_name_or_path", "id2label", "label2id", "auto_map", "architectures", "dtype", "torch_dtype",
})
_NOT_RECORDED = "(not recorded)"
#: What the text output names of each configuration (the full configuration is what is compared).
_SETTING_KEYS = ("student", "teacher", "dataset", "objective")


def summarize_log_history(log_history: Sequence[dict]) -> dict:
    """Best-epoch and last-epoch top-1/top-5 (in %) from `Trainer.state.log_history` evaluation entries.

    Papers of the CIFAR benchmark report the best test accuracy over epochs (selection on the test set); the last
    epoch is the honest number. Both are returned so neither has to be guessed.
    """
    evals = [log for log in log_history if "eval_accuracy" in log]
    if not evals:
        return {"num_evaluations": 0}
    best = max(evals, key=lambda log: log["eval_accuracy"])
    last = evals[-1]

    def pct(log, key):
        return round(100.0 * log[key], 4) if key in log else None

    return {
        "num_evaluations": len(evals),
        "best_top1": pct(best, "eval_accuracy"),
        "best_top5": pct(best, "eval_top5_accuracy"),
        "best_epoch": best.get("epoch"),
        "best_step": best.get("step"),
        "last_top1": pct(last, "eval_accuracy"),
        "last_top5": pct(last, "eval_top5_accuracy"),
        "last_epoch": last.get("epoch"),
        "last_step": last.get("step"),
    }


# ------------------------------------------------------------------------------------------------- statistics


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate_results(results: Iterable[dict], keys: Sequence[str] = METRIC_KEYS) -> dict:
    """Mean and sample standard deviation (n − 1) of each key over runs (e.g. seeds); runs lacking a key are skipped.

    Pure statistics: it does not check that the runs share a configuration (`aggregate_runs` does).
    """
    results = list(results)
    out = {"num_runs": len(results)}
    for key in keys:
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            mean, std = _mean_std(values)
            out[key] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return out


def format_aggregate(aggregate: dict) -> str:
    lines = [f"runs: {aggregate['num_runs']}"]
    for key, value in aggregate.items():
        if isinstance(value, dict) and "mean" in value:
            lines.append(f"{key:>10}: {value['mean']:.2f} ± {value['std']:.2f}  (n={value['n']})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- reading runs


@dataclasses.dataclass
class Run:
    """One training run: where it was read from, its accuracies, its seed and its configuration (flat fields)."""

    path: str
    metrics: dict
    seed: int | None
    configuration: dict


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}). It is {what}; a run "
            "interrupted while writing it leaves it truncated: rerun that run, or leave its folder out."
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file. It is {what}: leave this folder out.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object of named fields. It is {what}: "
                         "pass the folder of a run written by rrd_hf (`rrd-hf train` or `RRDTrainer.save_model`).")
    return data


def _check_metrics(metrics: Mapping, path: str) -> dict:
    checked = {}
    for key in METRIC_KEYS:
        value = metrics.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{path}: {key} is {value!r}, not a finite number of percent. The file was edited or "
                             "written by something other than rrd_hf: fix it or leave this run out.")
        checked[key] = float(value)
    return checked


def _run_files(folder: str) -> tuple[str | None, str | None, str | None]:

    found = [os.path.join(folder, name) for name in (RESULTS_NAME, RUN_INFO_NAME, "config.json")]
    return tuple(path if os.path.isfile(path) else None for path in found)


def load_run(path: str | os.PathLike) -> Run:
    """Read a run folder (or its `results.json` / `_rrd_run.json`): accuracies, seed and configuration.

    Accuracies come from `results.json` when there is one, else from `_rrd_run.json`'s `summary`; the training
    arguments from `_rrd_run.json`; the student's architecture from `config.json`.
    """

    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: pass run folders written by `rrd-hf train` or by "
                                f"`RRDTrainer.save_model` (they hold {RESULTS_NAME} or {RUN_INFO_NAME}).")
    if not os.path.isdir(path) and os.path.basename(path) not in (RESULTS_NAME, RUN_INFO_NAME):
        raise ValueError(f"{path} is neither a run folder nor a {RESULTS_NAME} / {RUN_INFO_NAME} file.")
    results_path, info_path, config_path = _run_files(folder)
    if results_path is None and info_path is None:
        inside = sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))
                        and any(_run_files(os.path.join(folder, name))[:2]))
        hint = f" It contains run folders ({', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}): pass those." \
            if inside else ""
        raise FileNotFoundError(f"{folder} holds neither {RESULTS_NAME} (written by `rrd-hf train`) nor {RUN_INFO_NAME} "
                                f"(written by `RRDTrainer.save_model`): it is not a finished rrd_hf run.{hint}")
    results = _read_json(results_path, "the summary `rrd-hf train` writes at the end of a run") if results_path else {}
    info = _read_json(info_path, "the run record `RRDTrainer` saves next to the weights") if info_path else {}
    model_config = {}
    if config_path:
        try:
            model_config = _read_json(config_path, "the student's config")
        except ValueError:
            model_config = {}  # the configuration then says the student was not recorded
    summary = info.get("summary", {})
    if not isinstance(summary, dict):
        raise ValueError(f"{info_path}: `summary` should be an object of accuracies, got {type(summary).__name__}.")
    training_args = info.get("training_args") or {}
    if not isinstance(training_args, dict):
        raise ValueError(f"{info_path}: `training_args` should be an object, got {type(training_args).__name__}.")
    source = results_path if results_path else info_path
    metrics = _check_metrics(results if results_path else summary, source)
    if not metrics:
        raise ValueError(f"{source} has no accuracy ({', '.join(METRIC_KEYS)}): the run never evaluated. Evaluate "
                         "during training (eval_strategy='epoch') or leave this run out.")
    seed = results.get("seed", training_args.get("seed"))
    configuration = _configuration(results, info, model_config, info_path or results_path)
    return Run(path=folder, metrics=metrics, seed=seed, configuration=configuration)


def _resolved(value):
    """A local path is compared by the folder it names, so `runs/t` and `./runs/t/` are one teacher."""
    if isinstance(value, str) and value and os.path.exists(value):
        return os.path.realpath(value)
    return value


def _objective(args: Mapping, path: str) -> dict:
    """The objective as flat fields: `ce_weight`, `loss.terms` and each term's `loss.<name>.<weight|method|option>`.

    Resolving it first means the shorthand (`kd_weight=1`) and `distill_terms` spellings of one objective agree,
    the options of a switched-off term do not count, and saved arguments of older versions read the same.
    """
    try:
        ce_weight, terms = resolve_loss_terms(args)
    except ValueError as error:
        raise ValueError(f"{path}: the run's loss terms cannot be read from its training arguments: {error}") from None
    objective = {"ce_weight": ce_weight, "loss.terms": sorted(term.name for term in terms)}
    for term in terms:
        objective[f"loss.{term.name}.method"] = term.method
        objective[f"loss.{term.name}.weight"] = term.weight
        for key, value in term.kwargs.items():
            objective[f"loss.{term.name}.{key}"] = value
    return objective


def _objective_text(configuration: Mapping) -> str | None:
    """`1·CE + 1·KD + 1·RRD`, from the fields `_objective` made."""
    if "loss.terms" not in configuration or configuration.get("ce_weight") is None:
        return None
    parts = [f"{configuration['ce_weight']:g}·CE"] if configuration["ce_weight"] else []
    parts += [f"{configuration[f'loss.{name}.weight']:g}·{name.upper()}" for name in configuration["loss.terms"]]
    return " + ".join(parts)


def _configuration(results: dict, info: dict, model_config: dict, path: str) -> dict:
    args = dict(info.get("training_args") or {})
    if not args and results.get("loss_terms"):  # results.json alone: the terms it records
        args = {"ce_weight": results.get("ce_weight"), "distill_terms": results["loss_terms"]}
    elif not args:  # results.json of an older version: its weights
        args = {key: results[key] for key in ("ce_weight", "kd_weight", "rrd_weight") if key in results}
    objective_fields = OBJECTIVE_FIELDS
    configuration = {key: value for key, value in args.items()
                     if key not in NOT_CONFIGURATION and key not in objective_fields}
    configuration.update(_objective(args, path))
    configuration["dataset"] = info.get("dataset") or results.get("dataset")
    configuration["teacher"] = _resolved(results.get("teacher") or info.get("teacher") or args.get("teacher_model_name_or_path"))
    if info.get("teacher_architecture") is not None:
        configuration["teacher_architecture"] = info["teacher_architecture"]
    if model_config:
        configuration["student"] = model_config.get("zoo_name") or (model_config.get("architectures") or [None])[0]
        for key, value in model_config.items():
            if key not in _MODEL_CONFIG_NOISE and key != "zoo_name":
                configuration[f"student.{key}"] = value
    else:
        configuration["student"] = results.get("student")
    if "student_init" in info:
        configuration["student_init"] = _resolved(info["student_init"] or None)
    if "world_size" in info:  # the global batch is per-device batch × processes
        configuration["world_size"] = info["world_size"]
    if configuration["student"] is None:
        configuration["student"] = (results.get("model_args") or {}).get("student")
    for key, value in (results.get("data_args") or {}).items():  # written by `rrd-hf train`
        if key not in _DATA_NOT_CONFIGURATION:
            configuration[f"data.{key}"] = value
    return configuration


# ------------------------------------------------------------------------------------------------- grouping


@dataclasses.dataclass
class RunGroup:
    """Runs sharing one configuration; `label` holds only the fields in which it differs from the other groups."""

    configuration: dict
    runs: list[Run]
    label: dict = dataclasses.field(default_factory=dict)

    @property
    def seeds(self) -> list:
        return [run.seed for run in self.runs]

    def aggregate(self) -> dict:
        return aggregate_results(run.metrics for run in self.runs)


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


_MISSING = object()  # a field the run did not record


def _show(value, key: str = "") -> str:
    if value is _MISSING:  # a term another run has is absent from this run's objective, not unrecorded
        return "(no such term)" if key.startswith("loss.") else _NOT_RECORDED
    return _key(value)


def group_runs(runs: Iterable[Run], ignore: Iterable[str] = ()) -> list[RunGroup]:
    """Group runs by configuration, in the order first seen; fields matching a pattern of `ignore` (fnmatch, e.g.
    `data.*`) are left out of the comparison.

    A field recorded by some runs and not by others counts as a difference: which value it had is unknown.
    """
    runs, ignore = list(runs), list(ignore)
    fields = sorted(key for key in {key for run in runs for key in run.configuration}
                    if not any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore))
    groups: dict[str, RunGroup] = {}
    for run in runs:
        configuration = {key: run.configuration.get(key, _MISSING) for key in fields}
        key = _key({k: (_NOT_RECORDED if v is _MISSING else v) for k, v in configuration.items()})
        groups.setdefault(key, RunGroup(configuration=configuration, runs=[])).runs.append(run)
    groups = list(groups.values())
    differing = _differing_fields(groups)
    for group in groups:
        group.label = {key: group.configuration[key] for key in differing}
    return groups


def _differing_fields(groups: Sequence[RunGroup]) -> list[str]:
    """Fields whose value is not the same in every group. A term's fields (`loss.kd.weight`, ...) that differ only
    because some runs lack the term are left to `loss.terms`, which already says so."""
    if len(groups) < 2:
        return []
    differing = []
    for key in groups[0].configuration:
        values = [group.configuration[key] for group in groups]
        if len({_show(value, key) for value in values}) < 2:
            continue
        present = {_key(value) for value in values if value is not _MISSING}
        if key.startswith("loss.") and key != "loss.terms" and len(present) < 2:
            continue
        differing.append(key)
    return differing


def _label_text(label: Mapping) -> str:
    return ", ".join(f"{key}={_show(value, key)}" for key, value in label.items())


class MixedConfigurationsError(ValueError):
    """The runs given to `aggregate_runs` have different configurations: their mean would mix results."""

    def __init__(self, groups: Sequence[RunGroup]):
        self.groups = list(groups)
        differing = list(self.groups[0].label)
        lines = [f"these {sum(len(g.runs) for g in self.groups)} runs have {len(self.groups)} different configurations; "
                 "a mean over them would mix results. They differ in:"]
        for key in differing:
            values = "; ".join(f"{_show(g.configuration[key], key)} in {', '.join(r.path for r in g.runs)}"
                               for g in self.groups)
            lines.append(f"  {key}: {values}")
        unrecorded = [key for key in differing if not key.startswith("loss.")
                      and any(g.configuration[key] is _MISSING for g in self.groups)]
        if unrecorded:
            lines.append(f"{', '.join(unrecorded)}: recorded by some runs only (`rrd-hf train` records the data "
                         "arguments, a run saved from Python does not), so whether they agree is unknown.")
        lines.append("Aggregate each configuration on its own:")
        for group in self.groups:
            lines.append(f"  rrd-hf aggregate {' '.join(run.path for run in group.runs)}")
        lines.append("or pass --per-config for one mean per configuration, or --ignore FIELD (a name or a pattern such "
                     "as 'data.*') to leave fields out of the comparison when you know they do not matter.")
        super().__init__("\n".join(lines))


def aggregate_runs(runs: Iterable[Run | str | os.PathLike], *, per_config: bool = False,
                   ignore: Iterable[str] = ()) -> list[dict]:
    """Mean ± std per configuration: one dict per group (its differing fields, runs, seeds and statistics).

    Raises `MixedConfigurationsError` when the runs have more than one configuration, unless `per_config`.
    """
    runs = [run if isinstance(run, Run) else load_run(run) for run in runs]
    if not runs:
        raise ValueError("no runs to aggregate: pass run folders.")
    groups = group_runs(runs, ignore)
    if len(groups) > 1 and not per_config:
        raise MixedConfigurationsError(groups)
    out = []
    for group in groups:
        seeds = group.seeds
        repeated = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
        first = {**group.runs[0].configuration, "objective": _objective_text(group.runs[0].configuration)}
        out.append({
            "setting": {key: first.get(key) for key in _SETTING_KEYS if first.get(key) is not None},
            "configuration": {key: (None if v is _MISSING else v) for key, v in group.label.items()},
            "runs": [run.path for run in group.runs],
            "seeds": seeds,
            "repeated_seeds": repeated,
            **group.aggregate(),
        })
    return out


def format_groups(groups: Sequence[dict]) -> str:
    """The text `rrd-hf aggregate` prints: per configuration, its seeds and mean ± std (n) of each metric."""
    blocks = []
    for number, group in enumerate(groups, start=1):
        lines = []
        if len(groups) > 1:
            lines.append(f"configuration {number} of {len(groups)}: {_label_text(group['configuration'])}")
        setting = ", ".join(f"{key} {value}" for key, value in group["setting"].items())
        if setting:
            lines.append(setting)
        seeds = ", ".join("?" if s is None else str(s) for s in group["seeds"])
        lines.append(f"runs: {group['num_runs']} (seeds {seeds})")
        if group["repeated_seeds"]:
            lines.append(f"warning: seed(s) {', '.join(map(str, group['repeated_seeds']))} appear more than once: the "
                         "same seed gives the same run, so the std understates the spread.")
        lines.extend(format_aggregate(group).splitlines()[1:])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
