"""The interface every distillation method shares, its registry, and the cost helpers.

A method is a thin `nn.Module` around a pure loss function. The trainer hands it `ModelOutputs` of the student and
of the teacher and gets back the **unweighted** scalar loss; the trainer multiplies it by the method's weight
(`default_weight` is the benchmark's value) and adds cross-entropy (`default_ce_weight`). Everything a method
trains (regressors, embeddings, paraphraser, ...) or keeps (CRD's memory banks) lives in the module, so the
trainer optimises and checkpoints it with the student.

Contract for the trainer
------------------------
* Build with example outputs of a dummy forward (shapes only): `build_method(name, student_example,
  teacher_example, num_samples=len(train_set))`. `needs_hidden_states` / `needs_preact` say how to run the models
  (`output_hidden_states=True`, `preact=True`), `needs_index` that the batch must carry the dataset `index`,
  `needs_labels` that `forward` needs the ground-truth `labels`.
* `forward(student, teacher, index=None, labels=None)`; the teacher side is detached inside every loss.
* `gather` (identity by default): set it to `accelerator.gather`. Stateful methods (CRD) pass their memory keys
  and indices through it, so every process holds the same memory. `process_index` (0 by default): set it to
  `accelerator.process_index`; CRD mixes it into its seeded negative draws so that processes draw different
  negatives for their different samples.
* `set_epoch(epoch)`: call at the start of every epoch with the 1-based epoch number (DKD's warm-up uses it).
* Two-stage methods (`init_stage` is not None): `params = method.begin_init_stage(student_model)`, train `params`
  with SGD on `method(student, teacher)` alone (no CE, unweighted) for `init_stage.epochs` epochs, then
  `method.end_init_stage()`. See `InitStage`.
* `main_stage_loss` False (AB, FSP): RepDistiller adds **no** distillation term in the main stage
  (`loss_kd = 0` in `train_distill`), so its `-b` weight is inert; reproduce the benchmark by skipping `forward`
  after the init stage.

DDP (`find_unused_parameters=False`): in the main stage every parameter of a method that requires a gradient
receives one in every forward (tests check this). Parts trained only in the init stage (AB's connector, FT's
paraphraser) are frozen outside it. In the init stage see `InitStage.ddp_note`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

__all__ = [
    "ModelOutputs",
    "InitStage",
    "DistillationMethod",
    "METHODS",
    "register_method",
    "build_method",
    "student_feature_parameters",
    "extra_parameter_count",
    "extra_buffer_count",
]


@dataclass
class ModelOutputs:
    """What the trainer hands to a method, once for the student and once for the teacher.

    Attributes:
        logits: `(B, C)`.
        features: `(B, D)` penultimate vector, the classifier's input (`hidden_states[-1]` in our zoo).
        hidden_states: the zoo's layout, RepDistiller's `feat` list: stem, each stage output, then the pooled
            penultimate vector as the last entry. Only needed by methods with `needs_hidden_states`.
    """

    logits: torch.Tensor
    features: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @classmethod
    def from_model_output(cls, output: Any, features: torch.Tensor | None = None) -> "ModelOutputs":
        """From a transformers image-classifier output (`.logits`, optional `.hidden_states`).

        `features` defaults to the last hidden state (the pooled vector in our zoo); pass it explicitly (e.g. from
        `rrd_hf.FeatureTap`) for models whose last hidden state is not the classifier input.
        """
        hidden = getattr(output, "hidden_states", None)
        if features is None:
            if hidden is None:
                raise ValueError(
                    "no features: run the model with output_hidden_states=True or pass features= (the classifier's "
                    "input, e.g. from rrd_hf.FeatureTap)."
                )
            features = hidden[-1]
        return cls(logits=output.logits, features=features, hidden_states=None if hidden is None else tuple(hidden))

    def detach(self) -> "ModelOutputs":
        return ModelOutputs(
            logits=self.logits.detach(),
            features=self.features.detach(),
            hidden_states=None if self.hidden_states is None else tuple(h.detach() for h in self.hidden_states),
        )


@dataclass(frozen=True)
class InitStage:
    """What a two-stage method trains before the main stage (RepDistiller `helper/pretrain.py::init`).

    RepDistiller runs `init_epochs=30` epochs of SGD (momentum 0.9, weight decay 5e-4) on the method's own loss
    alone (no CE, no weight), with the teacher in eval mode. The parameters are those `begin_init_stage` returns.

    Attributes:
        epochs: RepDistiller's `--init_epochs` (30).
        loss: what `forward` returns during the init stage.
        trains_student: whether the student's feature layers (everything but the classifier) are trained. When
            they are, RepDistiller has them in train mode (BN batch statistics).
        learning_rate: the init-stage learning rate; None means the main learning rate.
        ddp_note: which trainable parameters receive no gradient in the init stage.
    """

    epochs: int
    loss: str
    trains_student: bool
    learning_rate: float | None = None
    ddp_note: str = ""


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def student_feature_parameters(student_model: nn.Module, classifier_name: str | None = None) -> list[nn.Parameter]:
    """The student's parameters except its classifier's (RepDistiller's `model_s.get_feat_modules()`)."""
    from ..features import find_classifier

    _, classifier = find_classifier(student_model, classifier_name)
    excluded = {id(p) for p in classifier.parameters()}
    return [p for p in student_model.parameters() if id(p) not in excluded]


class DistillationMethod(nn.Module):
    """Base class: see the module docstring for the contract.

    Subclasses set the class attributes, build their trainable parts from the example outputs in `__init__`, and
    implement `forward`. Two-stage methods set `self.init_stage` and override `_init_stage_own_parameters` /
    `_init_stage_trains_student`.
    """

    name: ClassVar[str]
    needs_hidden_states: ClassVar[bool] = False
    needs_preact: ClassVar[bool] = False
    needs_index: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    default_weight: ClassVar[float]
    default_ce_weight: ClassVar[float] = 1.0
    main_stage_loss: ClassVar[bool] = True
    #: Index of the hidden states the method reads, for documentation and the cost table.
    uses: ClassVar[str] = "logits"

    def __init__(self, student: ModelOutputs, teacher: ModelOutputs, num_samples: int | None = None):
        super().__init__()
        for role, outputs in (("student", student), ("teacher", teacher)):
            if not isinstance(outputs, ModelOutputs):
                raise TypeError(
                    f"{self.name}: the {role} example must be a ModelOutputs, got {type(outputs).__name__}; build it "
                    "with ModelOutputs.from_model_output(model(x, output_hidden_states=True))."
                )
            if self.needs_hidden_states:
                self._hidden(outputs, role)
        self.num_samples = num_samples
        self.gather: Callable[[torch.Tensor], torch.Tensor] = _identity
        self.process_index: int = 0
        self.init_stage: InitStage | None = None
        self.in_init_stage: bool = False
        self._frozen_by_init_stage: list[nn.Parameter] = []
        self._unfrozen_by_init_stage: list[nn.Parameter] = []
        if self.needs_preact:
            self._warn_if_post_relu(student, teacher)

    # ---------------------------------------------------------------------------------------------- helpers
    def _hidden(self, outputs: ModelOutputs, role: str) -> tuple[torch.Tensor, ...]:
        hidden = outputs.hidden_states
        if hidden is None or len(hidden) < 3:
            extra = " and preact=True" if self.needs_preact else ""
            raise ValueError(
                f"{self.name} needs the {role}'s hidden_states (stem, stage outputs..., pooled): run the model with "
                f"output_hidden_states=True{extra}; got {'None' if hidden is None else f'{len(hidden)} entries'}."
            )
        return tuple(hidden)

    def _stage_maps(self, outputs: ModelOutputs, role: str) -> tuple[torch.Tensor, ...]:
        """`hidden_states[1:-1]`: the stage outputs (RepDistiller `feat[1:-1]`)."""
        maps = self._hidden(outputs, role)[1:-1]
        for i, m in enumerate(maps, start=1):
            if m.dim() != 4:
                raise ValueError(f"{self.name}: {role} hidden_states[{i}] must be a (B, C, H, W) map, got {tuple(m.shape)}.")
        return maps

    def _warn_if_post_relu(self, student: ModelOutputs, teacher: ModelOutputs) -> None:
        for role, outputs in (("student", student), ("teacher", teacher)):
            maps = self._hidden(outputs, role)[1:-1]
            if maps and all(bool((m >= 0).all()) for m in maps):
                warnings.warn(
                    f"{self.name}: every {role} stage map is non-negative, i.e. looks post-ReLU; this method needs "
                    "pre-ReLU maps: run the models with preact=True.",
                    stacklevel=3,
                )

    # ---------------------------------------------------------------------------------------------- interface
    def forward(
        self,
        student: ModelOutputs,
        teacher: ModelOutputs,
        index: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def set_epoch(self, epoch: float) -> None:
        """Called by the trainer at the start of every epoch with the 1-based epoch number; no-op by default."""

    def _init_stage_own_parameters(self) -> list[nn.Parameter]:
        """This module's parameters trained in the init stage (two-stage methods override)."""
        return []

    def begin_init_stage(self, student_model: nn.Module | None = None) -> list[nn.Parameter]:
        """Enter the init stage; return the parameters to optimise in it.

        Unfreezes this module's init-stage parts and freezes its other parameters (so that, inside the method,
        only trained parameters require a gradient). When the stage trains the student, `student_model` is
        required and its feature parameters (all but the classifier) are included; its classifier is frozen
        for the stage (it gets no gradient from the init loss). `end_init_stage` restores every flag.
        """
        if self.init_stage is None:
            raise ValueError(f"{self.name} has no init stage (init_stage is None).")
        if self.in_init_stage:
            raise RuntimeError(f"{self.name}: begin_init_stage called twice without end_init_stage.")
        own = self._init_stage_own_parameters()
        own_ids = {id(p) for p in own}
        params = list(own)
        to_freeze = [p for p in self.parameters() if id(p) not in own_ids]
        if self.init_stage.trains_student:
            if student_model is None:
                raise ValueError(f"{self.name}'s init stage trains the student: pass student_model.")
            feature_params = student_feature_parameters(student_model)
            feature_ids = {id(p) for p in feature_params}
            params += feature_params
            to_freeze += [p for p in student_model.parameters() if id(p) not in feature_ids]
        elif student_model is not None:
            to_freeze += list(student_model.parameters())
        self._frozen_by_init_stage = [p for p in to_freeze if p.requires_grad]
        self._unfrozen_by_init_stage = [p for p in params if not p.requires_grad]
        for p in self._frozen_by_init_stage:
            p.requires_grad_(False)
        for p in self._unfrozen_by_init_stage:
            p.requires_grad_(True)
        self.in_init_stage = True
        return params

    def end_init_stage(self) -> None:
        """Leave the init stage: restore the flags changed by `begin_init_stage` (init-only parts frozen again)."""
        for p in self._frozen_by_init_stage:
            p.requires_grad_(True)
        for p in self._unfrozen_by_init_stage:
            p.requires_grad_(False)
        self._frozen_by_init_stage, self._unfrozen_by_init_stage = [], []
        self.in_init_stage = False

    def extra_repr(self) -> str:
        return f"name={self.name!r}, default_weight={self.default_weight}, uses={self.uses!r}"


#: Registered methods by lowercase name.
METHODS: dict[str, type[DistillationMethod]] = {}


def register_method(cls: type[DistillationMethod]) -> type[DistillationMethod]:
    """Class decorator: add `cls` to `METHODS` under `cls.name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or name != name.lower() or not name:
        raise ValueError(f"{cls.__name__}.name must be a non-empty lowercase string, got {name!r}.")
    if not hasattr(cls, "default_weight"):
        raise ValueError(f"{cls.__name__} must define default_weight.")
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"a method named {name!r} is already registered ({METHODS[name].__name__}).")
    METHODS[name] = cls
    return cls


def build_method(
    name: str,
    student_example: ModelOutputs,
    teacher_example: ModelOutputs,
    num_samples: int | None = None,
    **kwargs: Any,
) -> DistillationMethod:
    """Build the method `name` (case-insensitive; `-` and `_` are the same) from example outputs of both models."""
    from . import distillers  # noqa: F401  (registers the methods)

    key = str(name).strip().lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; known methods: {', '.join(sorted(METHODS))}.")
    cls = METHODS[key]
    if cls.needs_index and num_samples is None:
        raise ValueError(
            f"{key} keeps one memory slot per training sample: pass num_samples=len(train_dataset) (and give the "
            "batches an `index` column)."
        )
    return cls(student_example, teacher_example, num_samples=num_samples, **kwargs)


def extra_parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements a method adds (all of them, or only those that require a gradient)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def extra_buffer_count(module: nn.Module) -> int:
    """Number of buffer elements a method adds (e.g. CRD's two N x 128 memory banks), persistent or not."""
    return sum(b.numel() for b in module.buffers())
