"""Train a student with RRD (or a teacher with plain cross-entropy) from a recipe.

    rrd-hf train recipes/cifar100/resnet32x4_resnet8x4_rrd.yaml --output_dir runs/r8x4 --seed 1
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m rrd_hf.train RECIPE.yaml [--flag value ...]

A recipe is a YAML file holding fields of `ModelArguments`, `DataArguments` and `RRDConfig` (which includes every
`TrainingArguments` field); flags on the command line override it. Both launchers run `main` below.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

from .process import run_command

__all__ = ["ModelArguments", "DataArguments", "ResumeArguments", "recipe_parser", "parse_recipe", "run", "main",
           "user_errors"]

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which student to train."""

    student: str | None = field(
        default=None,
        metadata={"help": "Student: a zoo name (resnet8x4, wrn_16_2, MobileNetV2, ...), a local folder or a Hub id."},
    )
    student_init_kwargs: str | None = field(
        default=None, metadata={"help": "JSON dict of extra config fields for a zoo student (e.g. '{\"width\": 2}')."}
    )


@dataclass
class DataArguments:
    """Which data, and how it reaches the models."""

    dataset: str = field(
        default="cifar100",
        metadata={"help": "Known name (cifar100, cifar10, tiny-imagenet, stl10, fashion_mnist), Hub id or local path."},
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Local copy of --dataset (Hub layout, parquet, save_to_disk or imagefolder), read as that "
                  "dataset: e.g. --dataset cifar100 --data_dir /data/cifar100 offline."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of the dataset repo, if any."})
    train_split: str | None = field(default=None, metadata={"help": "Training split (default: the dataset's)."})
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split (default: the dataset's)."})
    image_size: int = field(default=32, metadata={"help": "Side length the images are resized to."})
    data_pipeline: Literal["auto", "in_memory", "per_sample"] = field(
        default="auto",
        metadata={"help": "in_memory: decode the splits once to uint8 and augment whole batches on the device; "
                  "per_sample: decode and augment every image in DataLoader workers; auto: in_memory when the decoded "
                  "train split fits in min(a quarter of the RAM, 8 GiB) per machine. Both give the same images for a seed."},
    )
    in_memory_device: Literal["auto", "cpu"] = field(
        default="auto",
        metadata={"help": "Where the in_memory path keeps the decoded images: auto = the training accelerator when "
                  "there is one and they take at most a quarter of its memory (then the DataLoader runs without "
                  "workers and pinning), cpu = host memory (pinned batches, asynchronous copies)."},
    )
    decoded_cache: bool = field(
        default=True,
        metadata={"help": "in_memory path: keep the decoded images next to the dataset's `datasets` cache files and read "
                  "them back in later runs (a uint8 safetensors file per split and image size: 150 MB for 50,000 "
                  "32x32 images); false: decode in every run."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training samples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation samples."})
    image_column: str | None = field(default=None, metadata={"help": "Image column, when it cannot be detected."})
    label_column: str | None = field(default=None, metadata={"help": "Label column, when it cannot be detected."})

    def __post_init__(self):
        if self.data_pipeline not in ("auto", "in_memory", "per_sample"):
            raise ValueError(f"data_pipeline must be auto, in_memory or per_sample, got {self.data_pipeline!r}.")
        for name in ("max_train_samples", "max_eval_samples", "image_size"):  # 0 or -5 would give empty or odd data
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1 (leave max_*_samples unset for all), got "
                                 f"{value!r}.")


@dataclass
class ResumeArguments:
    """What a resume may change."""

    allow_resume_changes: str | None = field(
        default=None,
        metadata={"help": "Comma-separated settings (e.g. learning_rate,weight_decay, or all) that may differ from "
                  "the checkpoint's when resuming; results.json records them as resume_changes. The seed, data, "
                  "student, teacher, objective and batch size never may. Without it a resume with other settings is "
                  "refused, naming them."},
    )


def recipe_parser(prog: str = "rrd-hf train"):
    from transformers import HfArgumentParser

    from ..training.config import RRDConfig

    # An explicit usage keeps argparse errors to two lines instead of a usage listing every field.
    return HfArgumentParser((ModelArguments, DataArguments, RRDConfig, ResumeArguments), prog=prog,
                            usage=f"{prog} RECIPE.yaml [--field value ...]  (`{prog} --help` for the common fields)")


def parse_recipe(argv: list[str], *, teacher_only: bool = False, with_resume_arguments: bool = False):
    """`[RECIPE.yaml] [--field value ...]` → (ModelArguments, DataArguments, RRDConfig); flags override the file.

    With `teacher_only`, kd_weight and rrd_weight default to 0 (plain cross-entropy training). With
    `with_resume_arguments`, the `ResumeArguments` come fourth.
    """
    from .recipes import check_model_arguments, load_recipe

    parser = recipe_parser("rrd-hf train-teacher" if teacher_only else "rrd-hf train")
    if teacher_only:
        parser.set_defaults(kd_weight=0.0, rrd_weight=0.0)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        path, argv = argv[0], argv[1:]
        recipe = load_recipe(path)  # strict: no duplicate keys, no aliases, syntax errors in one line
        known = {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype)}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise ValueError(f"recipe {path} has unknown fields {unknown}: check their spelling against `rrd-hf train --help`.")
        # Recipe values become argparse defaults: flags still override them, and string values get the
        # field's type conversion (so `5e-4` in YAML is a float, not a string).
        parser.set_defaults(**{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in recipe.items()})
    parsed = parser.parse_args_into_dataclasses(args=argv)
    check_model_arguments(parsed[0])  # the student and its init kwargs, before any data is decoded
    return tuple(parsed) if with_resume_arguments else tuple(parsed[:3])


def _images_device(data_args: DataArguments, training_args, nbytes: int):
    """The accelerator the in-memory images go to, or None to keep them in host memory."""
    import torch

    if training_args is None or data_args.in_memory_device == "cpu":
        return None
    device = training_args.device
    if device.type != "cuda":
        return None
    if nbytes > torch.cuda.get_device_properties(device).total_memory // 4:
        logger.info("decoded images (%.1f MB) kept in host memory: over a quarter of %s", nbytes / 1e6, device)
        return None
    return device


def _load_splits(data_args: DataArguments, seed: int, training_args=None):
    """(train, eval, batch_transform, num_labels, class_names, stats) for the chosen data path.

    With ``training_args`` the in-memory images may go to its accelerator (then its DataLoader settings are adjusted:
    no workers, no pinning) and decoding uses its ``dataloader_num_workers`` processes.
    """
    from ..data import (
        DeviceAugmentation,
        InMemoryImageDataset,
        check_labels,
        choose_data_pipeline,
        in_memory_budget,
        prepare_dataset,
        resolve_dataset,
        uint8_bytes,
    )

    resolved = resolve_dataset(
        data_args.dataset, data_dir=data_args.data_dir, name=data_args.dataset_config,
        train_split=data_args.train_split, eval_split=data_args.eval_split,
        image_column=data_args.image_column, label_column=data_args.label_column,
    )
    stats = resolved.require_stats()

    def limit(dataset, n):
        return dataset.select(range(min(n, len(dataset)))) if n is not None else dataset

    train_raw = limit(resolved.train, data_args.max_train_samples)
    eval_raw = limit(resolved.eval, data_args.max_eval_samples)
    nbytes = uint8_bytes(len(train_raw), data_args.image_size)
    path = choose_data_pipeline(data_args.data_pipeline, len(train_raw), data_args.image_size)
    logger.info("data path %s (requested %s): the decoded train split takes %.1f MB, the in-memory budget is %.1f MB",
                path, data_args.data_pipeline, nbytes / 1e6, in_memory_budget() / 1e6)
    num_labels, class_names = resolved.num_labels, resolved.class_names or []
    if path == "in_memory":
        workers = int(getattr(training_args, "dataloader_num_workers", 0) or 0)
        device = _images_device(data_args, training_args, nbytes)
        cache_file = "auto" if data_args.decoded_cache else None
        train = InMemoryImageDataset.from_dataset(train_raw, data_args.image_size, stats=stats, num_workers=workers,
                                                  device=device, cache_file=cache_file)
        evaluation = InMemoryImageDataset.from_dataset(eval_raw, data_args.image_size, stats=stats,
                                                       num_workers=workers, device=device, cache_file=cache_file)
        for split in (train, evaluation):
            check_labels(split, num_labels)
        if device is not None:  # device tensors can be neither pinned nor shared with loader processes
            training_args.dataloader_num_workers, training_args.dataloader_pin_memory = 0, False
            logger.info("decoded images on %s: DataLoader without workers or pinned memory", device)
        elif training_args is not None and workers:
            # A batch is one tensor index: loader processes would only add inter-process copies and take cores
            # from the models. The workers above decoded the images.
            training_args.dataloader_num_workers = 0
            logger.info("in-memory data: batches are gathered in the main process (the %d workers only decoded)",
                        workers)
        transform = DeviceAugmentation(stats, seed=seed)
        if device is not None:
            transform.to(device)
        return train, evaluation, transform, num_labels, class_names, stats
    common = dict(image_size=data_args.image_size, stats=stats, num_labels=num_labels)
    train = prepare_dataset(train_raw, resolved.train_split, train=True, with_index=True, seed=seed, **common)
    evaluation = prepare_dataset(eval_raw, resolved.eval_split, train=False, **common)
    return train, evaluation, None, num_labels, class_names, stats


def is_zoo_name(name: str) -> bool:
    from ..models import resolve_model_name

    try:
        resolve_model_name(name)
        return True
    except ValueError:
        return False


def _build_student(model_args: ModelArguments, num_labels: int, class_names: list[str]):
    from ..models import build_model
    from ..classifiers.loading import load_image_classifier

    if not model_args.student:
        raise ValueError("no student given: set `student:` in the recipe or pass --student resnet8x4 (or a path).")
    label_kwargs = {}
    if class_names:
        label_kwargs = {"id2label": dict(enumerate(class_names)), "label2id": {n: i for i, n in enumerate(class_names)}}
    if is_zoo_name(model_args.student) and not os.path.exists(model_args.student):
        overrides = json.loads(model_args.student_init_kwargs) if model_args.student_init_kwargs else {}
        return build_model(model_args.student, num_labels=num_labels, **label_kwargs, **overrides)
    return load_image_classifier(model_args.student, role="student")


def run(model_args: ModelArguments, data_args: DataArguments, config, *, teacher_only: bool = False,
        allow_resume_changes: str | None = None) -> dict:
    """Train, save the student (Hub-ready) into `output_dir`, write `results.json`, and return the results.

    The main process holds `output_dir` from the first check to the last file (`checkpoints.output_dir_lock`): a
    second run started into the same folder is refused instead of mixing its checkpoints with this one's."""
    from ..training.checkpoints import output_dir_lock

    if teacher_only and config.needs_teacher:
        raise ValueError(
            f"train-teacher trains with cross-entropy only, but the recipe's objective is {config.describe_objective()}: "
            "set kd_weight and rrd_weight to 0 and remove distill_method/distill_terms (or use `rrd-hf train`)."
        )
    with output_dir_lock(config.output_dir, enabled=config.process_index == 0):
        return _run(model_args, data_args, config, allow_resume_changes)


def _settings(model_args: ModelArguments, data_args: DataArguments, config) -> dict:
    """What the run trains with, as a resume compares it with the checkpoint (`checkpoints.resume_changes`)."""
    from ..runs.record import training_args_dict

    return {**training_args_dict(config), **dataclasses.asdict(model_args), **dataclasses.asdict(data_args)}


def _run(model_args: ModelArguments, data_args: DataArguments, config, allow_resume_changes) -> dict:
    from ..runs.results import RESULTS_NAME, summarize_log_history
    from ..training.checkpoints import (check_output_dir, check_resume_settings, finished_results, list_checkpoints,
                                        is_complete, read_trainer_state, resolve_resume)
    from ..training.trainer import RRDTrainer

    # Fail before decoding any data: a resume point that is not there or other settings than the checkpoint's, a
    # finished run in output_dir.
    requested = config.resume_from_checkpoint not in (None, False, "")
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir)
    if resume is not None:
        check_resume_settings(resume, _settings(model_args, data_args, config), allow_resume_changes, log=False)
    if requested:
        done = finished_results(config.output_dir, config.max_steps, config.num_train_epochs)
        # 'latest' on a finished run is that run; a checkpoint named by path before its end asks to train from there
        latest = config.resume_from_checkpoint in (True, "latest")
        if done is not None and (latest or read_trainer_state(resume)["global_step"] >= done["global_step"]):
            logger.warning("%s holds the finished run (step %d): nothing to train, nothing rewritten.",
                           config.output_dir, done["global_step"])
            if config.process_index == 0:
                print(json.dumps(done, indent=2, ensure_ascii=False))
            return done
    if resume is None:  # the main process moves an overwritten run aside (the others only check)
        check_output_dir(config.output_dir, config.overwrite_output_dir, replace=config.process_index == 0,
                         resuming=requested)
    train, evaluation, transform, num_labels, class_names, _ = _load_splits(data_args, config.seed, config)
    # The student's initial weights come from the seed: the same recipe and seed give the same run.
    from transformers.trainer_utils import enable_full_determinism, set_seed

    (enable_full_determinism if config.full_determinism else set_seed)(config.seed)
    student = _build_student(model_args, num_labels, class_names)
    if student.config.num_labels != num_labels:
        raise ValueError(
            f"the student predicts {student.config.num_labels} classes but {data_args.dataset!r} has {num_labels}: "
            "use a student built for this dataset."
        )
    # The processor saved with the student, its class names and the teacher's input adapter follow the data.
    trainer = RRDTrainer(model=student, args=config, train_dataset=train, eval_dataset=evaluation,
                         batch_transform=transform)
    trainer.run_arguments = {"model_args": dataclasses.asdict(model_args), "data_args": dataclasses.asdict(data_args)}
    train_output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint,
                                 allow_resume_changes=allow_resume_changes)
    if config.eval_strategy == "no":  # still report the final accuracy (it lands in log_history)
        trainer.evaluate()
    try:
        trainer.save_model()
    except OSError as error:
        if not hasattr(error, "advice"):  # not the write of the model (e.g. a push during save_model)
            raise
        step = trainer.state.global_step
        kept = [path for checkpoint_step, path in list_checkpoints(config.output_dir)
                if checkpoint_step == step and is_complete(path)]
        then = (f"run the same command with --resume_from_checkpoint latest: it writes the model of {kept[0]} "
                "without training" if kept else
                f"run the command again: no checkpoint holds step {step}, so the weights it trained ended with it")
        failed = OSError(f"could not write the final model into {config.output_dir} ({error.reason}): the command "
                         f"failed before writing the model or {RESULTS_NAME}. {error.advice}, then {then}.")
        failed.errno = error.errno
        raise failed from error
    results = {
        "dataset": data_args.dataset, "student": model_args.student, "teacher": config.teacher_model_name_or_path,
        "ce_weight": config.ce_weight, "loss_terms": [term.to_dict() for term in config.loss_terms],
        "objective": config.describe_objective(),
        "seed": config.seed, "global_step": trainer.state.global_step,
        "train_runtime": train_output.metrics.get("train_runtime"),
        "train_samples_per_second": train_output.metrics.get("train_samples_per_second"),
        **summarize_log_history(trainer.state.log_history),
        # `rrd-hf aggregate` compares runs on these (with _rrd_run.json's training arguments)
        "model_args": dataclasses.asdict(model_args), "data_args": dataclasses.asdict(data_args),
    }
    if trainer.resume_changes:  # settings a resume was allowed to change: the record says the model saw both
        results["resume_changes"] = {key: {"before": old, "after": new}
                                     for key, (old, new) in trainer.resume_changes.items()}
    if trainer.is_world_process_zero():
        path = os.path.join(config.output_dir, RESULTS_NAME)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:  # results.json marks a finished run: whole or absent
            json.dump(results, handle, indent=2, ensure_ascii=False)
        os.replace(path + ".tmp", path)
        logger.info("results: %s", results)
        print(json.dumps(results, indent=2, ensure_ascii=False))
    trainer.accelerator.wait_for_everyone()  # every process is done before the process group is destroyed
    trainer.end()
    return results


def main(argv: list[str] | None = None, *, teacher_only: bool = False) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        recipe_parser().print_help()
        return {}
    model_args, data_args, config, resume_args = parse_recipe(argv, teacher_only=teacher_only,
                                                              with_resume_arguments=True)
    return run(model_args, data_args, config, teacher_only=teacher_only,
               allow_resume_changes=resume_args.allow_resume_changes)


DEBUG_ENV = "RRD_HF_DEBUG"


#: The errors every rrd_hf command reports in one message without importing `rrd_hf.hub` (which is slow to import).
BASIC_USER_ERRORS = (ValueError, OSError, ImportError, FloatingPointError)


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors `rrd-hf` and `python -m rrd_hf.train` report in one message (`cli.USER_ERRORS` is this)."""
    from ..hub.errors import HubPublishError

    return (*BASIC_USER_ERRORS, HubPublishError)


def _main_reporting_user_errors() -> None:
    """`main` as `python -m rrd_hf.train` (and so `accelerate launch`) runs it: a user error prints one message and
    exits with status 1, as `rrd-hf train` does, instead of a traceback (RRD_HF_DEBUG=1 shows it)."""
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    try:
        main()
    except KeyboardInterrupt:
        if debug:
            raise
        print("python -m rrd_hf.train: interrupted", file=sys.stderr)
        sys.exit(130)
    except user_errors() as error:
        if debug:
            raise
        print(f"python -m rrd_hf.train: error: {error}\n({DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)


def entry() -> None:
    """`python -m rrd_hf.train`: `main` in a process tuned for the command (`rrd_hf.commands.process`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_command(_main_reporting_user_errors)


if __name__ == "__main__":
    entry()
