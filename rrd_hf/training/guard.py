"""Stop a run at the first NaN or infinity, before the optimizer spoils the weights, without a per-step sync.

Every micro-step the trainer hands the loss terms and the batch's largest pixel magnitude to `FiniteGuard.observe`;
before every optimizer step, `check_step` adds the gradient norms and the BatchNorm statistics. All of it stays on
the device: a sticky flag, and the values and step of the first bad observation. With an optimizer that honours
`found_inf` (fused SGD/Adam, as `GradScaler` uses them) the flag makes the optimizer step a no-op on the device, so
the run continues without waiting for the accelerator, its weights frozen at the last good step, until the next
point where the host reads values anyway (a logging step, an evaluation, a save, the end of training), where
`raise_if_tripped` raises `NonFiniteError` naming the step and the term. With any other optimizer the flag is read
before every optimizer step (one sync per step). Either way nothing non-finite is saved: saves check first, the
weights themselves included (`check_weights`, one read per save).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["FiniteGuard", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """A loss term, gradient or BatchNorm statistic became NaN or infinite; training stopped before using it."""


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else f"{value:.4g}"


class FiniteGuard:
    def __init__(self, device: torch.device | str, defers: bool):
        self.device = torch.device(device)
        #: True when the optimizer skips a flagged step on the device (found_inf); False: read the flag every step.
        self.defers = defers
        self.reset(0)

    def reset(self, step: int) -> None:
        """Start observing at optimizer step `step` (the trainer's global step before the next update)."""
        self.tripped = torch.zeros((), dtype=torch.bool, device=self.device)
        self.settled = self.tripped  # tripped before the current step: later steps no longer overwrite the records
        self.step = torch.full((), step, dtype=torch.long, device=self.device)  # advanced on the device
        self.first_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.records: dict[str, tuple[list[str], torch.Tensor]] = {}
        self.max_pixel = torch.zeros((), device=self.device)

    def _record(self, kind: str, names: list[str], values: torch.Tensor) -> None:
        values = values.detach().float().reshape(-1)
        bad = ~torch.isfinite(values).all()
        previous = self.records.get(kind)
        kept = values if previous is None or previous[1].shape != values.shape else previous[1]
        self.records[kind] = (names, torch.where(self.settled, kept, values))  # every kind, at the first bad step
        self.first_step = torch.where(bad & ~self.tripped, self.step, self.first_step)
        self.tripped = self.tripped | bad

    def observe(self, terms: dict[str, torch.Tensor], pixel_values: torch.Tensor | None = None) -> None:
        """The loss terms of a micro-batch (and its pixels, for the message)."""
        if pixel_values is not None and pixel_values.is_floating_point():
            magnitude = pixel_values.detach().abs().amax().float()
            self.max_pixel = torch.where(self.tripped, self.max_pixel, magnitude)
        self._record("loss", list(terms), torch.stack([value.detach().float().reshape(()) for value in terms.values()]))

    def check_gradients(self, modules: dict[str, nn.Module]) -> None:
        """Record the norm of every gradient of `modules` before this step's update."""
        named = [(f"{prefix}.{name}" if prefix else name, p.grad) for prefix, module in modules.items()
                 for name, p in module.named_parameters() if p.grad is not None]
        if named:
            norms = torch.stack(torch._foreach_norm([grad for _, grad in named]))
            self._record("gradient", [name for name, _ in named], norms)

    def check_step(self, modules: dict[str, nn.Module], check_gradients: bool = True) -> torch.Tensor:
        """Gradients and BatchNorm statistics before an optimizer step; returns the step's flag (`found_inf`)."""
        if check_gradients:
            self.check_gradients(modules)
        buffers = [(f"{prefix}.{name}" if prefix else name, buffer)
                   for prefix, module in modules.items() for name, buffer in module.named_buffers()
                   if buffer.is_floating_point() and name.rsplit(".", 1)[-1] in ("running_mean", "running_var")]
        if buffers:
            norms = torch._foreach_norm([buffer for _, buffer in buffers])
            self._record("BatchNorm statistic", [name for name, _ in buffers], torch.stack(norms))
        self.step = self.step + 1
        self.settled = self.tripped
        return self.tripped

    @staticmethod
    def check_weights(modules: dict[str, nn.Module], step: int) -> None:
        """Parameters and floating buffers, read once before they are saved: an optimizer step with finite gradients
        can still leave them non-finite (a huge learning rate or weight decay), and no later check would see it."""
        named = [(f"{prefix}.{name}" if prefix else name, tensor) for prefix, module in modules.items()
                 for name, tensor in (*module.named_parameters(), *module.named_buffers()) if tensor.is_floating_point()]
        if not named:
            return
        finite = torch.stack([torch.isfinite(tensor.detach()).all().to(named[0][1].device) for _, tensor in named])
        if bool(finite.all()):
            return
        bad = [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
        raise NonFiniteError(
            f"the weights {', '.join(bad[:3])}{f' (and {len(bad) - 3} more)' if len(bad) > 3 else ''} hold NaN or inf "
            f"after step {step}: they were not saved. The optimizer step made them so with finite gradients: lower the "
            "learning rate or the weight decay, then resume from the last checkpoint (--resume_from_checkpoint latest)."
        )

    def raise_if_tripped(self) -> None:
        """Read the flag (one sync) and raise `NonFiniteError` with what, where and what to do."""
        if not bool(self.tripped):
            return
        step = int(self.first_step) + 1  # the step that did not happen: Trainer counts completed steps from 1
        found = []
        for kind, (names, values) in self.records.items():
            bad = [f"{name} is {_fmt(value)}" for name, value in zip(names, values.tolist()) if not math.isfinite(value)]
            if bad:
                label = "" if kind == "loss" else f"the {kind}{'s' if len(bad) > 1 else ''} "
                found.append(label + ", ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""))
        what = "; ".join(found)
        pixels = float(self.max_pixel)
        raise NonFiniteError(
            f"{what} at step {step}: training stopped before that optimizer step was applied; nothing non-finite was "
            f"saved. The batch's largest |pixel_values| was {_fmt(pixels)}. Check the data (NaN/inf or unnormalised "
            "pixels), lower the learning rate, or use bf16 instead of fp16; then resume from the last checkpoint "
            "(--resume_from_checkpoint latest). check_finite=False turns this check off."
        )
