"""The mean of each loss term over the steps since the last log, kept as one running sum per term."""

from __future__ import annotations

import torch

__all__ = ["RunningMeans"]


class RunningMeans:
    """Per-name sums of the loss terms since the last log, added in place on their device (no sync).

    Keeping every step's scalar until the log instead (a list per term) pins one small allocation per term and step
    among the step's large temporaries: on CPU the heap then cannot reuse their room and grows at every step until
    the log frees the scalars, each step faulting fresh pages in. The sums are allocated once and zeroed at each
    log."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def __bool__(self) -> bool:
        return any(self.counts.values())

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float().reshape(())
            total = self.sums.get(name)
            if total is None or total.device != value.device:
                self.sums[name], self.counts[name] = torch.zeros_like(value), 0
            self.sums[name].add_(value)
            self.counts[name] += 1

    def pop_means(self) -> dict[str, torch.Tensor]:
        """The mean of each term added since the last call (new tensors); the sums restart from zero."""
        means = {name: self.sums[name] / count for name, count in self.counts.items() if count}
        for name in self.sums:
            self.sums[name].zero_()
            self.counts[name] = 0
        return means

    def clear(self) -> None:
        self.sums.clear()
        self.counts.clear()
