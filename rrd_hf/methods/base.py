"""What every distillation method shares: the activations it reads, the context it is built in, its base class.

A method is a thin `nn.Module` around a pure loss function. The trainer hands it the `Activations` of the student
and of the teacher for a batch and gets back the **unweighted** scalar loss; the objective's weight is applied by
the trainer. Everything a method trains (projection heads, regressors, paraphraser...) or keeps (memories) lives
in the module, so the trainer optimises, checkpoints and synchronises it with the student without knowing what
it is.

What a method may know about the run comes in one explicit object, the `MethodContext`, given at construction:
example activations of both models (shapes), the number of training samples and their labels, the seed, the
process layout, the gather function of data parallelism and the current epoch (the trainer keeps it up to date).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

__all__ = [
    "Activations",
    "MethodContext",
    "InitStage",
    "DistillationMethod",
    "float32_math",
    "extra_parameter_count",
    "extra_buffer_count",
]


@dataclass
class Activations:
    """One model's activations for a batch, as the methods read them.

    Attributes:
        logits: `(B, C)`.
        features: `(B, D)` penultimate vector, the classifier's input (read by a hook, no second forward).
        hidden_states: RepDistiller's `feat` layout: stem, each stage output, then the pooled penultimate vector as
            the last entry. Present only when a method of the objective needs it (`needs_hidden_states`).
    """

    logits: torch.Tensor
    features: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @classmethod
    def from_model_output(cls, output: Any, features: torch.Tensor | None = None) -> "Activations":
        """From a transformers image-classifier output (`.logits`, optional `.hidden_states`).

        `features` defaults to the last hidden state (the pooled vector in rrd_hf's zoo); pass it explicitly (e.g.
        from `rrd_hf.FeatureTap`) for models whose last hidden state is not the classifier input.
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

    def detach(self) -> "Activations":
        return Activations(
            logits=self.logits.detach(),
            features=None if self.features is None else self.features.detach(),
            hidden_states=None if self.hidden_states is None else tuple(h.detach() for h in self.hidden_states),
        )


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass
class MethodContext:
    """Everything a method may know about the run, in one object the trainer owns and keeps current.

    Attributes:
        student, teacher: example activations of both models (their shapes size the trainable parts).
        num_samples: number of slots for per-sample state (the largest dataset `index` + 1); None when unknown.
        dataset_labels: the label of every dataset index (`-1` for indices not in the set), when readable.
        seed: the run's seed; methods draw their random numbers from it, never from the global generator.
        process_index, num_processes: this process and the number of data-parallel processes.
        train_batch_size: samples per process in one forward (the micro-batch).
        gather: concatenates a tensor over the processes in rank order (`accelerator.gather`); identity alone.
        epoch: the 1-based number of the epoch being trained (the benchmark codes' convention); None outside a
            training loop. The trainer updates it at every epoch start.
    """

    student: Activations
    teacher: Activations
    num_samples: int | None = None
    dataset_labels: torch.Tensor | None = None
    seed: int = 0
    process_index: int = 0
    num_processes: int = 1
    train_batch_size: int | None = None
    gather: Callable[[torch.Tensor], torch.Tensor] = _identity
    epoch: int | None = None

    @property
    def global_batch_size(self) -> int | None:
        return None if self.train_batch_size is None else self.train_batch_size * self.num_processes


@dataclass(frozen=True)
class InitStage:
    """The first stage of a two-stage method (RepDistiller `helper/pretrain.py::init`).

    For `epochs` epochs, SGD (momentum 0.9, the run's weight decay) trains only the parameters the stage names
    (`DistillationMethod.init_stage_parameters` plus, with `trains_student`, the student's feature modules) on the
    method's loss alone, with the teacher and the rest of the student in eval mode. `epochs == 0` skips it.

    Attributes:
        epochs: RepDistiller's `--init_epochs` (30).
        trains_student: whether the student's feature modules (`get_feat_modules()`) are trained, in train mode.
        learning_rate: the stage's learning rate; None means the run's learning rate (as in the benchmark).
    """

    epochs: int
    trains_student: bool
    learning_rate: float | None = None


def float32_math(tensor: torch.Tensor):
    """Autocast off on `tensor`'s device: the losses compute in float32 also under bf16/fp16 autocast."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


class DistillationMethod(nn.Module):
    """Base class of every distillation term (RRD, KD, CRD, ...).

    Subclasses set `name` and `default_weight`, declare what they read (`needs_*`), build their trainable parts
    from `context` in `__init__` (keyword options after `context`, with defaults), and implement `forward`.
    Two-stage methods set `self.init_stage` and return their stage's own parameters from `init_stage_parameters`.
    Options can be checked before any model exists with `check_options` (the config does so).
    """

    name: ClassVar[str]
    #: The benchmark's weight of the loss (used when the objective gives none).
    default_weight: ClassVar[float]
    needs_features: ClassVar[bool] = False
    needs_hidden_states: ClassVar[bool] = False
    needs_preact: ClassVar[bool] = False
    needs_index: ClassVar[bool] = False
    #: True for methods that want the label of every training sample (`context.dataset_labels`).
    needs_dataset_labels: ClassVar[bool] = False
    #: False for methods whose benchmark adds no term after their init stage (AB, FSP): `forward` is not called.
    main_stage_loss: ClassVar[bool] = True
    #: True for methods that can have an init stage (its length may then be set by `init_epochs`).
    has_init_stage: ClassVar[bool] = False

    def __init__(self, context: MethodContext):
        super().__init__()
        if not isinstance(context, MethodContext):
            raise TypeError(f"{self.name}: expected a MethodContext, got {type(context).__name__}.")
        for role in ("student", "teacher"):
            activations = getattr(context, role)
            if not isinstance(activations, Activations):
                raise TypeError(f"{self.name}: context.{role} must be Activations, got {type(activations).__name__}.")
            if self.needs_features and activations.features is None:
                raise ValueError(f"{self.name} needs the {role}'s penultimate features (Activations.features).")
            if self.needs_hidden_states:
                self.hidden(activations, role)
        if self.needs_index and context.num_samples is None:
            raise ValueError(
                f"{self.name} keeps one slot per training sample: the context needs num_samples (the largest dataset "
                "index + 1), and the batches an `index` column."
            )
        self.context = context
        self.init_stage: InitStage | None = None
        self.in_init_stage = False
        self._init_stage_flags: list[tuple[nn.Parameter, bool]] = []

    # ---------------------------------------------------------------------------------------------- helpers
    def hidden(self, activations: Activations, role: str) -> tuple[torch.Tensor, ...]:
        hidden = activations.hidden_states
        if hidden is None or len(hidden) < 3:
            extra = " and preact=True" if self.needs_preact else ""
            raise ValueError(
                f"{self.name} needs the {role}'s hidden_states (stem, stage outputs..., pooled): run the model with "
                f"output_hidden_states=True{extra}; got {'None' if hidden is None else f'{len(hidden)} entries'}."
            )
        return tuple(hidden)

    def stage_maps(self, activations: Activations, role: str) -> tuple[torch.Tensor, ...]:
        """`hidden_states[1:-1]`: the stage outputs (RepDistiller `feat[1:-1]`)."""
        maps = self.hidden(activations, role)[1:-1]
        for i, m in enumerate(maps, start=1):
            if m.dim() != 4:
                raise ValueError(f"{self.name}: {role} hidden_states[{i}] must be a (B, C, H, W) map, got {tuple(m.shape)}.")
        return maps

    @classmethod
    def check_options(cls, options: dict[str, Any], *, global_batch_size: int | None = None) -> None:
        """Validate option values before the models exist (the config calls this); no-op by default."""

    @classmethod
    def uses_index(cls, options: dict[str, Any]) -> bool:
        """Whether a method built with `options` needs the dataset `index` of every sample (and `num_samples`)."""
        return cls.needs_index

    # ---------------------------------------------------------------------------------------------- interface
    def forward(
        self,
        student: Activations,
        teacher: Activations,
        index: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def init_stage_parameters(self) -> list[nn.Parameter]:
        """This module's parameters trained in the init stage (two-stage methods override)."""
        return []

    def begin_init_stage(self) -> list[nn.Parameter]:
        """Enter the init stage: only `init_stage_parameters()` of this module require a gradient; return them."""
        if self.init_stage is None:
            raise ValueError(f"{self.name} has no init stage.")
        if self.in_init_stage:
            raise RuntimeError(f"{self.name}: begin_init_stage called twice without end_init_stage.")
        own = self.init_stage_parameters()
        own_ids = {id(p) for p in own}
        self._init_stage_flags = [(p, p.requires_grad) for p in self.parameters()]
        for p in self.parameters():
            p.requires_grad_(id(p) in own_ids)
        self.in_init_stage = True
        return own

    def end_init_stage(self) -> None:
        """Leave the init stage: every flag back to what it was."""
        for p, flag in self._init_stage_flags:
            p.requires_grad_(flag)
        self._init_stage_flags = []
        self.in_init_stage = False

    def extra_repr(self) -> str:
        return f"name={self.name!r}, default_weight={self.default_weight}"


def extra_parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements a method adds (all of them, or only those that require a gradient)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def extra_buffer_count(module: nn.Module) -> int:
    """Number of buffer elements a method adds (e.g. CRD's two N x 128 memory banks), persistent or not."""
    return sum(b.numel() for b in module.buffers())
