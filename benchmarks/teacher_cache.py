"""What an exact cache of the frozen teacher's outputs would save in a long run, measured without building it.

rrd_hf's augmentation is a pure function of (seed, epoch, sample index) (`rrd_hf.data.augmentation`): in an epoch
a training image is one of (2·padding + 1)² crops × 2 flips, 162 views for CIFAR's 4-pixel padding, and the frozen
teacher's outputs on a view never change. A cache keyed by (index, view) could skip the teacher's forward for
every view seen before. This script measures what that would buy, in one run:

1. **Hits**, from rrd_hf's own `augmentation_params`: for N samples and E epochs, the share of teacher forwards
   that repeat a view, per epoch and over the run, and the number of distinct views (the cache's entries).
2. **Memory**: entries × what the objective reads from the teacher (RRD: the frozen head's 128-d embedding; KD:
   the logits; both), in float32.
3. **Time**: the teacher's forward (as the trainer runs it: eval mode, no gradients, channels-last; BatchNorms
   folded with `--fold-teacher-batch-norm`, the trainer's opt-in) on a whole batch against its forward on the
   batch's misses only, at the miss rate of every epoch (misses per batch are binomial
   under shuffling), plus the cache's gather and scatter; and one training step of the student (forward,
   cross-entropy, backward), to say what share of a step the saving is. The RRD loss, data and Trainer are left
   out of that step (`profile_step.py` times them).
4. **Exactness**: whether a sample's teacher outputs computed within a sub-batch equal, bitwise, those computed in
   the whole batch (so that a cache would return exactly what the forward would have).

    python benchmarks/teacher_cache.py                         # resnet32x4 teacher, resnet8x4 student, CIFAR-100 sizes
    python benchmarks/teacher_cache.py --teacher resnet20 --student resnet8
    python benchmarks/teacher_cache.py --epochs 240 --num-samples 50000 --tag c100-240

The results go to a result file, benchmarks/results/teacher_cache-<hardware>-torch<version>-<commit>.json by default
(benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from json_output import add_result_arguments, write_result  # noqa: E402


def view_hits(num_samples: int, epochs: int, seed: int = 0, padding: int = 4, flip_prob: float = 0.5):
    """Per epoch, how many of the `num_samples` views rrd_hf's augmentation draws were drawn in an earlier epoch;
    and the number of distinct (sample, view) pairs after the last epoch."""
    from rrd_hf.data.augmentation import augmentation_params

    side = 2 * padding + 1
    seen = torch.zeros(num_samples, side * side * 2, dtype=torch.bool)
    index = torch.arange(num_samples)
    hits = []
    for epoch in range(epochs):
        top, left, flip = augmentation_params(seed, epoch, index, padding, flip_prob)
        view = (top * side + left) * 2 + flip.long()
        hits.append(int(seen[index, view].sum()))
        seen[index, view] = True
    return hits, int(seen.sum())


def median_ms(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def build_teacher(name: str, num_labels: int, batch: torch.Tensor, fold: bool = False):
    """The teacher as RRDTrainer runs it: eval mode, no gradients, channels-last; with `fold`, its BatchNorms folded
    into the convolutions before them (the trainer's `fold_teacher_batch_norm=True`)."""
    from rrd_hf.classifiers.batch_norm_folding import fold_batch_norms
    from rrd_hf.models import build_model

    teacher = build_model(name, num_labels=num_labels).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, as after training
        for module in teacher.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    if fold:
        teacher, _ = fold_batch_norms(teacher, lambda model: model(pixel_values=batch, output_hidden_states=True))
    return teacher


def teacher_outputs(teacher, pixels: torch.Tensor):
    with torch.inference_mode():
        output = teacher(pixel_values=pixels, output_hidden_states=True)
    return output.logits, output.hidden_states[-1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--num-samples", type=int, default=50000, help="training images (CIFAR-100: 50,000)")
    parser.add_argument("--epochs", type=int, default=240, help="the benchmark protocol's 240")
    parser.add_argument("--num-labels", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--padding", type=int, default=4)
    parser.add_argument("--embedding-dim", type=int, default=128, help="RRD's embedding (what a cache would keep)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per batch size (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fold-teacher-batch-norm", action="store_true",
                        help="fold the teacher's BatchNorms into its convolutions (the trainer's opt-in)")
    add_result_arguments(parser)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    batch_size = args.batch_size

    # 1. hits
    start = time.perf_counter()
    hits, entries = view_hits(args.num_samples, args.epochs, args.seed, args.padding)
    views = (2 * args.padding + 1) ** 2 * 2
    forwards = args.num_samples * args.epochs
    hit_rate = sum(hits) / forwards
    expected = 1 - views * (1 - (1 - 1 / views) ** args.epochs) / args.epochs  # uniform views, in closed form
    print(f"{args.num_samples} samples, {args.epochs} epochs, {views} views per sample (padding {args.padding}, "
          f"flip): {hit_rate:.1%} of the teacher's forwards repeat a view (uniform views: {expected:.1%}); "
          f"{entries:,} distinct views ({entries / args.num_samples:.1f} per sample); counted in "
          f"{time.perf_counter() - start:.1f} s")
    marks = sorted({0, 1, 9, 29, 59, 119, 179, args.epochs - 1} & set(range(args.epochs)))
    print("epoch " + " ".join(f"{e + 1:>6}" for e in marks))
    print("hits  " + " ".join(f"{hits[e] / args.num_samples:>6.1%}" for e in marks))

    # 2. memory
    sizes = {"RRD (embedding)": args.embedding_dim, "KD (logits)": args.num_labels,
             "RRD+KD": args.embedding_dim + args.num_labels}
    for what, floats in sizes.items():
        print(f"cache for {what:<16}: {entries * floats * 4 / 2**30:6.2f} GiB in float32 ({floats} floats per view)")

    # 3. time
    pixels = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    teacher = build_teacher(args.teacher, args.num_labels, pixels, fold=args.fold_teacher_batch_norm)
    from rrd_hf.models import build_model

    student = build_model(args.student, num_labels=args.num_labels).train().to(memory_format=torch.channels_last)
    labels = torch.randint(0, args.num_labels, (batch_size,))

    def student_step():
        F.cross_entropy(student(pixel_values=pixels).logits, labels).backward()
        student.zero_grad(set_to_none=True)

    grid = sorted({0, 1, *range(8, batch_size, 8), batch_size})
    forward_ms = {0: 0.0}
    for size in grid[1:]:
        sub = pixels[:size].contiguous(memory_format=torch.channels_last)
        forward_ms[size] = median_ms(lambda: teacher_outputs(teacher, sub), args.repeats)
    student_ms = median_ms(student_step, args.repeats)
    store = torch.zeros(min(entries, 500_000), args.embedding_dim + args.num_labels)  # rows to gather and scatter
    rows = torch.randint(0, store.shape[0], (batch_size,))
    values = torch.randn(batch_size, store.shape[1])
    cache_ms = median_ms(lambda: (store.index_select(0, rows), store.index_copy_(0, rows, values)), 50)

    def expected_forward_ms(miss_rate: float) -> float:  # misses per batch ~ Binomial(batch, miss_rate)
        total = 0.0
        for misses in range(batch_size + 1):
            weight = math.comb(batch_size, misses) * miss_rate**misses * (1 - miss_rate) ** (batch_size - misses)
            below = max(s for s in grid if s <= misses)
            above = min(s for s in grid if s >= misses)
            cost = forward_ms[below] if above == below else forward_ms[below] + (
                forward_ms[above] - forward_ms[below]) * (misses - below) / (above - below)
            total += weight * cost
        return total

    full = forward_ms[batch_size]
    per_epoch = [expected_forward_ms(1 - h / args.num_samples) + cache_ms for h in hits]
    cached_teacher = statistics.fmean(per_epoch)
    print(f"teacher {args.teacher}, batch {batch_size}, {torch.get_num_threads()} threads: forward "
          + ", ".join(f"{s}: {forward_ms[s]:.1f}" for s in grid[1:]) + " ms; cache gather + scatter "
          f"{cache_ms:.3f} ms; student {args.student} training step {student_ms:.1f} ms")
    print(f"teacher per step over the run: {full:.1f} ms without a cache, {cached_teacher:.1f} ms with one "
          f"({cached_teacher / full:.3f}x); epoch 1 {per_epoch[0]:.1f}, epoch {args.epochs} {per_epoch[-1]:.1f}")
    step, cached_step = student_ms + full, student_ms + cached_teacher
    print(f"student step + teacher forward: {step:.1f} -> {cached_step:.1f} ms per step ({cached_step / step:.3f}x "
          f"over the run)")

    # 4. exactness
    size = batch_size // 2 + 1
    whole = teacher_outputs(teacher, pixels)
    part = teacher_outputs(teacher, pixels[:size].contiguous(memory_format=torch.channels_last))
    bitwise = all(torch.equal(a[:size], b) for a, b in zip(whole, part))
    worst = max(((a[:size] - b).abs().max() / a[:size].abs().max().clamp_min(1e-12)).item()
                for a, b in zip(whole, part))
    print(f"outputs of {size} samples computed alone vs within the batch of {batch_size}: "
          + ("bitwise equal" if bitwise else f"not bitwise equal (largest relative difference {worst:.1e})"))

    result = {"teacher": args.teacher, "student": args.student, "num_samples": args.num_samples,
              "batch_size": batch_size, "threads": torch.get_num_threads(),
              "fold_teacher_batch_norm": args.fold_teacher_batch_norm,
              "epochs": args.epochs, "views": views, "hit_rate": hit_rate, "uniform_hit_rate": expected,
              "entries": entries, "hits_per_epoch": hits,
              "cache_gib": {what: entries * floats * 4 / 2**30 for what, floats in sizes.items()},
              "teacher_forward_ms": forward_ms, "cache_ms": cache_ms, "student_step_ms": student_ms,
              "teacher_ms_per_step": {"without": full, "with": cached_teacher},
              "step_ratio": cached_step / step, "bitwise": bitwise, "largest_relative_difference": worst}
    write_result(args, "teacher_cache", result, device="cpu", argv=argv)
    return result


if __name__ == "__main__":
    main()
