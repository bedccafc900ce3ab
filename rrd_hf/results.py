"""Results the way the field argues about them: best and last epoch top-1, and mean ± std over seeds."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence

__all__ = ["summarize_log_history", "aggregate_results", "format_aggregate", "load_results", "RESULTS_NAME"]

RESULTS_NAME = "results.json"


def summarize_log_history(log_history: Sequence[dict]) -> dict:
    """Best-epoch and last-epoch top-1/top-5 (in %) from `Trainer.state.log_history` evaluation entries.

    Papers of the CIFAR benchmark report the best test accuracy over epochs (selection on the test set); the last
    epoch is the honest number. Both are returned so neither has to be guessed.
    """
    evals = [log for log in log_history if "eval_accuracy" in log]
    if not evals:
        return {"num_evaluations": 0}
    best = max(evals, key=lambda log: log["eval_accuracy"])
    last = evals[-1]

    def pct(log, key):
        return round(100.0 * log[key], 4) if key in log else None

    return {
        "num_evaluations": len(evals),
        "best_top1": pct(best, "eval_accuracy"),
        "best_top5": pct(best, "eval_top5_accuracy"),
        "best_epoch": best.get("epoch"),
        "best_step": best.get("step"),
        "last_top1": pct(last, "eval_accuracy"),
        "last_top5": pct(last, "eval_top5_accuracy"),
        "last_epoch": last.get("epoch"),
        "last_step": last.get("step"),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate_results(results: Iterable[dict], keys: Sequence[str] = ("best_top1", "last_top1", "best_top5", "last_top5")) -> dict:
    """Mean and sample standard deviation (n − 1) of each key over runs (e.g. seeds); runs lacking a key are skipped."""
    results = list(results)
    out = {"num_runs": len(results)}
    for key in keys:
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            mean, std = _mean_std(values)
            out[key] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return out


def format_aggregate(aggregate: dict) -> str:
    lines = [f"runs: {aggregate['num_runs']}"]
    for key, value in aggregate.items():
        if isinstance(value, dict):
            lines.append(f"{key:>10}: {value['mean']:.2f} ± {value['std']:.2f}  (n={value['n']})")
    return "\n".join(lines)


def load_results(path: str | os.PathLike) -> dict:
    """Read `results.json` from a run folder (or the file itself)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass run folders written by `rrd-hf train` (they hold {RESULTS_NAME}).")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
