"""`RRDTrainer`: a `transformers.Trainer` that distils a frozen teacher into the student with CE, KD and RRD."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForImageClassification, PreTrainedModel, Trainer, TrainerCallback

from .config import RRDConfig
from .features import FeatureTap
from .losses import kd_loss
from .metrics import compute_classification_metrics
from .rrd import RRDLoss
from .teacher_inputs import ImageStats, TeacherInputAdapter, image_stats_from_pretrained, image_stats_from_processor

__all__ = ["RRDTrainer", "RRD_STATE_NAME", "load_image_classifier", "check_same_labels"]

logger = logging.getLogger(__name__)

#: File inside each `checkpoint-*` folder with the projection heads and the memory (never in the final model).
RRD_STATE_NAME = "rrd_state.safetensors"
_BATCH_ONLY_KEYS = ("labels", "index")


def load_image_classifier(name_or_path: str | os.PathLike, role: str = "teacher", **kwargs) -> PreTrainedModel:
    """`AutoModelForImageClassification.from_pretrained` with an error that says what to do when it fails."""
    from . import models as _models  # noqa: F401  (registers rrd_hf's architectures with the Auto classes)

    try:
        return AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as error:
        raise OSError(
            f"could not load the {role} {str(name_or_path)!r} as an AutoModelForImageClassification: {error}\n"
            f"Pass a local folder written by save_pretrained (or a module), or a Hub id while the Hub is reachable "
            f"(HF_HUB_OFFLINE must be unset)."
        ) from error


def _label_names(config) -> list[str] | None:
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label)]
    return None if all(name == f"LABEL_{i}" for i, name in enumerate(names)) else names


def check_same_labels(student: PreTrainedModel, teacher: PreTrainedModel) -> None:
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
    s_names, t_names = _label_names(s_config), _label_names(t_config)
    if s_names is not None and t_names is not None and s_names != t_names:
        differing = [i for i, (a, b) in enumerate(zip(s_names, t_names)) if a != b][:5]
        examples = ", ".join(f"{i}: student {s_names[i]!r} vs teacher {t_names[i]!r}" for i in differing)
        raise ValueError(
            f"teacher and student label names differ ({examples}): their id2label must list the same classes in "
            "the same order, or the teacher's predictions would be attributed to the wrong classes."
        )


def _memory_slots(train_dataset) -> int:
    """Slots of the momentum memory: one per dataset index (indices may skip rows after a select or shuffle)."""
    if train_dataset is None or not hasattr(train_dataset, "__len__"):
        raise ValueError("memory_type='momentum' needs a train_dataset with a length (one slot per sample).")
    index = getattr(train_dataset, "index", None)  # rrd_hf.data.InMemoryImageDataset
    if isinstance(index, torch.Tensor) and index.numel():
        return int(index.max()) + 1
    column_names = getattr(train_dataset, "column_names", None) or []
    if "index" in column_names:  # a datasets.Dataset: read the column without running the transform
        values = train_dataset.with_format("numpy")["index"]
        return int(max(values)) + 1 if len(values) else 0
    return len(train_dataset)


class _ZeroRRDGradients(TrainerCallback):
    """Trainer zeroes only the student's gradients (`model.zero_grad()`): clear the head's at every step's start,
    or they would accumulate across optimizer steps."""

    def __init__(self, rrd: nn.Module):
        self.rrd = rrd

    def on_step_begin(self, args, state, control, **kwargs):
        self.rrd.zero_grad(set_to_none=True)


class RRDTrainer(Trainer):
    """Distil a frozen `teacher_model` into `model` (the student) with Relational Representation Distillation.

    The loss is `ce_weight · CE + kd_weight · KD + rrd_weight · RRD` (see [`RRDConfig`]). The student is the Trainer's
    `model`, so saving, pushing, resuming and evaluation are those of any `Trainer`; the projection heads and the
    memory live in `self.rrd`, share the student's optimizer, scheduler, gradient clipping and DDP synchronisation,
    and are stored in every checkpoint as `rrd_state.safetensors` (never in `save_model`'s folder). The teacher is
    a plain attribute: frozen, always in eval mode, run under `no_grad` and the student's autocast, never saved.

    Args:
        model: the student (`PreTrainedModel`, or a local path / Hub id of an `AutoModelForImageClassification`).
        teacher_model: the teacher (module, local path or Hub id); defaults to `args.teacher_model_name_or_path`.
            Not needed when `kd_weight == rrd_weight == 0`.
        batch_transform: optional `callable(pixel_values, training) -> pixel_values` applied on the device to every
            batch, e.g. `rrd_hf.data.DeviceAugmentation` for augmentation on the accelerator.
        The other arguments are those of `transformers.Trainer`; `compute_metrics` defaults to top-1/top-5 accuracy.
    """

    _tag_names = ["knowledge-distillation", "rrd", "image-classification"]
    # compute_loss returns a per-micro-batch mean: let Trainer divide by the accumulation steps, and never scale by
    # the number of processes (see "the loss-scaling trap").
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: PreTrainedModel | str | None = None,
        teacher_model: nn.Module | str | None = None,
        args: RRDConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics: Callable | None = None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        batch_transform: Callable[[torch.Tensor, bool], torch.Tensor] | None = None,
        teacher_model_init_kwargs: dict[str, Any] | None = None,
    ):
        if args is None:
            args = RRDConfig(output_dir="rrd_output")
        elif not isinstance(args, RRDConfig):
            raise TypeError(
                f"args must be an RRDConfig, got {type(args).__name__}. Build one with RRDConfig(...) (it accepts every "
                "TrainingArguments field)."
            )
        if model is None:
            raise ValueError("RRDTrainer needs the student as `model` (a PreTrainedModel, local path or Hub id).")
        if isinstance(model, (str, os.PathLike)):
            model = load_image_classifier(model, role="student")

        teacher = self._resolve_teacher(teacher_model, args, teacher_model_init_kwargs or {})
        if teacher is not None:
            check_same_labels(model, teacher)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics if compute_metrics is not None else compute_classification_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self.model_accepts_loss_kwargs = False
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise NotImplementedError(
                "RRDTrainer supports one process and DDP (accelerate MULTI_GPU / torchrun). FSDP and DeepSpeed shard "
                "only the Trainer's model, so the projection heads and the memory would be left out: use DDP."
            )
        self.args.check_memory_size(self.accelerator.num_processes)
        self.batch_transform = batch_transform
        self._loss_terms: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._update_steps_per_epoch: int | None = None

        self.teacher = None
        self.teacher_input_adapter = None
        self.rrd: RRDLoss | None = None
        self._rrd_wrapped: nn.Module | None = None
        self._student_tap = self._teacher_tap = None
        if teacher is not None:
            self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)
            self.teacher_input_adapter = self._build_teacher_input_adapter(processing_class).to(self.args.device)
        if self.args.rrd_weight > 0:
            self._student_tap = FeatureTap(self.model, self.args.student_feature_module)
            self._teacher_tap = FeatureTap(self.teacher, self.args.teacher_feature_module)
            self.rrd = self._build_rrd(train_dataset).to(self.args.device)
            self.add_callback(_ZeroRRDGradients(self.rrd))

    # ----------------------------------------------------------------------------------------------- construction

    @staticmethod
    def _resolve_teacher(teacher_model, args: RRDConfig, init_kwargs: dict) -> nn.Module | None:
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if not args.needs_teacher:
            if teacher_model is not None:
                logger.warning("kd_weight and rrd_weight are 0: the teacher is not used (student-alone training).")
            return None
        if teacher_model is None:
            raise ValueError(
                f"kd_weight={args.kd_weight} and rrd_weight={args.rrd_weight} need a teacher: pass teacher_model= "
                "(a module, a local folder or a Hub id) or set teacher_model_name_or_path in the config."
            )
        if isinstance(teacher_model, (str, os.PathLike)):
            return load_image_classifier(teacher_model, role="teacher", **init_kwargs)
        if not isinstance(teacher_model, nn.Module):
            raise TypeError(f"teacher_model must be a module, a path or a Hub id, got {type(teacher_model).__name__}.")
        return teacher_model

    def _build_rrd(self, train_dataset) -> RRDLoss:
        args = self.args
        num_samples = _memory_slots(train_dataset) if args.memory_type == "momentum" else None
        # Seeded in a forked RNG: identical heads on every process, and the global random stream is left as is.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            return RRDLoss(
                student_dim=self._student_tap.dim,
                teacher_dim=self._teacher_tap.dim,
                embedding_dim=args.embedding_dim,
                memory_size=args.memory_size,
                student_temperature=args.student_temperature,
                teacher_temperature=args.teacher_temperature,
                enqueue=args.enqueue,
                memory_type=args.memory_type,
                num_samples=num_samples,
                memory_momentum=args.memory_momentum,
                seed=args.seed,
            )

    def _build_teacher_input_adapter(self, processing_class) -> TeacherInputAdapter:
        args = self.args
        teacher_stats = image_stats_from_pretrained(getattr(self.teacher, "name_or_path", None)) or ImageStats()
        student_stats = (
            image_stats_from_processor(processing_class)
            or image_stats_from_pretrained(getattr(self.model, "name_or_path", None))
            or ImageStats()
        )
        size = (args.teacher_image_size, args.teacher_image_size) if args.teacher_image_size else teacher_stats.size
        teacher = ImageStats(mean=args.teacher_image_mean or teacher_stats.mean, std=args.teacher_image_std or teacher_stats.std)
        student = ImageStats(mean=args.student_image_mean or student_stats.mean, std=args.student_image_std or student_stats.std)
        if teacher.mean is not None and student.mean is None:
            logger.warning(
                "the teacher expects inputs normalised with mean=%s std=%s, but the student's normalisation is unknown, "
                "so batches reach the teacher unchanged. Set student_image_mean/student_image_std (or pass the "
                "student's image processor as processing_class) to renormalise them.", teacher.mean, teacher.std,
            )
        adapter = TeacherInputAdapter(size=size, student=student, teacher=teacher)
        if not adapter.is_identity:
            logger.info("teacher inputs are adapted on the device: %s", adapter.extra_repr())
        return adapter

    # ----------------------------------------------------------------------------------------------- the loss

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if self.batch_transform is not None and "pixel_values" in inputs:
            inputs["pixel_values"] = self.batch_transform(inputs["pixel_values"], self.model.training)
        return inputs

    @torch.no_grad()
    def _teacher_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.teacher.training:  # someone called .train() on it: the teacher's BN statistics must never move
            self.teacher.eval()
        with self.accelerator.autocast():
            return self.teacher(pixel_values=self.teacher_input_adapter(pixel_values)).logits

    def _rrd_module(self) -> nn.Module:
        """The RRD module, DDP-wrapped under data parallelism so the student head's gradients are all-reduced."""
        if self._rrd_wrapped is None:
            if self.accelerator.num_processes > 1 and torch.distributed.is_initialized():
                # The memory is kept identical by gathering keys, not by DDP: exclude it from buffer broadcasts.
                ignored = [f"memory.{name}" for name, _ in self.rrd.memory.named_buffers()]
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.rrd, ignored)
                device_ids = [self.args.device.index] if self.args.device.type == "cuda" else None
                self._rrd_wrapped = DistributedDataParallel(
                    self.rrd, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=False
                )
            else:
                self._rrd_wrapped = self.rrd
            self.rrd.gather = self.accelerator.gather
        return self._rrd_wrapped

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        indices = inputs.get("index")
        model_inputs = {k: v for k, v in inputs.items() if k not in _BATCH_ONLY_KEYS}
        outputs = model(**model_inputs)
        logits = outputs.logits
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.args.label_smoothing_factor)

        if not model.training:  # evaluation: plain CE of the student; no teacher pass, no memory update
            if self._student_tap is not None:
                self._student_tap.clear()
            return (ce, outputs) if return_outputs else ce

        args = self.args
        terms = {"loss_ce": ce}
        loss = args.ce_weight * ce
        if self.teacher is not None:
            teacher_logits = self._teacher_logits(model_inputs["pixel_values"])
            if args.kd_weight > 0:
                terms["loss_kd"] = kd_loss(logits, teacher_logits, args.kd_temperature)
                loss = loss + args.kd_weight * terms["loss_kd"]
            if self.rrd is not None:
                self.rrd.train()
                terms["loss_rrd"] = self._rrd_module()(self._student_tap.pop(), self._teacher_tap.pop(), indices)
                loss = loss + args.rrd_weight * terms["loss_rrd"]
        for name, value in terms.items():
            self._loss_terms[name].append(value.detach().float())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs get the mean of each loss term since the last log, averaged over processes.
        if "loss" in logs and self._loss_terms:
            for name, values in self._loss_terms.items():
                mean = torch.stack(values).mean()
                logs[name] = self.accelerator.reduce(mean, reduction="mean").item()
            self._loss_terms.clear()
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------- optimisation

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.rrd is not None:
            # One optimizer for student and head: same LR schedule, same fp16 unscaling, resumable as one state.
            container = nn.ModuleDict({"student": model if model is not None else self.model, "rrd": self.rrd})
            return super().create_optimizer(container)
        return super().create_optimizer(model)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        if self.args.decay_all_parameters:
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def _clip_grad_norm(self, model):
        if self.rrd is None:
            return super()._clip_grad_norm(model)
        parameters = [*model.parameters(), *(p for p in self.rrd.parameters() if p.requires_grad)]
        return self.accelerator.clip_grad_norm_(parameters, self.args.max_grad_norm)

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self._update_steps_per_epoch = values[1]
        return values

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.args.lr_decay_epochs:
            if self._update_steps_per_epoch is None:
                raise RuntimeError("the epoch length is unknown: lr_decay_epochs needs a train dataloader with a length.")
            if self.args.warmup_steps:
                logger.warning("lr_decay_epochs replaces the scheduler: warmup_steps=%s is ignored.", self.args.warmup_steps)
            milestones = [epoch * self._update_steps_per_epoch for epoch in self.args.lr_decay_epochs]
            self.lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer if optimizer is not None else self.optimizer, milestones, gamma=self.args.lr_decay_rate
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    # ----------------------------------------------------------------------------------------------- checkpoints

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.rrd is not None and self.args.should_save:
            state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.rrd.state_dict().items()}
            save_file(state, os.path.join(output_dir, RRD_STATE_NAME), metadata={"format": "pt"})

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.rrd is None:
            return
        path = os.path.join(checkpoint, RRD_STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{checkpoint} has no {RRD_STATE_NAME}: it was not written by RRDTrainer with rrd_weight > 0, so the "
                "projection heads and the teacher memory cannot be restored and the resumed run would differ from an "
                "uninterrupted one. Resume from a checkpoint of this run, or start a new run (resume_from_checkpoint=None)."
            )
        try:
            self.rrd.load_state_dict(load_file(path, device=str(self.args.device)))
        except RuntimeError as error:
            raise RuntimeError(
                f"{path} does not match this run's RRD setup (embedding_dim, memory_size, memory_type or the feature "
                f"sizes changed): {error}"
            ) from error
