"""The embedded demo: a real dataset, offline, about ten minutes on two CPU cores.

It trains a small teacher, then the same small student three ways on the same budget (alone, with KD, with RRD),
prints the table and saves the RRD student as a Hub-ready checkpoint. Data: Fashion-MNIST (MIT), read from the
Debian package `dataset-fashion-mnist` when installed, else from the Hub (`zalando-datasets/fashion_mnist`).

    rrd-hf demo                                   # defaults below
    rrd-hf demo --train-samples 60000 --epochs 10 # the full training set, longer
"""

from __future__ import annotations

import argparse
import json
import os
import time

__all__ = ["main", "run_demo"]

STUDENT_RUNS = {  # name: (ce, kd, rrd) weights
    "student alone": (1.0, 0.0, 0.0),
    "student + KD": (0.1, 0.9, 0.0),  # the CIFAR benchmark's KD weights (γ=0.1, α=0.9, T=4)
    "student + RRD": (1.0, 0.0, 1.0),  # the published RRD weights (γ=1, β=1)
}


def _config(output_dir, args, weights, teacher=False):
    from .config import RRDConfig

    ce, kd, rrd = weights
    return RRDConfig(
        output_dir=output_dir,
        num_train_epochs=args.teacher_epochs if teacher else args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=args.learning_rate,
        optim="sgd",
        optim_args="momentum=0.9",
        weight_decay=5e-4,
        decay_all_parameters=True,
        lr_scheduler_type="cosine",
        max_grad_norm=0.0,
        ce_weight=ce,
        kd_weight=kd,
        rrd_weight=rrd,
        memory_size=args.memory_size,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        seed=args.seed,
        use_cpu=not args.gpu,
        disable_tqdm=False,
    )


def _load_data(args):
    from .data import DeviceAugmentation, InMemoryImageDataset, get_dataset_info, load_image_dataset

    info = get_dataset_info("fashion_mnist")
    splits = {}
    for split, limit in ((info.train_split, args.train_samples), (info.eval_split, args.eval_samples)):
        raw = load_image_dataset("fashion_mnist", split)
        if limit:
            raw = raw.shuffle(seed=args.seed).select(range(min(limit, len(raw))))
        splits[split] = InMemoryImageDataset.from_dataset(raw, image_size=32)
    return info, splits[info.train_split], splits[info.eval_split], DeviceAugmentation(info, seed=args.seed)


def _evaluate(trainer) -> dict:
    metrics = trainer.evaluate()
    return {"top1": 100 * metrics["eval_accuracy"], "top5": 100 * metrics["eval_top5_accuracy"]}


def run_demo(args) -> dict:
    import torch

    from .models import build_model, cifar_image_processor
    from .trainer import RRDTrainer

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    start = time.time()
    print(f"[demo] loading Fashion-MNIST ({args.train_samples or 'all'} train / {args.eval_samples or 'all'} test images)")
    info, train, test, augment = _load_data(args)
    labels = dict(enumerate(info.class_names))
    processor = cifar_image_processor(mean=info.mean, std=info.std, size=32)
    common = dict(train_dataset=train, eval_dataset=test, batch_transform=augment, processing_class=processor)
    results, timings = {}, {}

    def new_model(name, seed):
        torch.manual_seed(seed)
        return build_model(name, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()})

    print(f"[demo] 1/4 training the teacher {args.teacher} for {args.teacher_epochs} epochs")
    t0 = time.time()
    teacher_trainer = RRDTrainer(model=new_model(args.teacher, args.seed),
                                 args=_config(os.path.join(args.output_dir, "teacher"), args, (1, 0, 0), teacher=True),
                                 **common)
    teacher_trainer.train()
    teacher_trainer.save_model()
    results["teacher"], timings["teacher"] = _evaluate(teacher_trainer), time.time() - t0
    teacher = teacher_trainer.model

    for step, (run, weights) in enumerate(STUDENT_RUNS.items(), start=2):
        print(f"[demo] {step}/4 training {run} ({args.student}, {args.epochs} epochs)")
        t0 = time.time()
        out = os.path.join(args.output_dir, run.replace(" + ", "-").replace(" ", "-"))
        trainer = RRDTrainer(model=new_model(args.student, args.seed + 1), teacher_model=teacher if any(weights[1:]) else None,
                             args=_config(out, args, weights), **common)
        trainer.train()
        trainer.save_model()
        results[run], timings[run] = _evaluate(trainer), time.time() - t0

    summary = {"results": results, "seconds": timings, "total_seconds": time.time() - start, "settings": vars(args)}
    with open(os.path.join(args.output_dir, "demo_results.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    _print_table(args, results, timings, summary["total_seconds"])
    return summary


def _print_table(args, results, timings, total):
    print(f"\nFashion-MNIST, teacher {args.teacher}, student {args.student}, {args.epochs} student epochs, seed {args.seed}")
    print(f"{'model':<16} {'top-1 %':>8} {'top-5 %':>8} {'time s':>8}")
    for name, metrics in results.items():
        print(f"{name:<16} {metrics['top1']:>8.2f} {metrics['top5']:>8.2f} {timings[name]:>8.0f}")
    print()
    rrd = results["student + RRD"]["top1"]
    for other, label in (("student alone", "the student alone"), ("student + KD", "KD")):
        gain = rrd - results[other]["top1"]
        print(f"RRD {'beats' if gain > 0 else 'does not beat'} {label} here: {gain:+.2f} top-1 points.")
    print("One seed on a short budget: rerun with other --seed values to see the spread before concluding.")
    print(f"Total {total / 60:.1f} min. The RRD student is saved, Hub-ready, in "
          f"{os.path.join(args.output_dir, 'student-RRD')} (load it with AutoModelForImageClassification).")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="rrd-hf demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo_output")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--train-samples", type=int, default=15000, help="0 = all 60,000")
    parser.add_argument("--eval-samples", type=int, default=0, help="0 = all 10,000")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each student run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--memory-size", type=int, default=4096, help="RRD memory (16384 in the paper, for 50k images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true", help="use the accelerator when there is one")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    return run_demo(args)


if __name__ == "__main__":
    main()
