"""`RRDConfig`: every knob of RRD distillation, on top of `transformers.TrainingArguments`."""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .rrd import ENQUEUE_ORDERS, MEMORY_TYPES

__all__ = ["RRDConfig", "RRD_PRESETS"]

#: Named settings of the method. Explicitly given fields override the preset's.
RRD_PRESETS: dict[str, dict[str, typing.Any]] = {
    # The setting of the authors' 2024 code, which produced every published CIFAR-100 and transfer number:
    # a sharper *student* and the current batch enqueued after the similarities are computed.
    "published": {"student_temperature": 0.04, "teacher_temperature": 0.10, "enqueue": "after"},
    # The defaults of the authors' 2025 code (and the newest abstract's "sharper teacher"): the current batch is
    # enqueued first, so each sample's own teacher embedding is among the anchors (τ_t → 0 gives InfoNCE).
    "code-2025": {"student_temperature": 0.10, "teacher_temperature": 0.02, "enqueue": "before"},
}


def _accepts_float(annotation: typing.Any) -> bool:
    if annotation is float:
        return True
    if isinstance(annotation, str):
        return "float" in annotation and "list" not in annotation
    return float in typing.get_args(annotation)


@dataclass
class RRDConfig(TrainingArguments):
    r"""Configuration of [`RRDTrainer`]: `TrainingArguments` plus the distillation fields below.

    The total training loss is `ce_weight · CE + kd_weight · KD + rrd_weight · RRD`. The published runs use
    RRD = 1·CE + 1·RRD and RRD+KD = 1·CE + 1·KD + 1·RRD.

    Args:
        rrd_preset (`str`, defaults to `"published"`):
            Named temperatures and enqueue order (see `RRD_PRESETS`); fields given explicitly win over the preset.
        ce_weight, kd_weight, rrd_weight (`float`):
            Weights of cross-entropy on the labels, Hinton KD on the logits and the RRD loss. None may be negative and
            not all may be zero. With `kd_weight == rrd_weight == 0` no teacher is needed (the student-alone baseline).
        kd_temperature (`float`, defaults to 4): temperature of KD; its loss is scaled by T².
        embedding_dim (`int`, defaults to 128): output size of both projection heads.
        memory_size (`int`, defaults to 16384): K, the number of teacher embeddings every sample is compared with
            (the FIFO length, or the anchors drawn per step from the momentum memory).
        student_temperature, teacher_temperature (`float`): τ_s and τ_t of the two similarity distributions.
        enqueue (`str`): `"after"` (similarities against previous batches only) or `"before"` (current batch first).
        memory_type (`str`): `"fifo"` (ring buffer) or `"momentum"` (one slot per training sample, needs `index`).
        memory_momentum (`float`, defaults to 0.5): momentum of the per-sample slots of the momentum memory.
        teacher_model_name_or_path (`str`, *optional*): Hub id or local path of the teacher, when the trainer
            is not given a teacher module.
        student_feature_module, teacher_feature_module (`str`, *optional*): dotted name of the module whose *input*
            is the penultimate feature vector; by default the classifier (`classifier`, `fc` or `head`).
        teacher_image_size (`int`, *optional*), teacher_image_mean / teacher_image_std, student_image_mean /
            student_image_std (`list[float]`, *optional*): how to turn a student batch into the teacher's input
            (resize and renormalise on the device). Unset values come from the models' image-processor configs.
        lr_decay_epochs (`list[int]`, *optional*): step-decay the learning rate by `lr_decay_rate` at the start of
            each listed epoch (CIFAR protocol: 150 180 210). Replaces `lr_scheduler_type` when set.
        decay_all_parameters (`bool`, defaults to False): apply weight decay to every parameter, BatchNorm and
            biases included, as the CIFAR benchmark code does (`SGD(model.parameters(), weight_decay=...)`).
        distill_method (`str`, *optional*): another distillation loss by name (`rrd_hf.methods.METHODS`: `dkd`,
            `kd_ls`, `dkd_ls`, `crd`, `fitnet`, `at`, `sp`, `cc`, `vid`, `rkd`, `pkt`, `ab`, `ft`, `fsp`, `nst`, ...),
            added as `distill_weight · loss` to the terms above: e.g. CRD alone (`rrd_weight=0`), CRD+KD, or RRD+DKD.
        distill_weight (`float`, *optional*): its weight; default the benchmark's weight of that method.
        distill_kwargs (`dict` or JSON `str`, *optional*): keyword arguments of the method (e.g. `{"beta": 8}`).
        init_epochs (`int`, *optional*): epochs of the initialisation stage of two-stage methods (AB, FT, FSP, and
            FitNet's hint stage when enabled); default the method's (30 in the benchmark code); 0 skips it.
        student_hidden_modules, teacher_hidden_modules (`list[str]`, *optional*): for feature-map methods on models
            that return no `hidden_states`: the dotted names of the modules (stem, stages, ...) whose outputs, read
            with forward hooks, stand in for them. The penultimate vector is appended as the last entry, as in
            rrd_hf.models; it is also appended to native `hidden_states` that end with a feature map (HF CNNs).
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["distill_kwargs"]

    rrd_preset: str = field(
        default="published",
        metadata={"help": "Named RRD setting: " + ", ".join(RRD_PRESETS) + ". Explicit fields override it."},
    )
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy loss on the labels."})
    kd_weight: float = field(default=0.0, metadata={"help": "Weight of Hinton KD on the logits (1 for RRD+KD)."})
    rrd_weight: float = field(default=1.0, metadata={"help": "Weight of the RRD loss."})
    kd_temperature: float = field(default=4.0, metadata={"help": "KD temperature T (the KD loss is scaled by T²)."})
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
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local path of the teacher (AutoModelForImageClassification)."}
    )
    student_feature_module: str | None = field(
        default=None, metadata={"help": "Module whose input is the student's penultimate feature (default: classifier)."}
    )
    teacher_feature_module: str | None = field(
        default=None, metadata={"help": "Module whose input is the teacher's penultimate feature (default: classifier)."}
    )
    teacher_image_size: int | None = field(
        default=None, metadata={"help": "Resize the student batch to this size for the teacher (default: its processor)."}
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
    distill_method: str | None = field(
        default=None, metadata={"help": "Another distillation loss by name (dkd, crd, fitnet, at, ...), see rrd_hf.methods."}
    )
    distill_weight: float | None = field(
        default=None, metadata={"help": "Weight of distill_method's loss (default: the benchmark's weight)."}
    )
    distill_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of distill_method, as a dict or a JSON string."}
    )
    init_epochs: int | None = field(
        default=None, metadata={"help": "Init-stage epochs of two-stage methods (default the method's; 0 skips it)."}
    )
    student_hidden_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules whose outputs are the student's hidden states (forward hooks), for "
                                        "models that return none; default: output_hidden_states."}
    )
    teacher_hidden_modules: list[str] | None = field(
        default=None, metadata={"help": "The same for the teacher."}
    )
    # Changed TrainingArguments defaults: the trainer computes its losses itself and needs the raw columns.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: transforms need the raw columns, the loss needs `index`."}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "Keys of the labels in a batch."}
    )

    def __post_init__(self):
        self._coerce_floats()
        self._apply_preset()
        self._validate_rrd()
        super().__post_init__()

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

    def _apply_preset(self) -> None:
        if self.rrd_preset not in RRD_PRESETS:
            raise ValueError(f"unknown rrd_preset {self.rrd_preset!r}: choose one of {sorted(RRD_PRESETS)}.")
        for key, value in RRD_PRESETS[self.rrd_preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    def _validate_rrd(self) -> None:
        weights = {"ce_weight": self.ce_weight, "kd_weight": self.kd_weight, "rrd_weight": self.rrd_weight}
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}. Use 0 to switch a loss term off.")
        self._resolve_method()
        if self.distill_method is not None:
            weights["distill_weight"] = self.distill_weight
        if self.distill_weight is not None and self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}. Use 0 to switch it off.")
        if all(value == 0 for value in weights.values()):
            raise ValueError("every loss weight is 0: nothing to train. Set at least one of them > 0.")
        for name in ("student_temperature", "teacher_temperature", "kd_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.enqueue not in ENQUEUE_ORDERS:
            raise ValueError(f"enqueue must be one of {ENQUEUE_ORDERS}, got {self.enqueue!r}.")
        if self.memory_type not in MEMORY_TYPES:
            raise ValueError(f"memory_type must be one of {MEMORY_TYPES}, got {self.memory_type!r}.")
        if not 0 <= self.memory_momentum < 1:
            raise ValueError(f"memory_momentum must be in [0, 1), got {self.memory_momentum}.")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}.")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.check_memory_size(world_size)
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

    def _resolve_method(self) -> None:
        if self.distill_method is None:
            return
        from .methods import METHODS

        key = str(self.distill_method).strip().lower().replace("-", "_")
        if key not in METHODS:
            raise ValueError(f"unknown distill_method {self.distill_method!r}: choose one of {', '.join(sorted(METHODS))}.")
        self.distill_method = key
        if self.distill_weight is None:
            self.distill_weight = float(METHODS[key].default_weight)
        if isinstance(self.distill_kwargs, str):
            import json

            try:
                self.distill_kwargs = json.loads(self.distill_kwargs) if self.distill_kwargs.strip() else {}
            except json.JSONDecodeError as error:
                raise ValueError(f"distill_kwargs must be a JSON object, got {self.distill_kwargs!r}: {error}") from None
        if self.init_epochs is not None and self.init_epochs < 0:
            raise ValueError(f"init_epochs must be >= 0, got {self.init_epochs}.")

    def check_memory_size(self, world_size: int) -> None:
        """The memory must hold at least one global batch, or a single step would overwrite all of it."""
        if self.rrd_weight == 0 or self.memory_type != "fifo":
            return
        global_batch = self.per_device_train_batch_size * max(world_size, 1)
        if self.memory_size < global_batch:
            raise ValueError(
                f"memory_size={self.memory_size} is smaller than the global batch "
                f"({self.per_device_train_batch_size} per device x {world_size} processes = {global_batch}): "
                "raise memory_size (the published value is 16384) or lower the batch size."
            )

    @property
    def needs_teacher(self) -> bool:
        return self.kd_weight > 0 or self.rrd_weight > 0 or self.distill_method is not None

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> "RRDConfig":
        """`RRDConfig.from_preset("code-2025", output_dir=...)`: the same as passing `rrd_preset=`."""
        return cls(rrd_preset=preset, **kwargs)
