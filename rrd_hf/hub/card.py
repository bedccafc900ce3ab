"""The model card: `build_model_card` renders what the folder records into `model_cards/*.md.jinja`.

The card says what is known and says "not recorded" for what is not. Hyper-parameters, the teacher, the dataset,
the hardware and the training time come, in this order, from the arguments, `_rrd_run.json` (written next to the
weights by `HubMixin`), `results.json` (written by `rrd-hf train`), `training_args.json` (written by `HubMixin`) and
the newest `trainer_state.json`: JSON only, never the pickled `training_args.bin`. It claims only what was measured:
how many images of which split were evaluated (a subset is called one), how many it was trained on (likewise), and
which LR decays training reached.

The teacher is recorded as the custom metadata key `teacher_model`, never as `base_model`: `base_model` would list
the student in the teacher's model tree as a fine-tune of it, which a student trained from scratch is not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from .custom_code import rrd_hf_model_types
from .errors import ExportError
from .facts import (
    NOT_RECORDED,
    SMALL_LR_ARCHITECTURES,
    describe_dataset,
    describe_evaluation,
    describe_model,
    display_name,
    format_duration,
    num_parameters,
    split_size,
)
from .hyperparameters import Progress, hyperparameter_rows
from .objective import describe_objective, loss_formula, recorded_terms, resolve_objective
from ..runs.record import (
    RUN_INFO_NAME,
    figures,
    newest_trainer_state,
    read_json,
    read_training_args,
    runtime_from_logs,
    training_args_dict,
    transfer_results,
)

TEMPLATE_NAMES = {"student": "student.md.jinja", "teacher": "teacher.md.jinja"}

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



def template_path(kind: str = "student") -> str:
    """Path of the card template: inside the installed package (`rrd_hf/model_cards/`, mapped from the top-level
    `model_cards/` folder by pyproject.toml), else the source checkout's `model_cards/`."""
    if kind not in TEMPLATE_NAMES:
        raise ValueError(f"kind must be one of {sorted(TEMPLATE_NAMES)}, got {kind!r}.")
    package = Path(__file__).resolve().parents[1]  # rrd_hf/ (installed) or the source checkout's rrd_hf/
    for folder in (package / "model_cards", package.parent / "model_cards"):
        candidate = folder / TEMPLATE_NAMES[kind]
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"model-card template {TEMPLATE_NAMES[kind]} not found next to {package}: the installation is incomplete. "
        "Reinstall rrd_hf (`pip install .` from the repository root ships model_cards/ as rrd_hf/model_cards)."
    )



def choose_reported(summary: dict, args: dict | None, report: str) -> tuple[str | None, float | None, float | None]:
    """Which evaluation describes the uploaded weights: the last one, unless the best was loaded at the end."""
    if not summary or summary.get("last_top1") is None and summary.get("best_top1") is None:
        return None, None, None
    if report == "auto":
        report = "best" if args and args.get("load_best_model_at_end") and summary.get("best_top1") is not None else "last"
    if report not in ("best", "last"):
        raise ValueError(f"report must be 'auto', 'best' or 'last', got {report!r}.")
    return report, summary.get(f"{report}_top1"), summary.get(f"{report}_top5")


def _progress(run: dict, state: dict | None, state_is_final: bool, results: dict, log_history, global_step):
    """How far training went: exactly from the run record (or the folder's own trainer state), else a lower bound
    from the epochs that evaluations and checkpoints reached."""
    exact = run.get("epoch")
    if exact is None and state_is_final:
        exact = state.get("epoch")
    bounds = [results.get("last_epoch"), results.get("best_epoch"), (state or {}).get("epoch"),
              *(log.get("epoch") for log in log_history or [])]
    at_least = max((float(b) for b in bounds if isinstance(b, (int, float))), default=None)
    return Progress(epoch=float(exact) if exact is not None else None, at_least=at_least, global_step=global_step)


def _evaluation(run: dict, dataset: dict | None, eval_split: str | None) -> dict:
    """What the accuracies were measured on: the given split, else the recorded one; a run record that holds
    evaluation facts but no split means the split was unknown to the trainer. Old folders (no such facts) are
    assumed to use the dataset's evaluation split, and the card says it is assumed."""
    recorded = "eval_num_samples" in run
    if eval_split is not None or run.get("eval_split"):
        split, assumed = eval_split or run["eval_split"], False
    elif recorded:
        split, assumed = None, False
    else:
        split, assumed = (dataset or {}).get("split"), True
    size = split_size(dataset, split, run.get("eval_split_size"))
    return describe_evaluation(dataset, run.get("eval_num_samples"), split, size, assumed)


def _training_data(run: dict, dataset: dict | None, saved_results: dict) -> str:
    """How many images of which split the model was trained on, in words that call a subset one: a model trained on
    256 images is not the dataset's model, whatever its accuracy. From the run record; for older folders, the
    `max_train_samples` that `rrd-hf train` recorded in results.json (a bound: the split may hold fewer)."""
    n, split = run.get("train_num_samples"), run.get("train_split")
    of = f" of {dataset['name']}" if dataset else ""
    if isinstance(n, int):
        size = split_size(dataset, split, run.get("train_split_size"))
        where = f" of the `{split}` split{of}" if split else f"{of}"
        if isinstance(size, int) and n < size:
            return f"{n:,} of the {size:,} images{where} (a subset of the split, not all of it)"
        if isinstance(size, int) and n == size:
            return f"all {n:,} images{where}"
        return f"{n:,} images{where}"
    limit = ((saved_results or {}).get("data_args") or {}).get("max_train_samples")
    if isinstance(limit, int):
        return f"at most {limit:,} images of the training split{of} (max_train_samples={limit}: a subset)"
    return NOT_RECORDED


def _figures_with_counts(folder: str, plots: dict | None) -> list[dict]:
    """The figures, with the number of images the t-SNE shows when `rrd-hf plots` recorded it."""
    out = figures(folder)
    samples, classes = (plots or {}).get("tsne_samples"), (plots or {}).get("tsne_classes")
    for figure in out:
        if figure["path"].rsplit("/", 1)[-1].startswith("tsne") and isinstance(samples, int):
            shown = f" of {classes} classes" if isinstance(classes, int) else ""
            figure["caption"] += f" ({samples:,} images{shown})"
    return out


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
    run_record: dict | None = None,
):
    """The `huggingface_hub.ModelCard` of a saved student (or teacher) folder.

    Explicit arguments win over what the folder records (see the module docstring). `training_args`: a dict,
    `TrainingArguments` or the path of a JSON file. `results` is a `rrd_hf.runs.results.summarize_log_history` dict
    (top-1/top-5 in %); `report` picks which evaluation goes into the model-index ("auto": the best one only when
    `load_best_model_at_end` loaded it, else the last one, i.e. the evaluation of the weights being published).
    `base_model` is only for a student *initialised* from a Hub checkpoint; the teacher never goes there.
    `run_record`: what `_rrd_run.json` holds, to use instead of the folder's (`HubMixin` passes its current one).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from ..runs.results import summarize_log_history

    folder = os.fspath(checkpoint_dir)
    if kind not in TEMPLATE_NAMES:
        raise ValueError(f"kind must be one of {sorted(TEMPLATE_NAMES)}, got {kind!r}.")
    config = read_json(os.path.join(folder, "config.json"))
    if config is None:
        raise ExportError(f"{folder} has no readable config.json: pass a folder written by save_pretrained / save_model.")
    run = dict(run_record) if run_record is not None else read_json(os.path.join(folder, RUN_INFO_NAME)) or {}
    saved_results = read_json(os.path.join(folder, "results.json")) or {}
    state, state_path = newest_trainer_state(folder)

    if training_args is not None:
        args = training_args_dict(training_args)
        objective = resolve_objective(args)
    else:  # JSON only: a folder's training_args.bin is a pickle and is never opened
        args = run.get("training_args") or read_training_args(folder)
        objective = recorded_terms(run) or (resolve_objective(args) if args else None)
    if kind == "teacher":
        objective = None  # a teacher is trained with cross-entropy; distillation settings say nothing about it

    if results is None:  # the first source that holds evaluations
        candidates = [summarize_log_history(log_history)] if log_history is not None else []
        candidates += [run.get("summary"), saved_results]
        if state is not None:
            from_state = summarize_log_history(state.get("log_history", []))
            candidates.append({**from_state, "source": os.path.relpath(state_path, folder).replace(os.sep, "/")})
        results = next((c for c in candidates if c and c.get("num_evaluations")), None)
    results = results or {}
    if train_runtime is None:
        train_runtime = runtime_from_logs(log_history) or run.get("train_runtime") or runtime_from_logs(
            (state or {}).get("log_history"))
    world_size = world_size or run.get("world_size")
    hardware = hardware or run.get("hardware")
    global_step = (run.get("global_step") or saved_results.get("global_step") or (state or {}).get("global_step"))
    state_is_final = state_path == os.path.join(folder, "trainer_state.json")
    progress = _progress(run, state, state_is_final, results, log_history, global_step)

    teacher_name = teacher or run.get("teacher") or saved_results.get("teacher") or (args or {}).get(
        "teacher_model_name_or_path")
    # A path recorded at training time may not resolve from here: the run info remembers that it was local.
    teacher_local = bool(teacher_name) and teacher_name == run.get("teacher") and bool(run.get("teacher_local"))
    teacher_meta = describe_model(teacher_name, run.get("teacher_architecture"), teacher_local) if kind == "student" else None
    dataset_meta = describe_dataset(dataset or run.get("dataset") or saved_results.get("dataset"))
    evaluation = _evaluation(run, dataset_meta, eval_split)
    method_name, method_slug, terms = describe_objective(objective, teacher_meta, method)
    if kind == "teacher":
        method_name, method_slug, terms = "cross-entropy (teacher)", None, []

    architecture = config.get("zoo_name") or (config.get("architectures") or [config.get("model_type")])[0]
    repo_id = repo_id or model_name or Path(folder).resolve().name
    model_name = model_name or repo_id.split("/")[-1]
    reported, top1, top5 = choose_reported(results, args, report)

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
                      dataset_split=evaluation["split"])
        scope = f", {evaluation['qualifier']}" if evaluation["qualifier"] else ""
        eval_results = [EvalResult(metric_type="accuracy", metric_value=top1, metric_name=f"Top-1 accuracy (%){scope}",
                                   **common)]
        if top5 is not None:
            eval_results.append(EvalResult(metric_type="top_5_accuracy", metric_value=top5,
                                           metric_name=f"Top-5 accuracy (%){scope}", **common))
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
    processor = read_json(os.path.join(folder, "preprocessor_config.json"))
    size = (processor or {}).get("size") or {}
    plots = read_json(os.path.join(folder, "figures", "plots.json")) or read_json(os.path.join(folder, "plots.json"))
    context = {
        "kind": kind,
        "repo_id": repo_id,
        "title": model_name,
        "architecture": architecture,
        "num_labels": config.get("num_labels") or len(config.get("id2label") or {}) or None,
        "num_parameters": num_parameters(folder),
        "remote_code": bool(config.get("auto_map")),
        "rrd_hf_code": config.get("model_type") in rrd_hf_model_types(),
        "processor": processor is not None,
        "image_size": size.get("height") or size.get("shortest_edge"),
        "image_mean": (processor or {}).get("image_mean"),
        "image_std": (processor or {}).get("image_std"),
        "method": method_name,
        "method_slug": method_slug,
        "terms": terms,
        "other_methods": [t for t in terms if t not in ("RRD", "KD")],
        "loss": loss_formula(objective) if objective is not None and method_slug is not None else None,
        "teacher": teacher_meta,
        "dataset": dataset_meta,
        "evaluation": evaluation,
        "training_data": _training_data(run, dataset_meta, saved_results),
        "hyperparameters": hyperparameter_rows(args, world_size, objective, progress),
        "args_recorded": bool(args),
        "lr_note": architecture in SMALL_LR_ARCHITECTURES,
        "hardware": hardware or NOT_RECORDED,
        "world_size": world_size,
        "train_time": format_duration(train_runtime),
        "global_step": global_step,
        "last_eval_step": results.get("last_step"),
        "results": results if results.get("num_evaluations") or results.get("best_top1") is not None else None,
        "reported": reported,
        "top1": top1,
        "top5": top5,
        "transfer": transfer_results(folder),
        "figures": _figures_with_counts(folder, plots),
        "correlation": plots,
        "base_model": base_model,
        "student_init": display_name(run["student_init"]) if run.get("student_init") else run.get("student_init"),
        "citation": RRD_CITATION,
        "not_recorded": NOT_RECORDED,
    }
    return ModelCard.from_template(card_data, template_path=template_path(kind), ctx=context)
