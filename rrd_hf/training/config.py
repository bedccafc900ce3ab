"""`RRDConfig`: the distillation objective and every knob of the run, on top of `transformers.TrainingArguments`.

The objective is data: `ce_weight · CE + Σ weight_i · method_i`, each term a registered method of `rrd_hf.methods`
with its options, given in full with `distill_terms` or with the shorthand fields the recipes use; it is resolved
once, in `__post_init__`, by `rrd_hf.methods.objective.resolve_loss_terms`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..methods import RRD_PRESETS, check_method_kwargs, method_class
from ..methods.memory import MEMORY_TYPES
from ..methods.objective import LossTerm, describe_objective, json_field, resolve_loss_terms
from ..methods.rrd import ENQUEUE_ORDERS

__all__ = ["RRDConfig"]


def _accepts_float(annotation: typing.Any) -> bool:
    if annotation is float:
        return True
    if isinstance(annotation, str):
        return "float" in annotation and "list" not in annotation
    return float in typing.get_args(annotation)


@dataclass
class RRDConfig(TrainingArguments):
    r"""Configuration of [`RRDTrainer`]: `TrainingArguments` plus the distillation objective below.

    The training loss is `ce_weight · CE + Σ weight · term` over the terms of `loss_terms`. The published runs are
    RRD = 1·CE + 1·RRD (the defaults) and RRD+KD = 1·CE + 1·KD + 1·RRD (`kd_weight=1`).

    Args:
        ce_weight (`float`, defaults to 1): weight of cross-entropy on the labels.
        distill_terms (`list[dict]` or JSON `str`, *optional*): the general form of the objective, e.g.
            `[{"method": "rrd"}, {"method": "kd", "weight": 1}, {"method": "crd", "weight": 0.8}]`. Each entry has
            `method` (a name of `rrd_hf.methods.METHODS`), `weight` (default: the benchmark's), `kwargs` (the
            method's options) and `name` (default: the method's; names the logged `loss_<name>`). Cannot be
            combined with the shorthand fields below.
        rrd_weight (`float`, *optional*): weight of RRD; default 1, or 0 when `distill_method` names another method.
        kd_weight (`float`, *optional*): weight of Hinton KD at `kd_temperature` (1 for RRD+KD); default 0.
        kd_temperature (`float`, defaults to 4): temperature of KD; its loss is scaled by T².
        rrd_preset (`str`, defaults to `"published"`): named RRD temperatures and enqueue order (`RRD_PRESETS`);
            fields given explicitly win over the preset.
        embedding_dim, memory_size, student_temperature, teacher_temperature, enqueue, memory_type,
            memory_momentum, num_anchors: options of every `rrd` term (see `rrd_hf.methods.RRD`): projection size
            (128), K (16384: the FIFO memory's length), τ_s and τ_t, `"after"` or `"before"`, `"fifo"` or
            `"momentum"` (one slot per training sample, needs `index`), its momentum (0.5), and the slots of the
            momentum memory drawn as anchors at every step (16384).
        distill_method (`str`, *optional*), distill_weight (`float`, *optional*), distill_kwargs (`dict` or JSON):
            one more method by name with its weight (default the benchmark's) and options: CRD alone is
            `distill_method="crd"`, CRD+KD adds `kd_weight=1`, RRD+DKD is `distill_method="dkd", rrd_weight=1`.
        init_epochs (`int`, *optional*): epochs of the initialisation stage of two-stage methods (AB, FT, FSP, and
            FitNet's hint stage); default the method's (30 in the benchmark code); 0 skips it.
        teacher_model_name_or_path (`str`, *optional*): Hub id or local path of the teacher, when the trainer
            is not given a teacher module.
        student_feature_module, teacher_feature_module (`str`, *optional*): dotted name of the module whose *input*
            is the penultimate feature vector; by default the classifier (`classifier`, `fc` or `head`).
        student_hidden_modules, teacher_hidden_modules (`list[str]`, *optional*): for feature-map methods on models
            that return no `hidden_states`: the modules (stem, stages, ...) whose outputs stand in for them.
        teacher_image_size (`int`, *optional*), teacher_image_mean / teacher_image_std, student_image_mean /
            student_image_std (`list[float]`, *optional*): how to turn a student batch into the teacher's input
            (renormalise and resize on the device). Unset values come from the models and the data.
        lr_decay_epochs (`list[int]`, *optional*): multiply the learning rate by `lr_decay_rate` at the start of
            each listed epoch (CIFAR protocol: 150 180 210). Replaces `lr_scheduler_type` when set.
        decay_all_parameters (`bool`, defaults to False): weight decay on every parameter, BatchNorm and biases
            included, as the CIFAR benchmark code does (`SGD(model.parameters(), weight_decay=...)`).
        overwrite_output_dir (`bool`, defaults to False): allow a new run into an `output_dir` that holds a finished
            model or checkpoints (their files are replaced). Without it such a run is refused unless it resumes.
        channels_last (`bool`, defaults to True): student, teacher and batches in channels-last memory order (faster
            convolutions; the same values up to float rounding; the saved weights are ordinary tensors).
        fold_teacher_batch_norm (`bool`, defaults to False): run a float32 frozen teacher with each eval-mode
            BatchNorm folded into the convolution that feeds it (`rrd_hf.classifiers.batch_norm_folding`): one pass
            over every feature map less per BatchNorm, the same outputs up to float rounding. Pairs are found by
            tracing one forward and checked against the unfolded teacher; the module you passed is not changed.
            Useful for eager float32 training (e.g. on a CPU); under bf16/fp16 it folds nothing.
        check_finite (`bool`, defaults to True): stop the run when a loss term, a gradient or a BatchNorm statistic
            becomes NaN or infinite, before the optimizer step uses it.
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["distill_kwargs"]

    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy loss on the labels."})
    distill_terms: list | str | None = field(
        default=None,
        metadata={"help": "The objective's terms as a JSON list of {method, weight, kwargs, name}, e.g. "
                          "'[{\"method\": \"rrd\"}, {\"method\": \"crd\", \"weight\": 0.8}]'."},
    )
    rrd_weight: float | None = field(
        default=None, metadata={"help": "Weight of the RRD loss (default 1, or 0 when distill_method is set)."}
    )
    kd_weight: float | None = field(default=None, metadata={"help": "Weight of Hinton KD on the logits (1 for RRD+KD)."})
    kd_temperature: float = field(default=4.0, metadata={"help": "KD temperature T (the KD loss is scaled by T²)."})
    rrd_preset: str = field(
        default="published",
        metadata={"help": "Named RRD setting: " + ", ".join(RRD_PRESETS) + ". Explicit fields override it."},
    )
    embedding_dim: int = field(default=128, metadata={"help": "Output size of the projection heads."})
    memory_size: int = field(default=16384, metadata={"help": "K: teacher embeddings each sample is compared with."})
    student_temperature: float | None = field(
        default=None, metadata={"help": "τ_s of the student distribution (default from rrd_preset)."}
    )
    teacher_temperature: float | None = field(
        default=None, metadata={"help": "τ_t of the teacher distribution (default from rrd_preset)."}
    )
    enqueue: str | None = field(
        default=None,
        metadata={"help": "'after': compare with previous batches only; 'before': enqueue the batch first.",
                  "choices": list(ENQUEUE_ORDERS) + [None]},
    )
    memory_type: str = field(
        default="fifo", metadata={"help": "'fifo' ring buffer or 'momentum' per-sample slots.", "choices": list(MEMORY_TYPES)}
    )
    memory_momentum: float = field(default=0.5, metadata={"help": "Momentum of the per-sample memory slots."})
    num_anchors: int | None = field(
        default=None, metadata={"help": "Momentum memory only: slots drawn as anchors at every step (default 16384)."}
    )
    distill_method: str | None = field(
        default=None, metadata={"help": "Another distillation loss by name (dkd, crd, fitnet, at, ...), see rrd_hf.methods."}
    )
    distill_weight: float | None = field(
        default=None, metadata={"help": "Weight of distill_method's loss (default: the benchmark's weight)."}
    )
    distill_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Options of distill_method, as a dict or a JSON string."}
    )
    init_epochs: int | None = field(
        default=None, metadata={"help": "Init-stage epochs of two-stage methods (default the method's; 0 skips it)."}
    )
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local path of the teacher (AutoModelForImageClassification)."}
    )
    student_feature_module: str | None = field(
        default=None, metadata={"help": "Module whose input is the student's penultimate feature (default: classifier)."}
    )
    teacher_feature_module: str | None = field(
        default=None, metadata={"help": "Module whose input is the teacher's penultimate feature (default: classifier)."}
    )
    student_hidden_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules whose outputs are the student's hidden states (forward hooks), for "
                                        "models that return none; default: output_hidden_states."}
    )
    teacher_hidden_modules: list[str] | None = field(default=None, metadata={"help": "The same for the teacher."})
    teacher_image_size: int | None = field(
        default=None, metadata={"help": "Resize the student batch to this size for the teacher (default: its config)."}
    )
    teacher_image_mean: list[float] | None = field(default=None, metadata={"help": "Teacher input mean per channel."})
    teacher_image_std: list[float] | None = field(default=None, metadata={"help": "Teacher input std per channel."})
    student_image_mean: list[float] | None = field(default=None, metadata={"help": "Mean the batch was normalised with."})
    student_image_std: list[float] | None = field(default=None, metadata={"help": "Std the batch was normalised with."})
    lr_decay_epochs: list[int] | None = field(
        default=None, metadata={"help": "Multiply the LR by lr_decay_rate at these epochs (e.g. 150 180 210)."}
    )
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Factor of each step of lr_decay_epochs."})
    decay_all_parameters: bool = field(
        default=False, metadata={"help": "Weight decay on every parameter, norms and biases included (CIFAR protocol)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow a new run into an output_dir holding a finished model or checkpoints."}
    )
    channels_last: bool = field(
        default=True, metadata={"help": "Keep convolution weights and batches in channels-last memory order: faster "
                                        "convolutions on CPU and GPU, the same values up to float rounding."}
    )
    fold_teacher_batch_norm: bool = field(
        default=False, metadata={"help": "Run a float32 frozen teacher with its eval-mode BatchNorms folded into the "
                                         "convolutions before them: the same outputs up to float rounding, faster."}
    )
    check_finite: bool = field(
        default=True, metadata={"help": "Stop when a loss term, gradient or BatchNorm statistic is NaN or infinite."}
    )
    # Changed TrainingArguments defaults: the trainer computes its losses itself and needs the raw columns; NaN and
    # inf losses stop the run (check_finite) instead of being hidden from the log, at no per-step sync.
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Kept False: check_finite stops a run at a non-finite loss instead."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: transforms need the raw columns, the loss needs `index`."}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "Keys of the labels in a batch."}
    )

    def __post_init__(self):
        self._coerce_floats()
        self._apply_preset()
        if isinstance(self.distill_kwargs, str):
            self.distill_kwargs = json_field(self.distill_kwargs, "distill_kwargs")
        if isinstance(self.distill_terms, str):
            self.distill_terms = json_field(self.distill_terms, "distill_terms")
        self._check_finite_numbers()
        self._validate_objective()
        self._validate_schedule_and_inputs()
        super().__post_init__()
        self._check_reporting_extras()

    def _coerce_floats(self) -> None:
        # PyYAML reads `5e-4` as a string and HfArgumentParser does not convert it: accept it here rather than
        # letting a string reach the optimizer.
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and _accepts_float(hints.get(f.name, f.type)):
                try:
                    setattr(self, f.name, float(value))
                except ValueError:
                    raise ValueError(f"{f.name} must be a number, got {value!r}.") from None

    def _check_finite_numbers(self) -> None:
        # A NaN or infinite learning rate, weight decay or loss weight trains with finite gradients and leaves
        # non-finite weights after the step: refuse it before anything runs.
        def finite(value) -> bool:  # through the lists and dicts of distill_terms / distill_kwargs too
            if isinstance(value, float):
                return math.isfinite(value)
            if isinstance(value, Mapping):
                return all(finite(v) for v in value.values())
            return all(finite(v) for v in value) if isinstance(value, (list, tuple)) else True

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not finite(value):
                raise ValueError(f"{f.name} must hold finite numbers only, got {value!r}.")

    def _apply_preset(self) -> None:
        if self.rrd_preset not in RRD_PRESETS:
            raise ValueError(f"unknown rrd_preset {self.rrd_preset!r}: choose one of {sorted(RRD_PRESETS)}.")
        for key, value in RRD_PRESETS[self.rrd_preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    def _validate_objective(self) -> None:
        for name in ("ce_weight", "kd_weight", "rrd_weight", "distill_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}. Use 0 to switch a loss term off.")
        if not self.kd_temperature > 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}.")
        ce_weight, terms = self.objective()
        for term in terms:
            if term.weight < 0:
                raise ValueError(f"the weight of {term.name} must be >= 0, got {term.weight}.")
            check_method_kwargs(term.method, term.kwargs)
            method_class(term.method).check_options(term.kwargs, global_batch_size=self._global_batch_size())
        if ce_weight == 0 and not terms:
            raise ValueError("every loss weight is 0: nothing to train. Set at least one of them > 0.")
        if self.init_epochs is not None:
            if self.init_epochs < 0:
                raise ValueError(f"init_epochs must be >= 0, got {self.init_epochs}.")
            if not any(method_class(term.method).has_init_stage for term in terms):
                raise ValueError(f"init_epochs={self.init_epochs} is set but no term of the objective has an "
                                 "initialisation stage (ab, ft, fsp, fitnet): remove it or add such a method.")

    def _validate_schedule_and_inputs(self) -> None:
        if self.lr_decay_epochs is not None:
            epochs = list(self.lr_decay_epochs)
            if any(e <= 0 for e in epochs) or epochs != sorted(epochs):
                raise ValueError(f"lr_decay_epochs must be increasing positive epochs, got {epochs}.")
        if not 0 < self.lr_decay_rate <= 1:
            raise ValueError(f"lr_decay_rate must be in (0, 1], got {self.lr_decay_rate}.")
        for side in ("teacher", "student"):
            for stat in ("mean", "std"):
                value = getattr(self, f"{side}_image_{stat}")
                if value is not None and len(value) not in (1, 3):
                    raise ValueError(f"{side}_image_{stat} needs 1 or 3 values, got {value}.")
            if any(v <= 0 for v in getattr(self, f"{side}_image_std") or []):
                raise ValueError(f"{side}_image_std values must be > 0.")

    def _check_reporting_extras(self) -> None:
        """`report_to` integrations need packages rrd_hf installs only with their extra: say which, up front."""
        import importlib.util

        modules = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",)}
        for name in self.report_to or []:
            needed = modules.get(name)
            if needed and not any(importlib.util.find_spec(module) for module in needed):
                raise ImportError(f"report_to={name!r} needs the {needed[0]} package: pip install 'rrd_hf[{name}]'.")

    def _global_batch_size(self) -> int:
        return self.per_device_train_batch_size * max(int(os.environ.get("WORLD_SIZE", "1")), 1)

    def objective(self) -> tuple[float, list[LossTerm]]:
        """`(ce_weight, loss_terms)`."""
        return resolve_loss_terms({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @property
    def loss_terms(self) -> list[LossTerm]:
        """The weighted distillation terms of the objective (cross-entropy is `ce_weight`)."""
        return self.objective()[1]

    @property
    def needs_teacher(self) -> bool:
        return bool(self.loss_terms)

    def describe_objective(self) -> str:
        """`"1·CE + 1·KD + 1·RRD"`: the objective in one line, for logs and errors."""
        return describe_objective(*self.objective())
