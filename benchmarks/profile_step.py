"""Where the time of one training step goes: rrd_hf's Trainer path next to the plain loop of side_by_side.py.

Both run in this process on the same data, models, method and workers as side_by_side.py. Each step's wall time
is split into: data loading (the next batch from the DataLoader), inputs to the device (+ rrd_hf's batch
augmentation), student forward, teacher forward, loss / method (everything else inside the loss: KD, RRD heads and
memory, CRD banks, the teacher input adapter), backward, optimizer step, and the rest ("Trainer / loop": what
`Trainer` does around a step — callbacks, loss accumulation, NaN filter, FLOP counting, LR scheduler, zeroing
gradients, logging — or the plain loop's meters). Times are exclusive (a part inside another counts once) and
averaged over `--steps` steps after `--warmup` steps; the sides run in turn `--rounds` times (median per part).

rrd_hf is timed through `python -m rrd_hf.train`'s `main` with a recipe of side_by_side.py, by wrapping the Trainer
methods every Trainer has (`get_batch_samples`, `training_step`, `compute_loss`, and `_prepare_inputs` when
present), forward hooks on the student and teacher, the accelerator's `backward` and torch's global optimizer-step
hooks: rrd_hf's code is not changed. On CUDA every boundary synchronises (`--no-sync` to measure overlap instead),
which removes the overlap of host and device work: compare the parts, not the total, with side_by_side.py.

    python benchmarks/profile_step.py                                # resnet32x4 -> resnet8x4, KD, 20 steps
    python benchmarks/profile_step.py --pair resnet20-resnet8 --method RRD --steps 30
    python benchmarks/profile_step.py --rrd-flags "--data_pipeline per_sample" --trace   # + torch.profiler tables

Data as in side_by_side.py (`--data`, else `$RRD_HF_CIFAR10`, else data/cifar10, else generated images). The table
goes to a result file, benchmarks/results/profile_step-<hardware>-torch<version>-<commit>.json by default
(benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import side_by_side as sbs  # noqa: E402
from json_output import add_result_arguments, write_result  # noqa: E402
from plain_loop import PlainRun  # noqa: E402

PARTS = ("data loading", "inputs to device (+ augmentation)", "student forward", "teacher forward", "loss / method",
         "backward", "optimizer", "other (Trainer / loop)")


class PartTimer:
    """Exclusive wall time per named part, counted only while `active` (the measured window)."""

    def __init__(self, cuda: bool, sync: bool):
        self.sync = cuda and sync
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [name, start, time spent in nested parts]
        self.active = False
        self.window_start = self.window = None
        self.profiler = None

    def _now(self) -> float:
        if self.sync:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def begin(self, name: str) -> None:
        self.stack.append([name, self._now(), 0.0])

    def end(self, name: str) -> None:
        if not self.stack or self.stack[-1][0] != name:
            return  # a part that began before the hooks were installed
        _, start, nested = self.stack.pop()
        elapsed = self._now() - start
        if self.active:
            self.totals[name] += elapsed - nested
        if self.stack:
            self.stack[-1][2] += elapsed

    @contextmanager
    def __call__(self, name: str):
        self.begin(name)
        try:
            yield
        finally:
            self.end(name)

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            with self(name):
                return function(*args, **kwargs)

        return timed

    def open_window(self, trace: bool) -> None:
        self.active, self.window_start = True, self._now()
        if trace:
            import torch.profiler as tp

            activities = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if self.sync else [])
            self.profiler = tp.profile(activities=activities)
            self.profiler.start()

    def close_window(self) -> None:
        if self.active:
            self.window = self._now() - self.window_start
            self.active = False
            if self.profiler is not None:
                self.profiler.stop()

    def per_step_ms(self, steps: int) -> dict[str, float]:
        parts = {name: 1e3 * self.totals.get(name, 0.0) / steps for name in PARTS if name != PARTS[-1]}
        parts[PARTS[-1]] = 1e3 * (self.window or 0.0) / steps - sum(parts.values())
        parts["total"] = 1e3 * (self.window or 0.0) / steps
        return parts


class StepCounter:
    """Opens the window when step `warmup` ends (the next batch fetch is the first timed one) and closes it after
    `warmup + steps` steps; times the optimizer through torch's global step hooks."""

    def __init__(self, timer: PartTimer, warmup: int, steps: int, trace: bool):
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.timer, self.warmup, self.steps, self.trace, self.count = timer, warmup, steps, trace, 0
        self.handles = [register_optimizer_step_pre_hook(lambda *a: timer.begin("optimizer")),
                        register_optimizer_step_post_hook(self._post)]

    def _post(self, *args) -> None:
        self.timer.end("optimizer")
        self.count += 1

    def before_fetch(self) -> None:
        """Called at the start of every batch fetch: a step boundary."""
        if self.count == self.warmup and not self.timer.active and self.timer.window is None:
            self.timer.open_window(self.trace)
        elif self.count == self.warmup + self.steps:
            self.timer.close_window()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def profile_rrd_hf(spec: dict, args, cuda: bool) -> PartTimer:
    """Run `rrd_hf.commands.train.main` on the recipe with timing wrappers around the Trainer's step."""
    import torch

    from rrd_hf.commands.train import main as rrd_hf_train
    from rrd_hf.training.trainer import RRDTrainer

    timer = PartTimer(cuda, not args.no_sync)
    counter = StepCounter(timer, args.warmup, args.steps, args.trace)
    originals = {}

    def wrap_class(name: str, part: str | None, before=None):
        original = getattr(RRDTrainer, name, None)
        if original is None:
            return
        originals[name] = RRDTrainer.__dict__.get(name)

        def timed(self, *a, **k):
            if before is not None:
                before(self)
            if part is None:
                return original(self, *a, **k)
            with timer(part):
                return original(self, *a, **k)

        setattr(RRDTrainer, name, timed)

    installed = set()

    def install_instance_hooks(trainer) -> None:
        if id(trainer) in installed:
            return
        installed.add(id(trainer))
        for module, part in ((trainer.model, "student forward"), (getattr(trainer, "teacher", None), "teacher forward")):
            if isinstance(module, torch.nn.Module):
                module.register_forward_pre_hook(lambda m, a, k, part=part: timer.begin(part), with_kwargs=True)
                module.register_forward_hook(lambda m, a, o, part=part: timer.end(part))
        trainer.accelerator.backward = timer.wrap("backward", trainer.accelerator.backward)

    wrap_class("get_batch_samples", "data loading", before=lambda self: counter.before_fetch())
    wrap_class("training_step", PARTS[-1], before=install_instance_hooks)
    wrap_class("_prepare_inputs", "inputs to device (+ augmentation)")
    wrap_class("compute_loss", "loss / method")
    recipe = sbs.rrd_hf_recipe(spec)
    recipe["max_steps"] = args.warmup + args.steps + 1
    import yaml

    recipe_path = Path(spec["output_dir"]) / "recipe.yaml"
    recipe_path.parent.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    try:
        rrd_hf_train([str(recipe_path), "--output_dir", spec["output_dir"], *shlex.split(spec["flags"])])
    finally:
        counter.remove()
        for name, original in originals.items():
            if original is None:
                delattr(RRDTrainer, name)
            else:
                setattr(RRDTrainer, name, original)
    timer.close_window()
    return timer


def profile_plain(spec: dict, args, cuda: bool) -> PartTimer:
    """The plain loop of side_by_side.py, its parts timed by the same timer."""
    timer = PartTimer(cuda, not args.no_sync)
    counter = StepCounter(timer, args.warmup, args.steps, args.trace)
    run = PlainRun(spec)
    run.student.train()
    step = 0
    try:
        while step < args.warmup + args.steps + 1:
            iterator = iter(run.loader)
            while step < args.warmup + args.steps + 1:
                counter.before_fetch()
                timer.begin("data loading")
                batch = next(iterator, None)
                timer.end("data loading")
                if batch is None:
                    break
                with timer(PARTS[-1]):
                    run.step(*batch, timer=lambda name: timer(PARTS[-1] if name.startswith("other") else
                                                              "inputs to device (+ augmentation)"
                                                              if name == "host to device" else name))
                step += 1
    finally:
        counter.remove()
    timer.close_window()
    return timer


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="resnet32x4-resnet8x4", choices=list(sbs.PAIRS))
    parser.add_argument("--method", default="KD", choices=list(sbs.METHODS))
    parser.add_argument("--data", default=None, help="CIFAR-10 folder in the Hub layout (default $RRD_HF_CIFAR10, else "
                                                      "data/cifar10, else generated images)")
    parser.add_argument("--generated", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5, help="steps before the timed ones")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--rrd-flags", default="", help="flags added to the rrd_hf run (e.g. a data path)")
    parser.add_argument("--sides", default="rrd_hf,plain")
    parser.add_argument("--rounds", type=int, default=2, help="run the sides in turn this many times (median)")
    parser.add_argument("--no-sync", action="store_true", help="on CUDA, do not synchronise at part boundaries")
    parser.add_argument("--trace", action="store_true", help="also print torch.profiler's top operators per side")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    add_result_arguments(parser)
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    sys.path.insert(0, str(sbs.REPO))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rrd_hf.data import get_dataset_info

    cuda = torch.cuda.is_available() and not args.cpu
    info = get_dataset_info("cifar10")
    teacher_name, student_name = sbs.PAIRS[args.pair]
    # Enough images that the timed steps never cross an epoch boundary (a new epoch restarts the workers).
    num_images = args.batch_size * (args.warmup + args.steps + 2)
    results = {}
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        work = Path(tmp)
        data = Path(args.data) if args.data else sbs.default_data()
        if args.generated or not data.is_dir():
            data = sbs.generate_cifar10(work / "data", num_images, args.batch_size)
            origin = "generated images"
        else:
            origin = str(data)
        teacher_path = sbs.save_random_teacher(teacher_name, work / "teacher", info.class_names, info.mean, info.std, 0)
        spec = {
            "data": str(data.resolve()), "num_images": num_images, "num_eval_images": None,
            "batch_size": args.batch_size, "workers": args.workers, "epochs": 1, "seed": 0, "warmup_steps": 1,
            "lr_schedule": "constant", "eval": False, "plain_meters": "repdistiller", "threads": args.threads,
            "cpu": args.cpu, "protocol": sbs.PROTOCOL, "mean": list(info.mean), "std": list(info.std),
            "num_labels": len(info.class_names), "student": student_name, "teacher_path": str(teacher_path),
            "weights": sbs.METHODS[args.method], "output_dir": str(work / "run"), "flags": args.rrd_flags,
        }
        timers, rounds = {}, defaultdict(list)
        for round_ in range(args.rounds):  # sides in turn, so that machine noise hits both alike
            for side in [s.strip() for s in args.sides.split(",") if s.strip()]:
                profile = profile_rrd_hf if side == sbs.RRD_HF else profile_plain
                spec["output_dir"] = str(work / f"run-{side}-{round_}")
                timers[side] = profile(spec, args, cuda)
                rounds[side].append(timers[side].per_step_ms(args.steps))
                print(f"round {round_ + 1}/{args.rounds} {side}: {rounds[side][-1]['total']:.1f} ms per step", flush=True)
        for side, values in rounds.items():
            results[side] = {part: statistics.median(v[part] for v in values) for part in values[0]}

    where = sbs._device_name(cuda)
    print(f"\n{args.pair} {args.method}, batch {args.batch_size}, {args.workers} workers, data {origin}, {where}, "
          f"torch {torch.__version__}; ms per step, mean of {args.steps} steps after {args.warmup}, median of "
          f"{args.rounds} rounds "
          f"({'synchronised at every boundary' if cuda and not args.no_sync else 'host wall clock'}); "
          f"load average {os.getloadavg()[0]:.2f}")
    sides = list(results)
    print(f"{'part':<36}" + "".join(f"{s:>12}" for s in sides) + (f"{'difference':>12}" if len(sides) == 2 else ""))
    for part in (*PARTS, "total"):
        values = [results[s][part] for s in sides]
        line = f"{part:<36}" + "".join(f"{v:>12.1f}" for v in values)
        if len(sides) == 2:
            line += f"{values[0] - values[1]:>+12.1f}"
        print(line)
    if args.trace:
        for side, timer in timers.items():
            if timer.profiler is not None:
                sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
                print(f"\n== {side}: torch.profiler, top operators over the timed steps")
                print(timer.profiler.key_averages().table(sort_by=sort, row_limit=20))
    write_result(args, "profile_step", {"pair": args.pair, "method": args.method, "device": where, "data": origin,
                                        "batch_size": args.batch_size, "workers": args.workers, "warmup": args.warmup,
                                        "steps": args.steps, "rounds": args.rounds, "rrd_flags": args.rrd_flags,
                                        "synchronised": cuda and not args.no_sync, "ms_per_step": results},
                 device="cuda" if cuda else "cpu", argv=argv)
    return results


if __name__ == "__main__":
    main()
