"""The teacher: loading it, checking it predicts the student's classes, and feeding it the student's batches.

The student's batch is turned into the teacher's input on the device: undo the student's normalisation, apply the
teacher's, and resize. Both steps are linear per channel, so they commute and cost one fused affine and one
interpolation, far less than the teacher's forward. What the teacher expects is read from, in this order: the
explicit `teacher_image_*` fields, a teacher image processor given to the trainer, the processor saved beside the
teacher (`preprocessor_config.json` of its folder or Hub repo), and the teacher's config (`image_size`,
`image_mean`/`image_std` where a config carries them).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batch_norm_folding import fold_batch_norms

__all__ = ["ImageStats", "image_stats_from_pretrained", "image_stats_from_processor", "image_stats_from_config",
           "TeacherInputAdapter", "resolve_teacher", "freeze_teacher", "fold_teacher_batch_norms", "check_same_labels",
           "label_names", "build_teacher_input_adapter"]

logger = logging.getLogger(__name__)


@dataclass
class ImageStats:
    """What a model expects as `pixel_values`: spatial size (height, width) and per-channel mean/std."""

    size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


def _size_from_processor_dict(config: dict) -> tuple[int, int] | None:
    for key in ("crop_size", "size"):
        size = config.get(key)
        if key == "crop_size" and not config.get("do_center_crop", False):
            continue
        if isinstance(size, int):
            return (size, size)
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return (int(size["height"]), int(size["width"]))
            if "shortest_edge" in size:
                return (int(size["shortest_edge"]), int(size["shortest_edge"]))
    return None


def image_stats_from_processor(processor) -> ImageStats | None:
    """Read size/mean/std from an image processor object or its dict (`preprocessor_config.json`)."""
    if processor is None:
        return None
    config = processor if isinstance(processor, dict) else getattr(processor, "to_dict", lambda: {})()
    if not config:
        config = {k: getattr(processor, k, None) for k in ("size", "crop_size", "image_mean", "image_std")}
    normalize = config.get("do_normalize", True)
    mean, std = config.get("image_mean"), config.get("image_std")
    stats = ImageStats(
        size=_size_from_processor_dict(config) if config.get("do_resize", True) else None,
        mean=[float(v) for v in mean] if normalize and mean is not None else None,
        std=[float(v) for v in std] if normalize and std is not None else None,
    )
    if not normalize:
        stats.mean, stats.std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return stats


def image_stats_from_pretrained(name_or_path: str | None) -> ImageStats | None:
    """Read `preprocessor_config.json` of a local folder or Hub repo; None when there is none."""
    if not name_or_path:
        return None
    from transformers.utils import cached_file

    try:
        path = cached_file(
            name_or_path,
            "preprocessor_config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError) as error:  # not a repo, offline without cache, ...
        logger.info("no image processor config for %s: %s", name_or_path, error)
        return None
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return image_stats_from_processor(json.load(handle))


def _channels(values: list[float] | None, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    values = list(values) * 3 if len(values) == 1 else list(values)
    if len(values) != 3:
        raise ValueError(f"{name} needs 1 or 3 values, got {values}.")
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


class TeacherInputAdapter(nn.Module):
    """Maps a student batch to the teacher's expected input: renormalise, then resize to `size`."""

    def __init__(self, size: tuple[int, int] | None = None, student: ImageStats | None = None,
                 teacher: ImageStats | None = None):
        super().__init__()
        self.size = tuple(size) if size is not None else None
        scale = shift = None
        student, teacher = student or ImageStats(), teacher or ImageStats()
        s_mean, s_std = _channels(student.mean, "student mean"), _channels(student.std, "student std")
        t_mean, t_std = _channels(teacher.mean, "teacher mean"), _channels(teacher.std, "teacher std")
        if None not in (s_mean, s_std, t_mean, t_std) and not (
            torch.allclose(s_mean, t_mean) and torch.allclose(s_std, t_std)
        ):
            # x_t = ((x_s * s_std + s_mean) - t_mean) / t_std = x_s * scale + shift
            scale = s_std / t_std
            shift = (s_mean - t_mean) / t_std
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    @property
    def is_identity(self) -> bool:
        return self.size is None and self.scale is None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            pixel_values = pixel_values * self.scale.to(pixel_values.dtype) + self.shift.to(pixel_values.dtype)
        if self.size is not None and tuple(pixel_values.shape[-2:]) != self.size:
            shrinking = pixel_values.shape[-2] > self.size[0] or pixel_values.shape[-1] > self.size[1]
            pixel_values = F.interpolate(
                pixel_values, size=self.size, mode="bilinear", align_corners=False, antialias=shrinking
            )
        return pixel_values

    def extra_repr(self) -> str:
        return f"size={self.size}, renormalise={self.scale is not None}"


def image_stats_from_config(config) -> ImageStats | None:
    """Size (and mean/std where present) a model's config declares: ViT-like `image_size`, rrd_hf's `image_mean`."""
    if config is None:
        return None
    size = getattr(config, "image_size", None)
    if isinstance(size, int):
        size = (size, size)
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        size = (int(size[0]), int(size[1]))
    else:
        size = None
    mean, std = getattr(config, "image_mean", None), getattr(config, "image_std", None)
    if size is None and mean is None:
        return None
    return ImageStats(size=size, mean=list(mean) if mean is not None else None, std=list(std) if std is not None else None)


def _first(*values):
    return next((value for value in values if value is not None), None)


def merge_stats(*sources: ImageStats | None) -> ImageStats:
    """Field by field, the first source that knows it."""
    sources = [s for s in sources if s is not None]
    return ImageStats(size=_first(*(s.size for s in sources)), mean=_first(*(s.mean for s in sources)),
                      std=_first(*(s.std for s in sources)))


def build_teacher_input_adapter(teacher: nn.Module, student_stats: ImageStats, args,
                                teacher_processor=None) -> TeacherInputAdapter:
    """The adapter from the student's batches (normalised with `student_stats`) to what `teacher` expects.

    `args` provides the explicit overrides (`teacher_image_size`, `teacher_image_mean`/`_std`,
    `student_image_mean`/`_std`).
    """
    explicit = ImageStats(size=(args.teacher_image_size,) * 2 if args.teacher_image_size else None,
                          mean=args.teacher_image_mean, std=args.teacher_image_std)
    teacher_stats = merge_stats(
        explicit,
        image_stats_from_processor(teacher_processor),
        image_stats_from_pretrained(getattr(teacher, "name_or_path", None)),
        image_stats_from_config(getattr(teacher, "config", None)),
    )
    student = merge_stats(ImageStats(mean=args.student_image_mean, std=args.student_image_std), student_stats)
    if teacher_stats.mean is not None and student.mean is None:
        logger.warning(
            "the teacher expects inputs normalised with mean=%s std=%s, but the student's normalisation is unknown, "
            "so batches reach the teacher unchanged. Set student_image_mean/student_image_std (or pass the "
            "student's image processor as processing_class) to renormalise them.", teacher_stats.mean, teacher_stats.std,
        )
    if teacher_stats.mean is None and student.mean is not None and teacher_stats.size is not None:
        logger.info("the teacher's normalisation is unknown: it gets the student's (mean=%s, std=%s).",
                    student.mean, student.std)
    adapter = TeacherInputAdapter(size=teacher_stats.size, student=student, teacher=teacher_stats)
    if not adapter.is_identity:
        logger.info("teacher inputs are adapted on the device: %s", adapter.extra_repr())
    return adapter


# ------------------------------------------------------------------------------------------------- the teacher


def resolve_teacher(teacher_model, args, init_kwargs: dict) -> nn.Module | None:
    """The teacher module of a run: the given module, or loaded from a path / Hub id (`teacher_model_name_or_path`)."""
    from .pretrained import load_image_classifier

    teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
    if not args.needs_teacher:
        if teacher_model is not None:
            logger.warning("no loss term uses the teacher (the objective is %s): it is ignored.", args.describe_objective())
        return None
    if teacher_model is None:
        raise ValueError(
            f"the objective {args.describe_objective()} needs a teacher: pass teacher_model= (a module, a local folder "
            "or a Hub id) or set teacher_model_name_or_path in the config."
        )
    if isinstance(teacher_model, (str, os.PathLike)):
        return load_image_classifier(teacher_model, role="teacher", **init_kwargs)
    if not isinstance(teacher_model, nn.Module):
        raise TypeError(f"teacher_model must be a module, a path or a Hub id, got {type(teacher_model).__name__}.")
    return teacher_model


_AUTOCAST_CASTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def freeze_teacher(teacher: nn.Module, device, channels_last: bool, mixed_precision: str | None) -> nn.Module:
    """Eval mode, no gradients, on the device. Under bf16/fp16 autocast its convolutions and linear layers run in
    half precision: their weights are cast once here instead of at every step (the values autocast would use)."""
    teacher = teacher.eval().requires_grad_(False).to(device)
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(mixed_precision))
    if dtype is not None:
        for module in teacher.modules():
            if isinstance(module, _AUTOCAST_CASTS):
                module.to(dtype)
    return teacher


def fold_teacher_batch_norms(teacher: nn.Module, pixel_values: torch.Tensor, input_adapter: nn.Module, reader,
                             autocast) -> nn.Module:
    """The frozen teacher with its BatchNorms folded into its convolutions (`rrd_hf.batch_norm_folding`), traced on
    the call the training steps make (`pixel_values`: an example batch as the trainer hands it over). The module
    passed in is left as it was."""
    pixel_values = input_adapter(pixel_values)

    def run(module):
        with autocast():
            return module(pixel_values=pixel_values, **reader.forward_kwargs)

    try:
        teacher, folded = fold_batch_norms(teacher, run)
    finally:
        reader.clear()  # the traced forwards filled the feature taps
    if folded:
        logger.info("teacher: %d BatchNorm layers folded into the convolutions before them (fold_teacher_batch_norm)",
                    len(folded))
    return teacher


def label_names(config) -> list[str] | None:
    """`id2label` as a list, or None when it holds only the default `LABEL_i` names."""
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label)]
    return None if all(name == f"LABEL_{i}" for i, name in enumerate(names)) else names


def check_same_labels(student: nn.Module, teacher: nn.Module) -> None:
    """Teacher and student must predict the same classes in the same order: fail before training otherwise."""
    s_config, t_config = getattr(student, "config", None), getattr(teacher, "config", None)
    if s_config is None or t_config is None:
        return
    if s_config.num_labels != t_config.num_labels:
        raise ValueError(
            f"the teacher predicts {t_config.num_labels} classes and the student {s_config.num_labels}: distillation "
            "needs the same label set. Build the student with num_labels equal to the teacher's (and the same "
            "id2label), or fine-tune the teacher on the student's labels first."
        )
    s_names, t_names = label_names(s_config), label_names(t_config)
    if s_names is not None and t_names is not None and s_names != t_names:
        differing = [i for i, (a, b) in enumerate(zip(s_names, t_names)) if a != b][:5]
        examples = ", ".join(f"{i}: student {s_names[i]!r} vs teacher {t_names[i]!r}" for i in differing)
        raise ValueError(
            f"teacher and student label names differ ({examples}): their id2label must list the same classes in "
            "the same order, or the teacher's predictions would be attributed to the wrong classes."
        )
