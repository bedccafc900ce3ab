"""The frozen teacher: one object that loads it, checks it predicts the student's classes, freezes it, turns the
student's batches into its input and reads what the objective needs from its forward.

The trainer, `rrd-hf plots` and anything else that runs a teacher beside a student use it, so they agree on how
the teacher sees a batch. The teacher never trains: it stays in eval mode (its BatchNorm statistics never move),
needs no gradients and runs under `no_grad`, on the device, with the caller's autocast.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import torch
import torch.nn as nn

from ..methods.base import Activations
from .activations import ActivationReader
from .batch_norm_folding import fold_batch_norms
from .inputs import ImageStats, TeacherInputAdapter, teacher_input_adapter
from .labels import check_same_labels
from .loading import load_image_classifier

__all__ = ["FrozenTeacher"]

logger = logging.getLogger(__name__)

# Modules whose weights autocast casts to half precision at every call: cast once instead, as autocast would.
_AUTOCAST_CASTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


class FrozenTeacher:
    """A teacher model, frozen, fed the student's batches and read for the objective.

    Args:
        model: the teacher (a module, or a local folder / Hub id of an `AutoModelForImageClassification`).
        student: the student; the teacher must predict its classes in the same order (checked here).
        student_stats: how the student's batches are normalised (and sized), the starting point of the adapter.
        teacher_stats: explicit settings of what the teacher expects, ahead of its processor, the processor saved
            beside it and its config.
        teacher_processor: the teacher's image processor, when neither its folder nor its config says.
        device, channels_last, mixed_precision: where and how it runs (`"bf16"`/`"fp16"` cast its convolution and
            linear weights once).
        reader_options: what to read from its forward (`ActivationReader`'s keyword arguments).
        init_kwargs: keyword arguments of `from_pretrained` when `model` is a path or a Hub id.
    """

    def __init__(self, model: nn.Module | str | os.PathLike, *, student: nn.Module | None = None,
                 student_stats: ImageStats | None = None, teacher_stats: ImageStats | None = None,
                 teacher_processor=None, device: torch.device | str = "cpu", channels_last: bool = False,
                 mixed_precision: str | None = None, reader_options: dict | None = None,
                 init_kwargs: dict | None = None):
        if isinstance(model, (str, os.PathLike)):
            model = load_image_classifier(model, role="teacher", **(init_kwargs or {}))
        elif not isinstance(model, nn.Module):
            raise TypeError(f"the teacher must be a module, a local folder or a Hub id, got {type(model).__name__}.")
        if student is not None:
            check_same_labels(student, model)
        self.model = _freeze(model, device, channels_last, mixed_precision)
        self.adapter = teacher_input_adapter(self.model, student_stats or ImageStats(), teacher_stats=teacher_stats,
                                             teacher_processor=teacher_processor).to(device)
        if not self.adapter.is_identity:
            logger.info("the teacher's inputs are adapted from the student's batches on the device: %s",
                        self.adapter.extra_repr())
        self.reader = ActivationReader(self.model, "teacher", **(reader_options or {}))

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, autocast: Callable = contextlib.nullcontext) -> Activations:
        """The teacher's activations on a batch prepared for the student."""
        if self.model.training:  # someone called .train() on it: its BatchNorm statistics must never move
            self.model.eval()
        with autocast():
            output = self.model(pixel_values=self.adapter(pixel_values), **self.reader.forward_kwargs)
        return self.reader.read(output)

    def fold_batch_norms(self, example: torch.Tensor, autocast: Callable = contextlib.nullcontext) -> int:
        """Run the teacher with its eval-mode BatchNorms folded into the convolutions before them (opt-in:
        `fold_teacher_batch_norm`); `example` is a batch as the training steps hand it over. Returns how many were
        folded. The module given by the caller is left as it was."""
        pixel_values = self.adapter(example)

        def run(module):
            with autocast():
                return module(pixel_values=pixel_values, **self.reader.forward_kwargs)

        try:
            self.model, folded = fold_batch_norms(self.model, run)
        finally:
            self.reader.clear()  # the traced forwards filled the feature taps
        if folded:
            logger.info("teacher: %d BatchNorm layers folded into the convolutions before them", len(folded))
        return len(folded)


def _freeze(teacher: nn.Module, device, channels_last: bool, mixed_precision: str | None) -> nn.Module:
    teacher = teacher.eval().requires_grad_(False).to(device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(mixed_precision))
    if dtype is not None:
        for module in teacher.modules():
            if isinstance(module, _AUTOCAST_CASTS):
                module.to(dtype)
    return teacher
