"""The embedded demo: a real dataset, offline, on a budget that a laptop's CPU finishes in minutes.

It trains a small teacher, then the same small student four ways on the same budget (alone, with KD, with RRD and
with RRD+KD, the combination the paper recommends), prints the table and saves every model as a Hub-ready
checkpoint. Data: Fashion-MNIST (MIT), read from the Debian package `dataset-fashion-mnist` when installed, else
from the Hub (`zalando-datasets/fashion_mnist`). Command line: `rrd-hf demo --help`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

__all__ = ["run_demo", "DemoSettings", "STUDENT_RUNS", "DEMO_RESULTS"]

DEMO_RESULTS = "demo_results.json"

#: The student runs: name -> (ce, kd, rrd) weights.
STUDENT_RUNS = {
    "student alone": (1.0, 0.0, 0.0),
    "student + KD": (0.1, 0.9, 0.0),  # the CIFAR benchmark's KD weights (γ=0.1, α=0.9, T=4)
    "student + RRD": (1.0, 0.0, 1.0),  # the published RRD weights (γ=1, β=1)
    "student + RRD + KD": (1.0, 1.0, 1.0),  # the published RRD+KD weights (γ=1, α=1, β=1)
}


@dataclasses.dataclass
class DemoSettings:
    """The demo's budget: small models, a subset of the images and a few epochs, so that it runs on a CPU."""

    output_dir: str = "demo_output"
    teacher: str = "resnet20"
    student: str = "resnet8"
    train_samples: int = 24000  # a seeded subset of the 60,000 training images; 0 = all
    eval_samples: int = 0  # 0 = the whole 10,000-image test set
    teacher_epochs: int = 3
    epochs: int = 3  # of each student run
    batch_size: int = 64
    learning_rate: float = 0.05
    memory_size: int = 4096  # RRD's K (16384 in the paper, for 50,000 images)
    seed: int = 0
    gpu: bool = False
    overwrite: bool = False  # replace the models of an earlier demo in output_dir


def _config(output_dir: str, settings: DemoSettings, weights, teacher: bool = False):
    from ..training.config import RRDConfig

    ce, kd, rrd = weights
    return RRDConfig(
        output_dir=output_dir,
        num_train_epochs=settings.teacher_epochs if teacher else settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=settings.learning_rate,
        optim="sgd",
        optim_args="momentum=0.9",
        weight_decay=5e-4,
        decay_all_parameters=True,
        lr_scheduler_type="cosine",
        max_grad_norm=0.0,
        ce_weight=ce,
        kd_weight=kd,
        rrd_weight=rrd,
        memory_size=settings.memory_size,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        seed=settings.seed,
        use_cpu=not settings.gpu,
        disable_tqdm=False,
        overwrite_output_dir=settings.overwrite,
    )


def _load_data(settings: DemoSettings):
    from ..data import DeviceAugmentation, InMemoryImageDataset, get_dataset_info, load_image_dataset

    info = get_dataset_info("fashion_mnist")
    splits = {}
    for split, limit in ((info.train_split, settings.train_samples), (info.eval_split, settings.eval_samples)):
        raw = load_image_dataset("fashion_mnist", split)
        if limit:
            raw = raw.shuffle(seed=settings.seed).select(range(min(limit, len(raw))))
        splits[split] = InMemoryImageDataset.from_dataset(raw, image_size=32)
    return info, splits[info.train_split], splits[info.eval_split], DeviceAugmentation(info, seed=settings.seed)


def _evaluate(trainer) -> dict:
    metrics = trainer.evaluate()
    return {"top1": 100 * metrics["eval_accuracy"], "top5": 100 * metrics["eval_top5_accuracy"]}


def run_folder(name: str) -> str:
    """Sub-folder of a run: "student + RRD + KD" -> "student-RRD-KD"."""
    return name.replace(" + ", "-").replace(" ", "-")


def check_output_dir(settings: DemoSettings) -> None:
    """Refuse, before any work, to write over the models of an earlier demo (each of them is a finished run)."""
    from ..training.checkpoints import finished_outputs

    found = []
    for folder in ["teacher", *(run_folder(run) for run in STUDENT_RUNS)]:
        outputs = finished_outputs(os.path.join(settings.output_dir, folder))
        if outputs:
            found.append(f"{folder}/ ({', '.join(outputs)})")
    if os.path.exists(os.path.join(settings.output_dir, DEMO_RESULTS)):
        found.append(DEMO_RESULTS)
    if found and not settings.overwrite:
        raise FileExistsError(
            f"{settings.output_dir} already holds a demo: {'; '.join(found)}. Keep it and write the new one elsewhere "
            "with --output-dir NEW_FOLDER, or replace it with --overwrite."
        )


def run_demo(settings: DemoSettings | None = None) -> dict:
    """Train the teacher and the four students, print the table, write `demo_results.json`; return the summary."""
    import torch

    from ..data import cifar_image_processor
    from ..models import build_model
    from ..training.trainer import RRDTrainer

    settings = settings or DemoSettings()
    check_output_dir(settings)
    # Every run's arguments are built (and so checked: an RRD memory smaller than a batch, say) before any work, so
    # that a setting only the fourth run uses is refused now, not after the first three have trained.
    configs = {"teacher": _config(os.path.join(settings.output_dir, "teacher"), settings, (1, 0, 0), teacher=True)}
    configs.update({run: _config(os.path.join(settings.output_dir, run_folder(run)), settings, weights)
                    for run, weights in STUDENT_RUNS.items()})
    os.makedirs(settings.output_dir, exist_ok=True)
    start = time.time()
    steps = 1 + len(STUDENT_RUNS)
    print(f"[demo] loading Fashion-MNIST ({settings.train_samples or 'all'} train / "
          f"{settings.eval_samples or 'all'} test images)")
    info, train, test, augment = _load_data(settings)
    labels = dict(enumerate(info.class_names))
    processor = cifar_image_processor(mean=info.mean, std=info.std, size=32)
    common = dict(train_dataset=train, eval_dataset=test, batch_transform=augment, processing_class=processor)
    results, timings = {}, {}

    def new_model(name, seed):
        torch.manual_seed(seed)
        return build_model(name, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()})

    print(f"[demo] 1/{steps} training the teacher {settings.teacher} for {_epochs(settings.teacher_epochs)}")
    t0 = time.time()
    teacher_trainer = RRDTrainer(model=new_model(settings.teacher, settings.seed), args=configs["teacher"], **common)
    teacher_trainer.train()
    results["teacher"] = _evaluate(teacher_trainer)  # before saving, so the saved run record holds the accuracy
    teacher_trainer.save_model()
    timings["teacher"] = time.time() - t0
    teacher = teacher_trainer.model

    for step, (run, weights) in enumerate(STUDENT_RUNS.items(), start=2):
        print(f"[demo] {step}/{steps} training {run} ({settings.student}, {_epochs(settings.epochs)})")
        t0 = time.time()
        trainer = RRDTrainer(model=new_model(settings.student, settings.seed + 1),
                             teacher_model=teacher if any(weights[1:]) else None,
                             args=configs[run],
                             **common)
        trainer.train()
        results[run] = _evaluate(trainer)
        trainer.save_model()
        timings[run] = time.time() - t0

    total = time.time() - start
    totals = {"train_split_size": train.split_size, "eval_split_size": test.split_size}
    summary = {"results": results, "seconds": timings, "total_seconds": total, "weights": STUDENT_RUNS,
               "num_train": len(train), "num_eval": len(test), **totals,
               "evaluated_on": _images(len(test), test.split_size, "test"), "settings": dataclasses.asdict(settings)}
    with open(os.path.join(settings.output_dir, DEMO_RESULTS), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    print()
    print(format_table(settings, results, timings, total, num_train=len(train), num_eval=len(test),
                       train_total=train.split_size, eval_total=test.split_size))
    return summary


def _images(count: int, total: int | None, split: str) -> str:
    """'256 of the 60,000 training images' for a subset (an accuracy on part of a split is not the split's), else
    '10,000 test images'."""
    if total is not None and count < total:
        return f"{count:,} of the {total:,} {split} images"
    return f"{count:,} {split} images"


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _seconds(value: float | None) -> str:
    """A run's wall time for the table: tenths below 100 s (a short run is not "0"), whole seconds above."""
    if value is None:
        return "-"
    return f"{value:.1f}" if round(value, 1) < 100 else f"{value:.0f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def format_table(settings: DemoSettings, results: dict, timings: dict, total: float, *, num_train: int,
                 num_eval: int, train_total: int | None = None, eval_total: int | None = None) -> str:
    """The table the demo prints: the setting (data, budget, seed), one row per model (top-1, top-5 and the wall
    time of training and evaluating it), the verdict of this run. `train_total`/`eval_total`: the splits' full
    sizes, so that a subset is called one."""
    partial = (train_total and num_train < train_total) or (eval_total and num_eval < eval_total)
    subset = " (seeded subsets)" if partial else ""
    lines = [
        f"Fashion-MNIST: {_images(num_train, train_total, 'training')}, {_images(num_eval, eval_total, 'test')}"
        f"{subset}. Teacher {settings.teacher} "
        f"({_epochs(settings.teacher_epochs)}); student {settings.student}, {_epochs(settings.epochs)} per run; batch "
        f"{settings.batch_size}, SGD lr {settings.learning_rate} cosine, RRD memory {settings.memory_size}. "
        f"Seed {settings.seed}, one seed.",
        "",
        f"| {'model':<18} | {'top-1 %':>7} | {'top-5 %':>7} | {'time s':>6} |",
        f"|{'-' * 20}|{'-' * 9}|{'-' * 9}|{'-' * 8}|",
    ]
    for name, metrics in results.items():
        lines.append(f"| {name:<18} | {metrics['top1']:>7.2f} | {metrics['top5']:>7.2f} "
                     f"| {_seconds(timings.get(name)):>6} |")
    lines.append("")
    alone, kd = results["student alone"]["top1"], results["student + KD"]["top1"]
    for run in ("student + RRD", "student + RRD + KD"):
        top1 = results[run]["top1"]
        lines.append(f"{run[len('student + '):]}: {top1 - alone:+.2f} top-1 points over the student alone, "
                     f"{top1 - kd:+.2f} over KD.")
    lines.append(f"One seed ({settings.seed}) on a short budget: this is one sample, not the method's ranking. Rerun "
                 "with other --seed values and compare the runs with `rrd-hf aggregate` before concluding.")
    lines.append(f"Total {_duration(total)}. Every model is saved, Hub-ready, under {settings.output_dir}/ (e.g. "
                 f"{os.path.join(settings.output_dir, run_folder('student + RRD + KD'))}; load it with "
                 "AutoModelForImageClassification).")
    return "\n".join(lines)
