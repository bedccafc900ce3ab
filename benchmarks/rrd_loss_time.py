"""rrd_hf's RRD loss against the same loss written the textbook way, forward + backward, timed in one run.

The textbook form (the paper's formula as most code writes it) divides the (B, K) similarity matrices by the
temperature and takes the teacher's distribution as `exp(log_softmax(·))`. rrd_hf's `rrd_loss` divides the (B, D)
embeddings instead and takes the teacher's `softmax` directly: the same numbers up to float rounding (checked here
before any time is printed), K/D times less elementwise work on the temperature and one (B, K) pass less.
Both run round-robin on the same inputs, rotating which goes first, so machine noise hits them alike; the ratio is
per median and per fastest. The result file goes to benchmarks/results/ (benchmarks/README.md).

    python benchmarks/rrd_loss_time.py                       # B 64, K 16384, D 128 (the paper's setting)
    python benchmarks/rrd_loss_time.py --batch-size 256 --memory-size 65536
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rrd_hf.methods import rrd_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from json_output import add_result_arguments, write_result  # noqa: E402


def textbook_rrd_loss(z_s, z_t, memory, tau_s, tau_t):
    with torch.no_grad():
        target = F.log_softmax(z_t @ memory.t() / tau_t, dim=1).exp()
    return -(target * F.log_softmax(z_s @ memory.t() / tau_s, dim=1)).sum(dim=1).mean()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--memory-size", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    add_result_arguments(parser)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator().manual_seed(0)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=generator), dim=1).to(device)

    z_s, z_t, memory = unit(args.batch_size, args.dim), unit(args.batch_size, args.dim), unit(args.memory_size, args.dim)
    losses = {"rrd_hf": rrd_loss, "textbook": textbook_rrd_loss}
    results, times = {}, {name: [] for name in losses}

    def step(name):
        student = z_s.clone().requires_grad_()
        loss = losses[name](student, z_t, memory, 0.04, 0.1)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.detach(), student.grad

    names = list(losses)
    for i in range(args.warmup + args.repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:  # rotate who goes first
            start = time.perf_counter()
            results[name] = step(name)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    loss_a, grad_a = results["rrd_hf"]
    torch.testing.assert_close(loss_a, results["textbook"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_a, results["textbook"][1], rtol=1e-4, atol=1e-7)
    print(f"RRD loss, forward + backward, B {args.batch_size}, K {args.memory_size}, D {args.dim}, {device}, "
          f"{torch.get_num_threads()} threads, {args.repeats} round-robin repeats; loss and gradient agree")
    median = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    best = {name: 1e3 * min(t) for name, t in times.items()}
    for name in losses:
        print(f"{name:<18} median {median[name]:7.2f} ms  fastest {best[name]:7.2f} ms")
    print(f"rrd_hf / textbook: {median['rrd_hf'] / median['textbook']:.3f} (median), "
          f"{best['rrd_hf'] / best['textbook']:.3f} (fastest)")
    result = {"batch_size": args.batch_size, "memory_size": args.memory_size, "dim": args.dim,
              "repeats": args.repeats, "median_ms": median, "fastest_ms": best,
              "ratio_median": median["rrd_hf"] / median["textbook"], "ratio_fastest": best["rrd_hf"] / best["textbook"]}
    write_result(args, "rrd_loss_time", result, device=device, argv=argv)
    return result


if __name__ == "__main__":
    main()
