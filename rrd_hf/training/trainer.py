"""`RRDTrainer`: a `transformers.Trainer` that distils a frozen teacher into the student with any weighted list of
registered distillation methods (RRD by default)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel, Trainer, TrainerState
from transformers.trainer_utils import TrainOutput

from .checkpoints import (
    DISTILL_STATE_NAME,
    CheckpointError,
    check_output_dir,
    check_resume_settings,
    checkpoint_error,
    load_method_state,
    mark_complete,
    output_dir_lock,
    read_trainer_state,
    resolve_resume,
    resolved_path,
    rotate_checkpoints,
    run_record_values,
    save_method_state,
    write_run_arguments,
)
from .config import RRDConfig
from ..data import dataset_stats, set_epoch
from ..classifiers.activations import ActivationReader
from ..classifiers.inputs import ImageStats, image_stats_from_processor, merge_stats
from ..classifiers.labels import check_same_labels
from ..classifiers.loading import load_image_classifier
from ..classifiers.teacher import FrozenTeacher
from .guard import FiniteGuard
from ..hub import HubMixin
from ..methods import MethodContext, method_class
from ..evaluation.metrics import compute_classification_metrics
from .objective import build_objective, data_parallel
from .optimization import multistep_schedule, use_fused_step
from .determinism import determinism_settings
from .running_means import RunningMeans
from .stages import Stage, init_stages, set_student_mode, stage_training
from .student import name_classes_from_data, processor_matching_data
from .callback import BookkeepingCallback

__all__ = ["RRDTrainer", "DISTILL_STATE_NAME"]

logger = logging.getLogger(__name__)
_BATCH_ONLY_KEYS = ("labels", "index")


class RRDTrainer(HubMixin, Trainer):
    """Distil a frozen `teacher_model` into `model` (the student) with the objective of `args` ([`RRDConfig`]).

    The loss is `ce_weight · CE + Σ weight · method` over `args.loss_terms` (RRD alone by default). The student is
    the Trainer's `model`, so saving, pushing, resuming and evaluation are those of any `Trainer`; each method's
    trainable parts and state live in `self.methods`, share the student's optimizer, scheduler, gradient clipping
    and DDP synchronisation, and are stored in every checkpoint as `distill_state.safetensors` (never in
    `save_model`'s folder). The teacher is a plain attribute: frozen, always in eval mode, run under `no_grad` and
    the student's autocast, never saved. Two-stage methods first run their init stage through the same loop.
    `push_to_hub()` uploads only the clean student with an honest model card (`rrd_hf.hub`).

    Args:
        model: the student (`PreTrainedModel`, or a local path / Hub id of an `AutoModelForImageClassification`).
        teacher_model: the teacher (module, local path or Hub id); defaults to `args.teacher_model_name_or_path`.
            Not needed when the objective is cross-entropy alone.
        batch_transform: optional device-side transform called on every batch once on the device as
            `batch_transform(pixel_values, training, index=..., epoch=...)`, e.g. `rrd_hf.data.DeviceAugmentation`.
        teacher_processing_class: the teacher's image processor, when neither its folder nor its config says what
            input size and normalisation it expects.
        The other arguments are those of `transformers.Trainer`; `compute_metrics` defaults to top-1/top-5 accuracy.
    """

    _tag_names = ["knowledge-distillation", "rrd", "image-classification"]
    #: Set by the command line: `{"model_args": {...}, "data_args": {...}}`, recorded in every checkpoint so that a
    #: resume can be compared with what the run was started with.
    run_arguments: dict | None = None
    #: Settings a resume changed with `allow_resume_changes`: `{field: (old, new)}`, for the results.
    resume_changes: dict = {}
    _saving_checkpoint = False
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
        batch_transform: Callable | None = None,
        teacher_model_init_kwargs: dict[str, Any] | None = None,
        teacher_processing_class=None,
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
        data_stats = dataset_stats(train_dataset, batch_transform) if train_dataset is not None else None
        processing_class = processor_matching_data(processing_class, data_stats, train_dataset, batch_transform)
        name_classes_from_data(model, train_dataset)
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if teacher_model is not None and not args.needs_teacher:
            logger.warning("no loss term uses the teacher (the objective is %s): it is ignored.",
                           args.describe_objective())
        elif teacher_model is None and args.needs_teacher:
            raise ValueError(
                f"the objective {args.describe_objective()} needs a teacher: pass teacher_model= (a module, a local "
                "folder or a Hub id) or set teacher_model_name_or_path in the config."
            )
        if args.needs_teacher:  # loaded and label-checked before Trainer's set-up, which may take a while
            if isinstance(teacher_model, (str, os.PathLike)):
                teacher_model = load_image_classifier(teacher_model, role="teacher", **(teacher_model_init_kwargs or {}))
            if isinstance(teacher_model, nn.Module):
                check_same_labels(model, teacher_model)

        # Trainer's construction applies `full_determinism`'s process-wide settings: they are applied again for
        # the duration of `train()` only, and the process is left as it was found.
        with determinism_settings(restore=True):
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
        self._refuse_unsupported_setups()
        if self.args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if isinstance(batch_transform, nn.Module):
            batch_transform = batch_transform.to(self.args.device)  # once, not per step
        self.batch_transform = batch_transform
        self.ce_weight, self.loss_terms = self.args.objective()
        logger.info("objective: %s", self.args.describe_objective())
        classes = [method_class(term.method) for term in self.loss_terms]
        needs = {flag: any(getattr(cls, flag) for cls in classes)
                 for flag in ("needs_features", "needs_hidden_states", "needs_preact")}
        reader_options = dict(features=needs["needs_features"], hidden_states=needs["needs_hidden_states"],
                              preact=needs["needs_preact"])
        self.student_reader = ActivationReader(self.model, "student", **reader_options,
                                               feature_module=self.args.student_feature_module,
                                               hidden_modules=self.args.student_hidden_modules)
        self.teacher: FrozenTeacher | None = None
        self._example: tuple | None = None  # (train_dataset, its example batch): built once, for folding and methods
        if self.args.needs_teacher:
            student_stats = (ImageStats(mean=list(data_stats.mean), std=list(data_stats.std)) if data_stats is not None
                             else image_stats_from_processor(processing_class) or ImageStats())
            student_stats = merge_stats(ImageStats(mean=self.args.student_image_mean, std=self.args.student_image_std),
                                        student_stats)
            self.teacher = FrozenTeacher(
                teacher_model, student=self.model, student_stats=student_stats,
                teacher_stats=ImageStats(size=(self.args.teacher_image_size,) * 2 if self.args.teacher_image_size else None,
                                         mean=self.args.teacher_image_mean, std=self.args.teacher_image_std),
                teacher_processor=teacher_processing_class, device=self.args.device,
                channels_last=self.args.channels_last, mixed_precision=self.accelerator.mixed_precision,
                reader_options=dict(reader_options, feature_module=self.args.teacher_feature_module,
                                    hidden_modules=self.args.teacher_hidden_modules),
            )
            if self.args.fold_teacher_batch_norm and train_dataset is not None and len(train_dataset):
                self.teacher.fold_batch_norms(self._example_pixel_values(train_dataset), self.accelerator.autocast)
        # Trainable/stateful parts of the methods: optimised with the student, checkpointed, DDP-synchronised.
        self.methods = nn.ModuleDict()
        self.context: MethodContext | None = None
        self.guard = FiniteGuard(self.args.device, defers=False)
        self.stage: Stage | None = None
        self._stage_parameters: list[nn.Parameter] = []
        self._init_stages_done = False
        self.init_stage_history: list[dict] = []  # also copied to the front of state.log_history
        self._wrapped: dict[str, nn.Module] = {}
        self._loss_terms = RunningMeans()
        self._update_steps_per_epoch: int | None = None
        self._in_training_step = False
        self._augmentation_epoch = 0
        if self.loss_terms and train_dataset is not None:
            self._build_methods(train_dataset)
        self.run_callback = BookkeepingCallback(self)
        self.add_callback(self.run_callback)

    # ----------------------------------------------------------------------------------------------- construction

    def _refuse_unsupported_setups(self) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise NotImplementedError(
                "RRDTrainer supports one process and DDP (accelerate MULTI_GPU / torchrun). FSDP and DeepSpeed shard "
                "only the Trainer's model, so the methods' heads and memories would be left out: use DDP."
            )
        if self.args.n_gpu > 1:
            raise ValueError(
                f"{self.args.n_gpu} GPUs are visible to one process, so Trainer would use nn.DataParallel, whose "
                "replicas share the feature hooks: run one process per GPU with `accelerate launch --multi_gpu "
                "--num_processes N -m rrd_hf.train RECIPE` (recipes/accelerate/multi_gpu.yaml), or make one GPU "
                "visible (CUDA_VISIBLE_DEVICES=0, recipes/accelerate/single_gpu.yaml)."
            )
        if self.args.fp16 and self.args.device.type == "cpu":
            raise ValueError("fp16 needs a CUDA device; on CPU it would do nothing. Use bf16=True (CPU autocast) or "
                             "train in float32.")

    @torch.no_grad()
    def _example_pixel_values(self, train_dataset) -> torch.Tensor:
        """A dummy batch of 2 shaped like the training data, as the models receive it (after `batch_transform`)."""
        if self._example is not None and self._example[0] is train_dataset:
            return self._example[1]
        sample = torch.as_tensor(train_dataset[0]["pixel_values"])
        # Random, not constant, images: a method inspecting its example maps (AB checks they are pre-ReLU) must see
        # realistic values. Seeded, so every process builds the same shapes and checks.
        generator = torch.Generator().manual_seed(self.args.seed)
        if sample.dtype == torch.uint8:
            pixel_values = torch.randint(0, 256, (2, *sample.shape), generator=generator, dtype=torch.uint8)
        else:
            pixel_values = torch.randn((2, *sample.shape), generator=generator)
        pixel_values = pixel_values.to(self.args.device)
        if self.batch_transform is not None:
            pixel_values = self.batch_transform(pixel_values, False, index=torch.arange(2, device=pixel_values.device))
        if self.args.channels_last and pixel_values.dim() == 4:  # as `_prepare_inputs` hands batches over
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        self._example = (train_dataset, pixel_values.float())
        return self._example[1]

    @torch.no_grad()
    def _example_activations(self, train_dataset):
        """Activations of both models on a dummy batch shaped like the training data (eval mode: BN untouched)."""
        if train_dataset is None or not len(train_dataset):
            raise ValueError(f"the objective {self.args.describe_objective()} needs a train_dataset to size its methods.")
        pixel_values = self._example_pixel_values(train_dataset)
        autocast = self.accelerator.autocast
        return (self.student_reader.read_example(self.model, pixel_values, autocast),
                self.teacher(pixel_values, autocast))

    def _build_methods(self, train_dataset) -> None:
        student, teacher = self._example_activations(train_dataset)
        self.context = MethodContext(
            student=student.detach(), teacher=teacher.detach(), seed=self.args.seed,
            process_index=self.accelerator.process_index, num_processes=self.accelerator.num_processes,
            train_batch_size=self.args.per_device_train_batch_size, gather=self.accelerator.gather,
        )
        self.methods = build_objective(self.loss_terms, self.context, train_dataset).to(self.args.device)

    # ----------------------------------------------------------------------------------------------- the loss

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if self.batch_transform is not None and "pixel_values" in inputs:
            inputs["pixel_values"] = self.batch_transform(
                inputs["pixel_values"], self._in_training_step, index=inputs.get("index"), epoch=self._augmentation_epoch)
        if self.args.channels_last and inputs.get("pixel_values") is not None and inputs["pixel_values"].dim() == 4:
            inputs["pixel_values"] = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
        return inputs

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False, dataloader_key=None):
        # `dataloader_drop_last` (the CIFAR protocol's train loader) must never drop test images from evaluation.
        drop_last = self.args.dataloader_drop_last
        if not is_training:
            self.args.dataloader_drop_last = False
        try:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        finally:
            self.args.dataloader_drop_last = drop_last

    def _method(self, name: str) -> nn.Module:
        """`self.methods[name]`, DDP-wrapped under data parallelism so its gradients are all-reduced."""
        if name not in self._wrapped:
            self._wrapped[name] = data_parallel(self.methods[name], self.accelerator.num_processes)
        return self._wrapped[name]

    def _active_terms(self) -> tuple[float, list[tuple[str, float]]]:
        if self.stage is not None:  # an init stage: its method alone, weight 1, no cross-entropy
            return 0.0, [(self.stage.term, 1.0)]
        terms = [(term.name, term.weight) for term in self.loss_terms if self.methods[term.name].main_stage_loss]
        return self.ce_weight, terms

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        index = inputs.get("index")
        model_inputs = {k: v for k, v in inputs.items() if k not in _BATCH_ONLY_KEYS}
        training = self._in_training_step
        if training and self.stage is not None:
            set_student_mode(self.model, self.stage)
        outputs = model(**model_inputs, **(self.student_reader.forward_kwargs if training else {}))
        logits = outputs.logits
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.args.label_smoothing_factor)
        if not training:  # evaluation: plain CE of the student; no teacher pass, no memory update
            self.student_reader.clear()
            return (ce, outputs) if return_outputs else ce

        ce_weight, terms = self._active_terms()
        values = {"loss_ce": ce}
        loss = ce_weight * ce
        if terms:
            student = self.student_reader.read(outputs, logits)
            teacher = self.teacher(model_inputs["pixel_values"], self.accelerator.autocast)
            for name, weight in terms:
                method = self._method(name)
                sync = isinstance(method, DistributedDataParallel) and not self.accelerator.sync_gradients
                with method.no_sync() if sync else contextlib.nullcontext():  # all-reduce once per optimizer step
                    values[f"loss_{name}"] = method(student, teacher, index=index, labels=labels)
                loss = loss + weight * values[f"loss_{name}"]
        else:
            self.student_reader.clear()
        if self.args.check_finite:
            self.guard.observe(values, model_inputs.get("pixel_values"))
        self._loss_terms.add(values)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._in_training_step = True
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._in_training_step = False

    def begin_epoch(self, global_step: int) -> None:
        """Tell the methods (DKD's warm-up) and the data (stateless augmentation) which epoch starts."""
        epoch = global_step // max(self._update_steps_per_epoch or 1, 1)  # as Trainer computes it on resume
        offset = self.stage.augmentation_epoch_offset if self.stage is not None else 0
        self._augmentation_epoch = offset + epoch
        if self.context is not None and self.stage is None:
            self.context.epoch = epoch + 1
        set_epoch(self.train_dataset, self._augmentation_epoch)

    def check_finite_before_step(self) -> None:
        if not self.args.check_finite:
            return
        scaler = getattr(self.accelerator, "scaler", None)
        flag = self.guard.check_step(self._guarded_modules(), check_gradients=scaler is None)  # fp16: GradScaler skips inf steps
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        if self.guard.defers and scaler is None:
            optimizer.found_inf = flag.float()  # the fused step becomes a no-op on the device; raised at the next sync
        else:
            self.guard.raise_if_tripped()

    def _guarded_modules(self) -> dict[str, nn.Module]:
        return {"": self.model, **dict(self.methods.items())}  # "": the student

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.args.check_finite:
            self.guard.raise_if_tripped()
        # Training logs get the mean of each loss term since the last log, averaged over processes.
        if "loss" in logs and self._loss_terms:
            for name, mean in self._loss_terms.pop_means().items():
                logs[name] = self.accelerator.reduce(mean, reduction="mean").item()
        if self.stage is not None:  # init-stage logs are kept apart from the main stage's
            logs = self._stage_log(logs)
        if logs is not None:
            super().log(logs, start_time)

    def _stage_log(self, logs: dict) -> dict | None:
        stage = self.stage
        if "loss" not in logs:
            return None  # the stage's end-of-training summary
        entry = {"init_stage": stage.term, "init_stage_epoch": round(self.state.epoch or 0),
                 "init_stage_loss": logs["loss"]}
        self.init_stage_history.append(entry)
        logger.info("%s init stage epoch %d/%d: loss %.4f", stage.term, entry["init_stage_epoch"], stage.epochs,
                    entry["init_stage_loss"])
        return entry

    # ----------------------------------------------------------------------------------------------- training

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, holding `output_dir` for the run (one run at a time writes there) and refusing a resume
        whose settings differ from the checkpoint's. `allow_resume_changes=["learning_rate", ...]` (or "all")
        accepts those changes that do not define the run (see `checkpoints.check_resume_settings`)."""
        allow = kwargs.pop("allow_resume_changes", None)
        with output_dir_lock(self.args.output_dir, enabled=self.accelerator.is_main_process), \
                determinism_settings(self.args.full_determinism, restore=True):
            return self._train(resume_from_checkpoint, trial, ignore_keys_for_eval, allow=allow, **kwargs)

    def _train(self, resume_from_checkpoint, trial, ignore_keys_for_eval, allow=None, **kwargs):
        resume = resolve_resume(resume_from_checkpoint, self.args.output_dir)
        if resume is None:
            if self.is_world_process_zero():
                check_output_dir(self.args.output_dir, self.args.overwrite_output_dir,
                                 resuming=resume_from_checkpoint not in (None, False, ""))
            self.accelerator.wait_for_everyone()
        else:
            self.resume_changes = check_resume_settings(resume, self.run_settings(), allow)
        if self.loss_terms and not len(self.methods):
            self._build_methods(self.train_dataset)
        self._check_batches()
        if resume is not None:
            step = read_trainer_state(resume)["global_step"]
            if 0 < self.args.max_steps <= step:
                return self._finished_at(resume, step)
        # Two-stage methods (AB, FT, FSP, ...) first train their init-stage parameters on their own loss. A resumed
        # run skips them: the checkpoint already holds their result.
        if resume is None and not self._init_stages_done:
            for stage in init_stages(dict(self.methods.items()), self.args.init_epochs, self.args.learning_rate):
                with stage_training(self, stage):
                    super().train(trial=trial, **kwargs)
            self._init_stages_done = True
        output = super().train(resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval,
                               **kwargs)
        if self.args.check_finite:
            self.guard.raise_if_tripped()
        return output

    def _finished_at(self, checkpoint: str, step: int) -> TrainOutput:
        """Resuming a checkpoint taken at max_steps (a kill during the final save, or 'latest' on a finished run):
        Trainer would train one step past max_steps. Nothing is trained; the model and state are the checkpoint's."""
        logger.warning("%s is at step %d and max_steps is %d: the run is finished, nothing to train (the model is "
                       "the checkpoint's).", checkpoint, step, self.args.max_steps)
        self._load_from_checkpoint(checkpoint)
        if len(self.methods):
            load_method_state(self.methods, checkpoint, self.args.device, self.args.describe_objective())
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        return TrainOutput(self.state.global_step, None, {})

    def run_settings(self) -> dict:
        """What this run trains with, as a resume compares it with its checkpoint: the training arguments, the
        teacher, and what the command line set in `run_arguments` (data, student)."""
        from ..runs.record import training_args_dict

        settings = training_args_dict(self.args)
        teacher = self._rrd_teacher_name() if self.teacher is not None else None
        if teacher:
            settings["teacher_model_name_or_path"] = teacher
        for group in ("model_args", "data_args"):
            settings.update((getattr(self, "run_arguments", None) or {}).get(group) or {})
        return settings

    def enter_stage(self, stage: Stage, parameters: list[nn.Parameter]) -> None:
        """Called by `stages.stage_training`: the next `train()` call runs `stage`."""
        self.stage, self._stage_parameters = stage, parameters
        self._reset_for_new_loop()

    def leave_stage(self) -> None:
        self.stage, self._stage_parameters = None, []
        self._reset_for_new_loop()

    def _reset_for_new_loop(self) -> None:
        """A fresh optimizer, scheduler and wrapping for the next loop (the parameters that train changed)."""
        self.optimizer = self.lr_scheduler = None
        self.model_wrapped = self.model
        self._wrapped = {}
        self._loss_terms.clear()

    def _check_batches(self) -> None:
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__len__"):
            return
        global_batch = self.args.per_device_train_batch_size * self.accelerator.num_processes
        if self.args.dataloader_drop_last and len(dataset) < global_batch:
            raise ValueError(
                f"the training set has {len(dataset)} samples, fewer than one batch ({global_batch} = "
                f"{self.args.per_device_train_batch_size} per device x {self.accelerator.num_processes} processes) and "
                "dataloader_drop_last drops it: lower per_device_train_batch_size or use more data."
            )

    # ----------------------------------------------------------------------------------------------- optimisation

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        if self.stage is not None:
            holder = nn.Module()
            holder.stage = nn.ParameterList(self._stage_parameters)
            optimizer = super().create_optimizer(holder)
        elif len(self.methods):
            # One optimizer for student and methods: same LR schedule, same fp16 unscaling, resumable as one state.
            container = nn.ModuleDict({"student": model if model is not None else self.model, "distill": self.methods})
            optimizer = super().create_optimizer(container)
        else:
            optimizer = super().create_optimizer(model)
        self.guard.defers = use_fused_step(self.optimizer)
        return optimizer

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        if self.args.decay_all_parameters:
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def _clip_grad_norm(self, model):
        if not len(self.methods):
            return super()._clip_grad_norm(model)
        parameters = [*model.parameters(), *(p for p in self.methods.parameters() if p.requires_grad)]
        return self.accelerator.clip_grad_norm_(parameters, self.args.max_grad_norm)

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self._update_steps_per_epoch = values[1]
        return values

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.args.lr_decay_epochs:
            if self.args.warmup_steps:
                logger.warning("lr_decay_epochs replaces the scheduler: warmup_steps=%s is ignored.", self.args.warmup_steps)
            self.lr_scheduler = multistep_schedule(optimizer if optimizer is not None else self.optimizer,
                                                   self.args.lr_decay_epochs, self.args.lr_decay_rate,
                                                   self._update_steps_per_epoch)
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    # ----------------------------------------------------------------------------------------------- checkpoints

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        if self.args.check_finite:  # never save what a non-finite step produced
            self.guard.raise_if_tripped()
            self.guard.check_weights(self._guarded_modules(), self.state.global_step)
        return super().save_model(output_dir, _internal_call)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Write the model into a hidden folder beside its destination, then move each file into place.

        A full disk or a kill mid-write then leaves no truncated `model.safetensors` that looks like a saved model
        (nor half of a new one over an old one); the in-memory model is untouched, so the save can be retried."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return super()._save(output_dir, state_dict)
        os.makedirs(output_dir, exist_ok=True)
        _remove_stale_staging(output_dir)
        staging = tempfile.mkdtemp(prefix=f".saving-{os.getpid()}-", dir=output_dir)
        try:
            super()._save(staging, state_dict)
            _move_into(staging, output_dir)
        except Exception as error:
            if self._saving_checkpoint or not _is_write_error(error):  # a checkpoint stays unmarked: 'latest' skips it
                raise
            raise _save_failed(error, output_dir, self.model) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _save_checkpoint(self, model, trial):
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only once the new checkpoint is complete
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
            self._saving_checkpoint = False
        self.accelerator.wait_for_everyone()  # every process has written its files (rng_state_<rank>.pth ...)
        run_dir = self._get_output_dir(trial=trial)
        if self.args.should_save:
            folder = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
            write_run_arguments(folder, self._run_record())
            mark_complete(folder, self.state.global_step)
            rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _run_record(self) -> dict:
        """What a checkpoint records beyond the training arguments: the teacher (as the folder it names) and the
        command line's data and student arguments."""
        teacher = self._rrd_teacher_name() if self.teacher is not None else None
        record = {"teacher": resolved_path(teacher) if teacher else None}
        for group, values in (self.run_arguments or {}).items():
            record[group] = run_record_values(values)
        return record

    # Loading a checkpoint: a file that fails to load is named, with the checkpoint to resume from instead.

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        except CheckpointError:
            raise
        except Exception as error:
            if isinstance(error, ValueError) and "Can't find a valid checkpoint" in str(error):
                raise
            name = "model.safetensors" if os.path.isfile(os.path.join(resume_from_checkpoint, "model.safetensors")) \
                else "pytorch_model.bin"
            raise checkpoint_error(resume_from_checkpoint, name, error) from error

    def _load_rng_state(self, checkpoint: str | None) -> None:
        try:
            super()._load_rng_state(checkpoint)
        except Exception as error:
            rank = f"_{self.args.process_index}" if self.args.world_size > 1 else ""
            raise checkpoint_error(checkpoint, f"rng_state{rank}.pth", error) from error

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.args.check_finite:
            self.guard.raise_if_tripped()
        super()._save_optimizer_and_scheduler(output_dir)
        if len(self.methods) and self.args.should_save:
            save_method_state(self.methods, output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except Exception as error:
            if checkpoint is None or (isinstance(error, ValueError) and not _is_load_error(error)):
                raise  # e.g. an optimizer of other parameters: Trainer's message says so
            raise checkpoint_error(checkpoint, _failing_file(checkpoint, ("optimizer.pt", "scheduler.pt")),
                                   error) from error
        if checkpoint is not None and len(self.methods):
            load_method_state(self.methods, checkpoint, self.args.device, self.args.describe_objective())


def _is_load_error(error: BaseException) -> bool:
    import pickle

    return isinstance(error, (pickle.UnpicklingError, EOFError)) or "weights_only" in str(error)


def _failing_file(checkpoint: str, names: tuple[str, ...]) -> str:
    """Which of a checkpoint's torch files does not load as data (only run after a load failed)."""
    for name in names:
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return name
    return names[0]


def _remove_stale_staging(output_dir: str) -> None:
    """Remove the staging folders of saves whose process is gone (killed mid-save): they hold no finished file."""
    for name in os.listdir(output_dir):
        match = re.match(r"^\.saving-(\d+)-", name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # that process still runs
        except ProcessLookupError:
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
        except OSError:  # another user's process: not ours to judge
            continue


def _move_into(staging: str, output_dir: str) -> None:
    """Move every file written into `staging` to the same place under `output_dir`, weights last, and make the
    renames durable: until the weights are in place the folder holds no new model."""
    files = []
    for root, _, names in os.walk(staging):
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), staging))
    files.sort(key=lambda name: (name.endswith((".safetensors", ".bin")) and not name.startswith("training_args"), name))
    for relative in files:
        source = os.path.join(staging, relative)
        with open(source, "rb") as handle:
            os.fsync(handle.fileno())
        target = os.path.join(output_dir, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)
    try:
        handle = os.open(output_dir, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError:
        pass


def _write_errno(error: BaseException) -> int | None:
    """The OS error number behind a failed write: OSError's own, or the one safetensors' Rust writer reports in
    its message ("... Os { code: 28, kind: StorageFull ... }")."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    found = re.search(r"code: (\d+)", str(error))
    return int(found.group(1)) if found else None


def _is_write_error(error: BaseException) -> bool:
    from safetensors import SafetensorError

    return isinstance(error, (OSError, SafetensorError)) or (
        isinstance(error, RuntimeError) and ("write" in str(error) or _write_errno(error) is not None))


def _save_failed(error: Exception, output_dir: str, model: nn.Module) -> OSError:
    """The one-line error of a save that could not be written: what to free, and that the model is still in memory."""
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    try:
        free = f", {shutil.disk_usage(output_dir).free / 2**20:.0f} MB free now"
    except OSError:
        free = ""
    number = _write_errno(error)
    reason = os.strerror(number) if number else (str(error).strip().splitlines() or [type(error).__name__])[0]
    if number in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        advice = f"Free at least {max(size * 1.1, 1):.0f} MB on that disk{free}"
    else:
        advice = "Fix that"
    failed = OSError(f"could not write the model into {output_dir} ({reason}): nothing was written there. {advice}, "
                     "then call save_model() again: the trained model is still in memory.")
    failed.errno, failed.reason, failed.advice = number, reason, advice  # for the command line's own message
    return failed
