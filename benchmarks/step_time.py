"""Time one training step of each distillation method through RRDTrainer, in one run, and print ratios to KD.

    python benchmarks/step_time.py                         # CE, KD, RRD, RRD+KD: resnet32x4 -> resnet8x4, batch 64
    python benchmarks/step_time.py --methods all           # every method of rrd_hf.methods too, with extra state
    python benchmarks/step_time.py --teacher resnet56 --student resnet20 --repeats 20

The table also goes to a result file, benchmarks/results/step_time-<hardware>-torch<version>-<commit>.json by default
(benchmarks/README.md).

A step is what `Trainer` does per optimizer step: `training_step` (teacher forward under no_grad, student forward,
losses, memory update, backward) plus `optimizer.step()` and zeroing the gradients. The methods are timed
round-robin (one step of each, repeated), so machine noise hits all of them alike. The ratio to KD is given for
the median step and for the fastest step; where they disagree, the machine was noisy: repeat with more steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from json_output import add_result_arguments, write_result  # noqa: E402

from rrd_hf import RRDConfig, RRDTrainer  # noqa: E402
from rrd_hf.models import build_model  # noqa: E402

NO_RRD = dict(rrd_weight=0.0)
CORE = {  # loss weights as in the published runs
    "CE only": dict(kd_weight=0.0, rrd_weight=0.0),
    "KD": dict(kd_weight=1.0, rrd_weight=0.0),
    "RRD": dict(kd_weight=0.0, rrd_weight=1.0),
    "RRD+KD": dict(kd_weight=1.0, rrd_weight=1.0),
}
# Main-stage steps of the other methods (AB and FSP train only in their init stage: their main step is CE alone).
OTHERS = {name.upper(): dict(NO_RRD, distill_method=name) for name in
          ("dkd", "kd_ls", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ft", "nst", "crd")}
OTHERS["RRD+DKD"] = dict(distill_method="dkd", rrd_weight=1.0)


class _Indexed(torch.utils.data.Dataset):
    """A stand-in train set of CIFAR size: CRD's banks and index sampling are sized by it."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"pixel_values": torch.zeros(3, 32, 32), "labels": 0, "index": i}


def build_trainer(losses, args, output_dir, device_is_cpu):
    config = RRDConfig(
        output_dir=output_dir, per_device_train_batch_size=args.batch_size, memory_size=args.memory_size,
        optim="sgd", optim_args="momentum=0.9", learning_rate=0.05, weight_decay=5e-4, max_grad_norm=0.0,
        use_cpu=device_is_cpu, bf16=args.bf16, report_to="none", disable_tqdm=True, save_strategy="no", seed=0,
        **losses,
    )
    torch.manual_seed(0)
    student = build_model(args.student, num_labels=100)
    teacher = build_model(args.teacher, num_labels=100) if config.needs_teacher else None
    trainer = RRDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=_Indexed(args.num_samples))
    trainer.model.to(trainer.args.device)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # normally set by the training loop
    return trainer


def extra_state(trainer) -> tuple[int, int]:
    """Parameters and buffer elements the method adds next to the student (heads, regressors, memories)."""
    params = sum(p.numel() for p in trainer.methods.parameters())
    buffers = sum(b.numel() for b in trainer.methods.buffers())
    return params, buffers


def one_step(trainer, batch):
    trainer.training_step(trainer.model, batch)
    trainer.check_finite_before_step()  # what Trainer's on_pre_optimizer_step runs: the NaN/inf guard's share
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--memory-size", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    parser.add_argument("--methods", default="core", help="core (CE, KD, RRD, RRD+KD) or all")
    parser.add_argument("--num-samples", type=int, default=50000, help="training-set size (CRD's banks)")
    parser.add_argument("--guard", action="store_true",
                        help="also time RRD+KD with check_finite=False: the cost of the NaN/inf guard")
    add_result_arguments(parser)
    args = parser.parse_args(argv)
    methods = dict(CORE, **(OTHERS if args.methods == "all" else {}))
    if args.guard:
        methods["RRD+KD unchecked"] = dict(CORE["RRD+KD"], check_finite=False)

    device_is_cpu = args.cpu or not torch.cuda.is_available()
    sync = (lambda: None) if device_is_cpu else torch.cuda.synchronize
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: build_trainer(losses, args, tmp, device_is_cpu) for name, losses in methods.items()}
        device = next(iter(trainers.values())).args.device
        generator = torch.Generator().manual_seed(0)
        batch = {
            "pixel_values": torch.randn(args.batch_size, 3, 32, 32, generator=generator).to(device),
            "labels": torch.randint(0, 100, (args.batch_size,), generator=generator).to(device),
            "index": torch.randperm(args.num_samples, generator=generator)[: args.batch_size].to(device),
        }
        times = {name: [] for name in trainers}
        for repeat in range(args.warmup + args.repeats):
            for name, trainer in trainers.items():
                sync()
                start = time.perf_counter()
                one_step(trainer, batch)
                sync()
                if repeat >= args.warmup:
                    times[name].append(time.perf_counter() - start)

    where = torch.cuda.get_device_name() if not device_is_cpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.teacher} -> {args.student}, batch {args.batch_size}, memory {args.memory_size}, "
          f"{'bf16' if args.bf16 else 'fp32'}, {where}, {args.repeats} steps each")
    kd_median, kd_best = statistics.median(times["KD"]), min(times["KD"])
    print(f"{'method':<16} {'median ms':>10} {'x KD':>6} {'best ms':>9} {'x KD':>6} {'extra params':>13} "
          f"{'extra buffers':>14}")
    rows = []
    for name, values in times.items():
        median, best = statistics.median(values), min(values)
        params, buffers = extra_state(trainers[name])
        print(f"{name:<16} {median * 1e3:>10.1f} {median / kd_median:>6.3f} {best * 1e3:>9.1f} {best / kd_best:>6.3f} "
              f"{params:>13,} {buffers:>14,}")
        rows.append({"method": name, "median_ms": median * 1e3, "vs_kd_median": median / kd_median,
                     "best_ms": best * 1e3, "vs_kd_best": best / kd_best, "extra_params": params,
                     "extra_buffers": buffers})
    settings = {"teacher": args.teacher, "student": args.student, "batch_size": args.batch_size,
                "memory_size": args.memory_size, "precision": "bf16" if args.bf16 else "fp32", "repeats": args.repeats,
                "warmup": args.warmup, "num_samples": args.num_samples}
    write_result(args, "step_time", {"settings": settings, "rows": rows}, device="cpu" if device_is_cpu else "cuda",
                 argv=argv)
    return rows


if __name__ == "__main__":
    main()
