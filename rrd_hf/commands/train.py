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

__all__ = ["ModelArguments", "DataArguments", "recipe_parser", "parse_recipe", "run", "main"]

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


def recipe_parser(prog: str = "rrd-hf train"):
    from transformers import HfArgumentParser

    from ..training.config import RRDConfig

    # An explicit usage keeps argparse errors to two lines instead of a usage listing every field.
    return HfArgumentParser((ModelArguments, DataArguments, RRDConfig), prog=prog,
                            usage=f"{prog} RECIPE.yaml [--field value ...]  (`{prog} --help` for the common fields)")


def parse_recipe(argv: list[str], *, teacher_only: bool = False):
    """`[RECIPE.yaml] [--field value ...]` → (ModelArguments, DataArguments, RRDConfig); flags override the file.

    With `teacher_only`, kd_weight and rrd_weight default to 0 (plain cross-entropy training).
    """
    import yaml

    parser = recipe_parser("rrd-hf train-teacher" if teacher_only else "rrd-hf train")
    if teacher_only:
        parser.set_defaults(kd_weight=0.0, rrd_weight=0.0)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        path, argv = argv[0], argv[1:]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"recipe {path} not found (run from the repository root, or give its full path).")
        with open(path, encoding="utf-8") as handle:
            recipe = (json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)) or {}
        if not isinstance(recipe, dict):
            raise ValueError(f"recipe {path} must be a mapping of field: value, got {type(recipe).__name__}.")
        known = {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype)}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise ValueError(f"recipe {path} has unknown fields {unknown}: check their spelling against `rrd-hf train --help`.")
        # Recipe values become argparse defaults: flags still override them, and string values get the
        # field's type conversion (so `5e-4` in YAML is a float, not a string).
        parser.set_defaults(**{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in recipe.items()})
    return parser.parse_args_into_dataclasses(args=argv)


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


def run(model_args: ModelArguments, data_args: DataArguments, config, *, teacher_only: bool = False) -> dict:
    """Train, save the student (Hub-ready) into `output_dir`, write `results.json`, and return the results."""
    from ..runs.results import RESULTS_NAME, summarize_log_history
    from ..training.trainer import RRDTrainer

    if teacher_only and config.needs_teacher:
        raise ValueError(
            f"train-teacher trains with cross-entropy only, but the recipe's objective is {config.describe_objective()}: "
            "set kd_weight and rrd_weight to 0 and remove distill_method/distill_terms (or use `rrd-hf train`)."
        )
    # Fail before decoding any data: a resume point that is not there, or a finished run in output_dir.
    from ..training.checkpoints import check_output_dir, resolve_resume

    if resolve_resume(config.resume_from_checkpoint, config.output_dir) is None:
        check_output_dir(config.output_dir, config.overwrite_output_dir, remove_checkpoints=False)
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
    train_output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    if config.eval_strategy == "no":  # still report the final accuracy (it lands in log_history)
        trainer.evaluate()
    trainer.save_model()
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
    if trainer.is_world_process_zero():
        with open(os.path.join(config.output_dir, RESULTS_NAME), "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, ensure_ascii=False)
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
    model_args, data_args, config = parse_recipe(argv, teacher_only=teacher_only)
    return run(model_args, data_args, config, teacher_only=teacher_only)


def entry() -> None:
    """`python -m rrd_hf.train`: `main` in a process tuned for the command (`rrd_hf.commands.process`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_command(main)


if __name__ == "__main__":
    entry()
