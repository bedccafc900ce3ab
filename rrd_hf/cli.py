"""`rrd-hf`: the command line of rrd_hf.

    rrd-hf demo                                     # the embedded offline demo (teacher, student alone, KD, RRD)
    rrd-hf train RECIPE.yaml [--field value ...]    # distil a student (same as accelerate launch -m rrd_hf.train)
    rrd-hf train-teacher RECIPE.yaml [...]          # train a teacher with plain cross-entropy
    rrd-hf evaluate CHECKPOINT --dataset cifar100   # top-1 / top-5 of any checkpoint
    rrd-hf aggregate RUN_DIR [RUN_DIR ...]          # mean ± std of best/last top-1 over seeds
    rrd-hf push CHECKPOINT REPO_ID [--teacher ID]   # publish the clean student with its model card
    rrd-hf probe CHECKPOINT --dataset stl10         # transfer linear probe (stl10 | tiny-imagenet)
    rrd-hf plots CHECKPOINT --teacher T             # correlation-difference and t-SNE figures (PNG)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

__all__ = ["main"]


def _evaluate(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="rrd-hf evaluate", description="Top-1/top-5 of a checkpoint on a dataset.")
    parser.add_argument("checkpoint", help="folder written by save_pretrained, or a Hub id")
    parser.add_argument("--dataset", default="cifar100", help="known name, Hub id or local path (default cifar100)")
    parser.add_argument("--split", default=None, help="default: the dataset's evaluation split")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    from .evaluation import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.dataset, args.split, image_size=args.image_size,
                                  batch_size=args.batch_size, max_samples=args.max_samples, device=args.device)
    print(json.dumps(metrics, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(metrics, handle, indent=2)


def _aggregate(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="rrd-hf aggregate", description="Mean ± std over runs (e.g. seeds).")
    parser.add_argument("runs", nargs="+", help="run folders (holding results.json) or results.json files")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from .results import aggregate_results, format_aggregate, load_results

    aggregate = aggregate_results(load_results(path) for path in args.runs)
    print(json.dumps(aggregate, indent=2) if args.json else format_aggregate(aggregate))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "train": lambda rest: __import__("rrd_hf.train", fromlist=["main"]).main(rest),
        "train-teacher": lambda rest: __import__("rrd_hf.train", fromlist=["main"]).main(rest, teacher_only=True),
        "evaluate": _evaluate,
        "aggregate": _aggregate,
        "demo": lambda rest: __import__("rrd_hf.demo", fromlist=["main"]).main(rest),
        "push": lambda rest: __import__("rrd_hf.hub", fromlist=["_push"])._push(rest),
        "probe": lambda rest: __import__("rrd_hf.probe", fromlist=["_probe"])._probe(rest),
        "plots": lambda rest: __import__("rrd_hf.plots", fromlist=["_plots"])._plots(rest),
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}: choose one of {', '.join(commands)}.", file=sys.stderr)
            sys.exit(2)
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rrd_hf").setLevel(os.environ.get("RRD_HF_LOG_LEVEL", "INFO"))
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
