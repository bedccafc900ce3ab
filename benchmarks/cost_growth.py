"""How a training step's cost grows with the memory size K, the batch size and the dataset size, per method.

Methods: RRD with its FIFO memory (K teacher embeddings), RRD with the momentum memory (one slot per training
sample, K anchors drawn per step), CRD (two dataset-sized banks, K negatives drawn from the other classes, as
the benchmark's CIFAR runs do) and CRD with uniform negatives. Each is timed through real `RRDTrainer` steps
(`training_step` + `optimizer.step()` + zeroing, as in step_time.py) with the same small student and teacher, on
one fixed batch of random pixels. A step with KD alone at the same batch size, timed in turn with every method step
(ABAB...), is the reference: the median difference is what the method itself costs on top of the two forwards,
the backward and the update (every method step runs KD too).
The dataset enters only through its size (a stand-in train set with labels and indices, never iterated), which
sizes the momentum memory and CRD's banks; FIFO RRD does not depend on it, which the table shows as a control.

    python benchmarks/cost_growth.py                   # three sweeps
    python benchmarks/cost_growth.py --quick           # two values per sweep, 2 timed steps
    python benchmarks/cost_growth.py --sweeps memory --memory-sizes 1024 65536 --steps 10

The table goes to a result file, benchmarks/results/cost_growth-<hardware>-torch<version>-<commit>.json by default
(benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from json_output import add_result_arguments, write_result  # noqa: E402

METHODS = {  # name: RRDConfig fields (K is filled in per point)
    "RRD fifo": lambda k: {"rrd_weight": 1.0, "memory_type": "fifo", "memory_size": k},
    "RRD momentum": lambda k: {"rrd_weight": 1.0, "memory_type": "momentum", "memory_size": k},
    "CRD": lambda k: {"rrd_weight": 0.0, "distill_method": "crd",
                      "distill_kwargs": {"num_negatives": k, "negatives": "other_class"}},
    "CRD uniform": lambda k: {"rrd_weight": 0.0, "distill_method": "crd",
                              "distill_kwargs": {"num_negatives": k, "negatives": "uniform"}},
}
REFERENCE = "KD"


class StandInTrainSet:
    """A train set of `n` samples that is never iterated: only its length, labels and indices size the state."""

    def __init__(self, n: int, num_labels: int, image_size: int = 32):
        import torch

        self.labels = torch.arange(n) % num_labels
        self.index = torch.arange(n)
        self.image_size = image_size

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        import torch

        return {"pixel_values": torch.zeros(3, self.image_size, self.image_size), "labels": int(self.labels[i]),
                "index": int(self.index[i])}


def build_trainer(fields: dict, batch_size: int, num_samples: int, args, output_dir: str):
    import torch

    from rrd_hf import RRDConfig, RRDTrainer
    from rrd_hf.models import build_model

    config = RRDConfig(
        output_dir=output_dir, per_device_train_batch_size=batch_size, optim="sgd", optim_args="momentum=0.9",
        learning_rate=0.05, weight_decay=5e-4, max_grad_norm=0.0, use_cpu=args.cpu, report_to="none",
        disable_tqdm=True, save_strategy="no", seed=0, ce_weight=1.0, kd_weight=1.0, **fields,
    )
    torch.manual_seed(0)
    student = build_model(args.student, num_labels=args.num_labels)
    teacher = build_model(args.teacher, num_labels=args.num_labels)
    trainer = RRDTrainer(model=student, teacher_model=teacher, args=config,
                         train_dataset=StandInTrainSet(num_samples, args.num_labels))
    trainer.model.to(trainer.args.device)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # normally set by the training loop
    return trainer


def _batch(batch_size: int, num_samples: int, num_labels: int, device):
    import torch

    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator).to(device),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=generator).to(device),
        "index": torch.randperm(num_samples, generator=generator)[:batch_size].to(device),
    }


def _one_step(trainer, batch, sync) -> float:
    sync()
    start = time.perf_counter()
    trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - start


def time_against_reference(trainer, reference, batch_size: int, num_samples: int, args) -> tuple[list, list]:
    """Steps of the method and of the reference in turn (ABAB...), so that machine noise hits both alike."""
    import torch

    device = trainer.args.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batch = _batch(batch_size, num_samples, args.num_labels, device)
    reference_batch = _batch(batch_size, args.dataset_size, args.num_labels, device)
    mine, theirs = [], []
    for step in range(args.warmup + args.steps):
        a = _one_step(reference, reference_batch, sync)
        b = _one_step(trainer, batch, sync)
        if step >= args.warmup:
            theirs.append(a)
            mine.append(b)
    return mine, theirs


def state_elements(trainer) -> int:
    """Buffer elements the method keeps (memories, banks): what grows with K or with the dataset."""
    return sum(b.numel() for b in trainer.methods.buffers())


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", nargs="+", default=["memory", "batch", "dataset"],
                        choices=["memory", "batch", "dataset"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--dataset-sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--memory-size", type=int, default=16384, help="K held fixed in the other sweeps")
    parser.add_argument("--batch-size", type=int, default=64, help="batch held fixed in the other sweeps")
    parser.add_argument("--dataset-size", type=int, default=50_000, help="dataset size held fixed in the other sweeps")
    parser.add_argument("--teacher", default="resnet8")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--num-labels", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per point (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    parser.add_argument("--quick", action="store_true", help="two values per sweep, 2 timed steps")
    add_result_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.memory_sizes, args.batch_sizes, args.dataset_sizes = [1024, 16384], [32, 128], [10_000, 50_000]
        args.steps, args.warmup = 2, 1
        args.tag = args.tag or "quick"  # never under the name of a full sweep

    import torch

    args.cpu = args.cpu or not torch.cuda.is_available()
    points = []  # (sweep, method, K, batch, N)
    for sweep in args.sweeps:
        values = {"memory": args.memory_sizes, "batch": args.batch_sizes, "dataset": args.dataset_sizes}[sweep]
        for value in values:
            k = value if sweep == "memory" else args.memory_size
            b = value if sweep == "batch" else args.batch_size
            n = value if sweep == "dataset" else args.dataset_size
            points += [(sweep, method, k, b, n) for method in args.methods]
    batch_sizes = sorted({p[3] for p in points})
    where = torch.cuda.get_device_name() if not args.cpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.teacher} -> {args.student}, {args.num_labels} classes, {where}, median of {args.steps} steps after "
          f"{args.warmup}; load average {os.getloadavg()[0]:.2f}", flush=True)

    started = time.perf_counter()
    measured: dict[tuple, dict] = {}
    reference: dict[int, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # The constant part (two forwards, backward, update, KD) at every batch size, kept alive for the ABAB timing.
        references = {b: build_trainer({"rrd_weight": 0.0}, b, args.dataset_size, args, tmp) for b in batch_sizes}
        for point in points:
            _, method, k, b, n = point
            key = (method, k, b, n)
            if key not in measured:
                trainer = build_trainer(METHODS[method](k), b, n, args, tmp)
                mine, theirs = time_against_reference(trainer, references[b], b, n, args)
                measured[key] = {"ms": statistics.median(mine) * 1e3,
                                 "own_ms": statistics.median(m - t for m, t in zip(mine, theirs)) * 1e3,
                                 "state_elements": state_elements(trainer)}
                reference.setdefault(b, []).extend(theirs)
                del trainer
                gc.collect()
            row = measured[key]
            print(f"  {point[0]:<8} {method:<13} K={k:<6} batch={b:<4} N={n:<7} {row['ms']:8.1f} ms "
                  f"({row['own_ms']:+.1f} over {REFERENCE})", flush=True)
    reference = {b: statistics.median(times) for b, times in reference.items()}

    rows = []
    for sweep in args.sweeps:
        print(f"\nsweep: {sweep} (K={args.memory_size}, batch {args.batch_size}, N={args.dataset_size} unless varied); "
              f"ms per step, and in brackets the method's own cost: the median difference to a {REFERENCE} step of the same "
              "batch timed in turn")
        varied = {"memory": "K", "batch": "batch", "dataset": "N"}[sweep]
        sweep_points = [p for p in points if p[0] == sweep]
        values = list(dict.fromkeys(p[{"memory": 2, "batch": 3, "dataset": 4}[sweep]] for p in sweep_points))
        print(f"{'method':<14}" + "".join(f"{varied + '=' + format(v, ','):>22}" for v in values))
        for method in args.methods:
            cells = []
            for value in values:
                k = value if sweep == "memory" else args.memory_size
                b = value if sweep == "batch" else args.batch_size
                n = value if sweep == "dataset" else args.dataset_size
                row = measured[(method, k, b, n)]
                own = row["own_ms"]
                cells.append(f"{row['ms']:.1f} ({own:+.1f})")
                rows.append({"sweep": sweep, "method": method, "memory_size": k, "batch_size": b, "dataset_size": n,
                             "ms_per_step": row["ms"], "reference_ms": reference[b] * 1e3,
                             "method_ms": own, "state_elements": row["state_elements"]})
            print(f"{method:<14}" + "".join(f"{c:>22}" for c in cells))
        if sweep == "batch":
            print(f"{REFERENCE + ' (reference)':<14}" + "".join(f"{reference[v] * 1e3:>22.1f}" for v in values))
    print(f"\nstate = buffer elements the method keeps; total {time.perf_counter() - started:.0f} s")
    if "dataset" in args.sweeps:
        state = {m: [r["state_elements"] for r in rows if r["sweep"] == "dataset" and r["method"] == m]
                 for m in args.methods}
        for method, elements in state.items():
            grows = len(set(elements)) > 1
            print(f"  {method:<13} state {' -> '.join(format(e, ',') for e in elements)} elements over N = "
                  f"{', '.join(format(n, ',') for n in args.dataset_sizes)}: "
                  f"{'grows with the dataset' if grows else 'independent of the dataset'}")
    write_result(args, "cost_growth", {"device": where, "teacher": args.teacher, "student": args.student,
                                       "num_labels": args.num_labels, "steps": args.steps, "warmup": args.warmup,
                                       "reference": {str(b): t * 1e3 for b, t in reference.items()}, "rows": rows},
                 device="cpu" if args.cpu else "cuda", argv=argv)
    return rows


if __name__ == "__main__":
    main()
