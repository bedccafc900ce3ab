"""What an image classifier expects as `pixel_values` (size, normalisation), and the adapter that turns batches
prepared for one model into the input of another.

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

__all__ = ["ImageStats", "image_stats_from_pretrained", "image_stats_from_processor", "image_stats_from_config",
           "TeacherInputAdapter", "teacher_input_adapter", "merge_stats"]

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


def teacher_input_adapter(teacher: nn.Module, student_stats: ImageStats, *, teacher_stats: ImageStats | None = None,
                          teacher_processor=None) -> TeacherInputAdapter:
    """The adapter from the student's batches (normalised with `student_stats`) to what `teacher` expects.

    What the teacher expects comes, field by field, from `teacher_stats` (explicit settings), then
    `teacher_processor`, the processor saved beside the teacher, and the teacher's config.
    """
    teacher_stats = merge_stats(
        teacher_stats,
        image_stats_from_processor(teacher_processor),
        image_stats_from_pretrained(getattr(teacher, "name_or_path", None)),
        image_stats_from_config(getattr(teacher, "config", None)),
    )
    student = student_stats
    if teacher_stats.mean is not None and student.mean is None:
        logger.warning(
            "the teacher expects inputs normalised with mean=%s std=%s, but the student's normalisation is unknown, "
            "so batches reach the teacher unchanged. Set student_image_mean/student_image_std (or pass the "
            "student's image processor as processing_class) to renormalise them.", teacher_stats.mean, teacher_stats.std,
        )
    if teacher_stats.mean is None and student.mean is not None and teacher_stats.size is not None:
        logger.info("the teacher's normalisation is unknown: it gets the student's (mean=%s, std=%s).",
                    student.mean, student.std)
    return TeacherInputAdapter(size=teacher_stats.size, student=student, teacher=teacher_stats)
