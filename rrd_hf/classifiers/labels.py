"""The classes a classifier predicts (`id2label`), and the check that a teacher and a student predict the same."""

from __future__ import annotations

from torch import nn

__all__ = ["label_names", "check_same_labels"]


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
