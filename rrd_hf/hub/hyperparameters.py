"""The card's hyper-parameter table: every setting that changes the result, and only the schedule that happened.

Arguments say what was planned; `Progress` says how far training went. A step decay at epoch 150 is described as
applied only when training went past epoch 150; a shorter run says which decays it never reached.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..methods.objective import LossTerm
from .facts import NOT_RECORDED, fmt
from .objective import objective_rows


@dataclass(frozen=True)
class Progress:
    """How far training went: `epoch` exactly (recorded with the weights), else `at_least` (e.g. the last
    evaluation's epoch); `global_step` when recorded."""

    epoch: float | None = None
    at_least: float | None = None
    global_step: int | None = None

    def went_past(self, epoch: float) -> bool | None:
        """True if steps after `epoch` were trained (a decay there changed the LR), False if not, None if unknown."""
        if self.epoch is not None:
            return self.epoch > epoch
        if self.at_least is not None and self.at_least > epoch:
            return True
        return None


def format_epoch(epoch: float) -> str:
    return f"{epoch:.2f}".rstrip("0").rstrip(".")


def _epochs(values: list) -> str:
    return ("epoch " if len(values) == 1 else "epochs ") + fmt(values)


def lr_schedule(args: Mapping, progress: Progress) -> str:
    """The LR schedule as it ran: the decays reached, the ones never reached, and the ones not known either way."""
    milestones = list(args.get("lr_decay_epochs") or [])
    if not milestones:
        schedule = fmt(args.get("lr_scheduler_type"))
        warmup = args.get("warmup_steps")
        if warmup:
            schedule += f", warm-up {fmt(warmup)}"
            step = progress.global_step
            if step is not None and isinstance(warmup, int) and step < warmup:
                schedule += f" steps (not completed: training stopped at step {step})"
        return schedule
    rate = fmt(args.get("lr_decay_rate"))
    state = {m: progress.went_past(m) for m in milestones}
    applied = [m for m in milestones if state[m] is True]
    missed = [m for m in milestones if state[m] is False]
    unknown = [m for m in milestones if state[m] is None]
    if applied == milestones:
        return f"× {rate} at {_epochs(milestones)}"
    stopped = f"training stopped at epoch {format_epoch(progress.epoch)}" if progress.epoch is not None else ""
    if not applied and not unknown:
        return f"constant: {stopped}, before the × {rate} decays planned at {_epochs(milestones)} (none was applied)"
    parts = [f"× {rate} at {_epochs(applied)}"] if applied else [f"× {rate} planned at {_epochs(milestones)}"]
    if missed:
        parts.append(f"{_epochs(missed)} not reached ({stopped})")
    if unknown:
        parts.append(f"whether training went past {_epochs(unknown)} was {NOT_RECORDED}")
    return "; ".join(parts)


def training_length(args: Mapping, progress: Progress) -> tuple[str, str]:
    """("epochs" | "training length", planned, and what was trained when it is known to differ)."""
    max_steps = args.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        text = f"{max_steps} optimizer steps"
        if progress.global_step is not None and progress.global_step != max_steps:
            text += f" planned, {progress.global_step} trained"
        return "training length", text
    planned = args.get("num_train_epochs")
    if progress.epoch is not None and planned is not None and abs(progress.epoch - float(planned)) > 1e-6:
        return "epochs", f"{fmt(planned)} planned, {format_epoch(progress.epoch)} trained"
    return "epochs", fmt(planned)


def hyperparameter_rows(args: Mapping | None, world_size: int | None,
                        objective: tuple[float | None, list[LossTerm]] | None,
                        progress: Progress = Progress()) -> list[tuple[str, str]]:
    """(name, value) rows of every setting that changes the result; empty when the arguments were not recorded."""
    if not args:
        return []
    a = args.get
    rows = objective_rows(objective, args) if objective is not None else []
    rows.append(training_length(args, progress))
    per_device = a("per_device_train_batch_size")
    accumulation = a("gradient_accumulation_steps") or 1
    if per_device is not None:
        if world_size:
            batch = f"{per_device} per process × {world_size} process{'es' if world_size > 1 else ''}"
            batch += f" × {accumulation} accumulation steps" if accumulation > 1 else ""
            batch += f" = {per_device * world_size * accumulation}"
        else:
            batch = f"{per_device} per process × number of processes {NOT_RECORDED}"
        rows.append(("batch size", batch))
    optim = fmt(a("optim"))
    if a("optim_args"):
        optim += f" ({a('optim_args')})"
    elif str(a("optim") or "").startswith("adam"):
        optim += f" (β1 {fmt(a('adam_beta1'))}, β2 {fmt(a('adam_beta2'))}, ε {fmt(a('adam_epsilon'))})"
    rows.append(("optimizer", optim))
    rows.append(("learning rate", fmt(a("learning_rate"))))
    rows.append(("LR schedule", lr_schedule(args, progress)))
    decay = fmt(a("weight_decay"))
    if a("weight_decay"):
        decay += " (every parameter)" if a("decay_all_parameters") else " (not on biases and norms)"
    rows.append(("weight decay", decay))
    if a("label_smoothing_factor"):
        rows.append(("label smoothing", fmt(a("label_smoothing_factor"))))
    if a("max_grad_norm"):
        rows.append(("gradient clipping (max norm)", fmt(a("max_grad_norm"))))
    precision = "bf16 autocast" if a("bf16") else "fp16 autocast" if a("fp16") else "fp32"
    rows.append(("precision", precision))
    rows.append(("seed", fmt(a("seed"))))
    return rows
