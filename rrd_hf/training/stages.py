"""Initialisation stages of two-stage methods (AB, FT, FSP, FitNet's hints), run through the Trainer's own loop.

A stage is data (`Stage`): which term, how many epochs, at which learning rate, which parameters train and in which
mode the student is. `stage_training` applies it to a trainer for the duration of one `Trainer.train()` call: the
objective becomes that term alone (weight 1, no cross-entropy), the optimizer (SGD, momentum 0.9, the run's weight
decay on every parameter, a constant learning rate) holds only the stage's parameters, nothing is evaluated, saved
or pushed, the user's callbacks are not called (they follow the main stage: a "stop at step N" or early stopping
must not act on the init stage), and everything is restored afterwards. So the stage gets the trainer's forward, autocast, gradient
scaling, accumulation, data parallelism and logging, instead of a second hand-written loop.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch.nn as nn
from transformers.trainer_callback import DefaultFlowCallback, PrinterCallback, ProgressCallback
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
from transformers.training_args import OptimizerNames

from ..classifiers.activations import student_feature_modules
from ..methods import DistillationMethod

__all__ = ["Stage", "init_stages", "stage_training", "AUGMENTATION_EPOCH_OFFSET"]

#: Stage k's epochs draw their augmentation as epochs `(k + 1) · offset + e`, never those of the main stage.
AUGMENTATION_EPOCH_OFFSET = 1_000_000


@dataclass
class Stage:
    """One initialisation stage: train `term`'s init-stage parameters (and the student's feature modules when
    `trains_student`) on `term`'s loss alone for `epochs` epochs at `learning_rate`."""

    index: int
    term: str
    method: DistillationMethod
    epochs: int
    learning_rate: float
    trains_student: bool

    @property
    def augmentation_epoch_offset(self) -> int:
        return (self.index + 1) * AUGMENTATION_EPOCH_OFFSET


def init_stages(methods: dict[str, DistillationMethod], init_epochs: int | None, learning_rate: float) -> list[Stage]:
    """The stages of an objective, in term order: one per method with an init stage of at least one epoch."""
    stages = []
    for name, method in methods.items():
        stage = method.init_stage
        if stage is None:
            continue
        epochs = stage.epochs if init_epochs is None else init_epochs
        if epochs > 0:
            lr = stage.learning_rate if stage.learning_rate is not None else learning_rate
            stages.append(Stage(len(stages), name, method, int(epochs), float(lr), stage.trains_student))
    return stages


def set_student_mode(student: nn.Module, stage: Stage) -> None:
    """RepDistiller's `init()`: the student in eval mode, only its trained feature modules in train mode."""
    student.eval()
    if stage.trains_student:
        for module in student_feature_modules(student):
            module.train()


#: The callbacks that keep running during a stage: Trainer's own flow control and progress display.
_STAGE_CALLBACKS = (DefaultFlowCallback, ProgressCallback, PrinterCallback)


#: TrainingArguments values a stage replaces (restored afterwards).
def _stage_arguments(stage: Stage) -> dict:
    return dict(
        num_train_epochs=stage.epochs, max_steps=-1, learning_rate=stage.learning_rate,
        lr_scheduler_type=SchedulerType.CONSTANT, lr_decay_epochs=None, warmup_steps=0,
        optim=OptimizerNames.SGD, optim_args="momentum=0.9", decay_all_parameters=True,
        eval_strategy=IntervalStrategy.NO, save_strategy=SaveStrategy.NO, logging_strategy=IntervalStrategy.EPOCH,
        push_to_hub=False, load_best_model_at_end=False, eval_on_start=False,
    )


@contextlib.contextmanager
def stage_training(trainer, stage: Stage):
    """Within the block, `trainer.train()`'s machinery runs `stage` (see the module docstring)."""
    args = trainer.args
    replaced = _stage_arguments(stage)
    saved_args = {key: getattr(args, key) for key in replaced}
    student = trainer.model
    student_flags = [(p, p.requires_grad) for p in student.parameters()]
    trained = [p for m in student_feature_modules(student) for p in m.parameters()] if stage.trains_student else []
    trained_ids = {id(p) for p in trained}
    ddp_handler = getattr(trainer.accelerator, "ddp_handler", None)
    saved_unused = getattr(ddp_handler, "find_unused_parameters", None)
    handler = trainer.callback_handler
    saved_callbacks = list(handler.callbacks)
    try:
        handler.callbacks = [cb for cb in saved_callbacks if isinstance(cb, _STAGE_CALLBACKS) or cb is trainer.run_callback]
        for key, value in replaced.items():
            setattr(args, key, value)
        for p in student.parameters():
            p.requires_grad_(id(p) in trained_ids)
        parameters = [*stage.method.begin_init_stage(), *trained]
        if ddp_handler is not None:  # FitNet's hint stage leaves the layers after the hint without gradient
            ddp_handler.find_unused_parameters = True
        trainer.enter_stage(stage, parameters)
        yield
    finally:
        handler.callbacks = saved_callbacks
        trainer.leave_stage()
        if ddp_handler is not None:
            ddp_handler.find_unused_parameters = saved_unused
        stage.method.end_init_stage()
        for p, flag in student_flags:
            p.requires_grad_(flag)
        for key, value in saved_args.items():
            setattr(args, key, value)
