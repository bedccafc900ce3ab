"""`RRDTrainer`: a `transformers.Trainer` that distils a frozen teacher into the student with CE, KD and RRD."""

from __future__ import annotations

import inspect
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
from .features import FeatureTap, HiddenStateTap
from .hub import HubMixin
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


def _dataset_labels(train_dataset, num_slots: int) -> torch.Tensor | None:
    """The label of every dataset index (CRD draws its negatives from other classes), when cheaply readable."""
    labels = getattr(train_dataset, "labels", None)
    index = getattr(train_dataset, "index", None)
    if not (isinstance(labels, torch.Tensor) and isinstance(index, torch.Tensor)):
        column_names = getattr(train_dataset, "column_names", None) or []
        if not {"label", "index"} <= set(column_names) and not {"labels", "index"} <= set(column_names):
            return None
        table = train_dataset.with_format("numpy")
        labels = torch.as_tensor(table["label" if "label" in column_names else "labels"])
        index = torch.as_tensor(table["index"])
    out = torch.full((num_slots,), -1, dtype=torch.long)
    out[index.long()] = labels.long()
    return out


class _DistillerCallback(TrainerCallback):
    """Trainer zeroes only the student's gradients (`model.zero_grad()`): clear the distillation modules' at every
    step's start, or they would accumulate across optimizer steps; and tell them the epoch (DKD's warm-up)."""

    def __init__(self, modules: nn.ModuleDict):
        self.modules = modules

    def on_step_begin(self, args, state, control, **kwargs):
        self.modules.zero_grad(set_to_none=True)

    def on_epoch_begin(self, args, state, control, **kwargs):
        for module in self.modules.values():
            if hasattr(module, "set_epoch"):
                module.set_epoch(int(round(state.epoch or 0)) + 1)


class _DataEpochCallback(TrainerCallback):
    """Tell the training data's per-sample augmentation the epoch before the epoch's iterator is created."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        from .data import set_epoch

        set_epoch(self.dataset, int(state.epoch or 0))


class _InitStageHistory(TrainerCallback):
    """`train()` starts a fresh `TrainerState`: put the init stage's per-epoch losses at the front of its history."""

    def __init__(self, history: list[dict]):
        self.history = history

    def on_train_begin(self, args, state, control, **kwargs):
        if self.history and not any("init_stage_loss" in log for log in state.log_history):
            state.log_history[:0] = [{**log, "step": 0} for log in self.history]


class RRDTrainer(HubMixin, Trainer):
    """Distil a frozen `teacher_model` into `model` (the student) with Relational Representation Distillation.

    The loss is `ce_weight · CE + kd_weight · KD + rrd_weight · RRD` (see [`RRDConfig`]). The student is the Trainer's
    `model`, so saving, pushing, resuming and evaluation are those of any `Trainer`; the projection heads and the
    memory live in `self.rrd`, share the student's optimizer, scheduler, gradient clipping and DDP synchronisation,
    and are stored in every checkpoint as `rrd_state.safetensors` (never in `save_model`'s folder). The teacher is
    a plain attribute: frozen, always in eval mode, run under `no_grad` and the student's autocast, never saved.
    `push_to_hub()` uploads only the clean student with an honest model card (`rrd_hf.hub`).

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
        # Trainable/stateful parts of the losses: optimised with the student, checkpointed, DDP-synchronised.
        self.distillers = nn.ModuleDict()
        self.rrd: RRDLoss | None = None
        self.method = None
        self._wrapped: dict[str, nn.Module] = {}
        self._student_tap = self._teacher_tap = None
        self._hidden_taps: dict[str, HiddenStateTap] = {}
        self._init_stage_done = False
        self.init_stage_history: list[dict] = []  # also copied to the front of state.log_history
        if teacher is not None:
            self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)
            self.teacher_input_adapter = self._build_teacher_input_adapter(processing_class).to(self.args.device)
        if self.args.rrd_weight > 0 or self.args.distill_method is not None:
            self._student_tap = FeatureTap(self.model, self.args.student_feature_module)
            self._teacher_tap = FeatureTap(self.teacher, self.args.teacher_feature_module)
        for role, model, names in (("student", self.model, self.args.student_hidden_modules),
                                   ("teacher", self.teacher, self.args.teacher_hidden_modules)):
            if names:
                self._hidden_taps[role] = HiddenStateTap(model, names)
        if self.args.rrd_weight > 0:
            self.rrd = self.distillers["rrd"] = self._build_rrd(train_dataset)
        if self.args.distill_method is not None:
            self.method = self.distillers[self.args.distill_method] = self._build_method(train_dataset)
        if len(self.distillers):
            self.distillers.to(self.args.device)
            self.add_callback(_DistillerCallback(self.distillers))
        if self.method is not None and self.method.init_stage is not None:
            self.add_callback(_InitStageHistory(self.init_stage_history))
        if train_dataset is not None:
            self.add_callback(_DataEpochCallback(train_dataset))

    # ----------------------------------------------------------------------------------------------- construction

    @staticmethod
    def _resolve_teacher(teacher_model, args: RRDConfig, init_kwargs: dict) -> nn.Module | None:
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if not args.needs_teacher:
            if teacher_model is not None:
                logger.warning("no loss uses the teacher (kd_weight = rrd_weight = 0, no distill_method): it is ignored.")
            return None
        if teacher_model is None:
            raise ValueError(
                f"kd_weight={args.kd_weight}, rrd_weight={args.rrd_weight}, distill_method={args.distill_method} need a "
                "teacher: pass teacher_model= "
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

    def _build_method(self, train_dataset):
        from .methods import METHODS, build_method

        args = self.args
        cls = METHODS[args.distill_method]
        if cls.needs_preact:
            for role, model in (("student", self.model), ("teacher", self.teacher)):
                if role not in self._hidden_taps and "preact" not in inspect.signature(model.forward).parameters:
                    raise ValueError(
                        f"{args.distill_method} needs pre-activation feature maps (forward(..., preact=True)), which "
                        f"the {role} {type(model).__name__} does not provide; rrd_hf.models architectures do."
                    )
        kwargs = dict(args.distill_kwargs or {})
        if args.init_epochs is not None and "init_epochs" in inspect.signature(cls.__init__).parameters:
            kwargs.setdefault("init_epochs", args.init_epochs)  # FitNet's hint stage is off unless asked for
        num_samples = _memory_slots(train_dataset) if cls.needs_index else None
        if args.distill_method == "crd":  # negatives from the other classes (the benchmark's), drawn from the seed
            kwargs.setdefault("seed", args.seed)
            if "dataset_labels" not in kwargs:
                kwargs["dataset_labels"] = _dataset_labels(train_dataset, num_samples)
        student_example, teacher_example = self._example_outputs(train_dataset, cls)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            method = build_method(args.distill_method, student_example, teacher_example, num_samples=num_samples, **kwargs)
        method.process_index = self.args.process_index
        return method

    @torch.no_grad()
    def _example_outputs(self, train_dataset, method_cls):
        """Outputs of both models on a dummy batch shaped like the training data (eval mode: BN untouched)."""
        if train_dataset is None or not len(train_dataset):
            raise ValueError(f"distill_method={self.args.distill_method!r} needs a train_dataset to infer its shapes.")
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
            pixel_values = self.batch_transform(pixel_values, False)
        pixel_values = pixel_values.float()
        examples = []
        for role, model, adapt in (("student", self.model, None), ("teacher", self.teacher, self.teacher_input_adapter)):
            was_training = model.training
            model.eval()
            output = model(pixel_values=adapt(pixel_values) if adapt is not None else pixel_values,
                           **self._forward_kwargs(method_cls, role))
            model.train(was_training)
            examples.append(self._model_outputs(role, output))
        return examples

    def _forward_kwargs(self, method_cls, role: str) -> dict:
        if method_cls is None or not method_cls.needs_hidden_states or role in self._hidden_taps:
            return {}
        return {"output_hidden_states": True, **({"preact": True} if method_cls.needs_preact else {})}

    def _model_outputs(self, role: str, output, logits=None):
        """`ModelOutputs` of the last forward of the student or teacher: logits, tapped features, hidden states."""
        from .methods import ModelOutputs

        features = (self._student_tap if role == "student" else self._teacher_tap).pop()
        if role in self._hidden_taps:
            hidden = self._hidden_taps[role].pop()
        else:
            hidden = getattr(output, "hidden_states", None)
        if hidden is not None and hidden[-1].dim() != 2:  # end with the pooled vector, as rrd_hf.models do
            hidden = (*hidden, features)
        return ModelOutputs(output.logits if logits is None else logits, features, hidden)

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
            inputs["pixel_values"] = self.batch_transform(inputs["pixel_values"], self.model.training,
                                                          index=inputs.get("index"), epoch=int(self.state.epoch or 0))
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

    @torch.no_grad()
    def _teacher_forward(self, pixel_values: torch.Tensor, **kwargs):
        if self.teacher.training:  # someone called .train() on it: the teacher's BN statistics must never move
            self.teacher.eval()
        with self.accelerator.autocast():
            return self.teacher(pixel_values=self.teacher_input_adapter(pixel_values), **kwargs)

    def _distiller(self, name: str) -> nn.Module:
        """`self.distillers[name]`, DDP-wrapped under data parallelism so its gradients are all-reduced."""
        if name not in self._wrapped:
            module = self.distillers[name]
            module.gather = self.accelerator.gather
            trainable = any(p.requires_grad for p in module.parameters())
            if trainable and self.accelerator.num_processes > 1 and torch.distributed.is_initialized():
                # Memories are kept identical by gathering keys, not by DDP: every buffer is left out of DDP's
                # broadcasts. Inputs are already on the device (device_ids=None: DDP does not move them).
                buffers = [buffer_name for buffer_name, _ in module.named_buffers()]
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, buffers)
                self._wrapped[name] = DistributedDataParallel(module, device_ids=None, find_unused_parameters=False)
            else:
                self._wrapped[name] = module
        return self._wrapped[name]

    def _method_forward_kwargs(self, role: str = "student") -> dict:
        return self._forward_kwargs(type(self.method) if self.method is not None else None, role)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        indices = inputs.get("index")
        model_inputs = {k: v for k, v in inputs.items() if k not in _BATCH_ONLY_KEYS}
        outputs = model(**model_inputs, **(self._method_forward_kwargs() if model.training else {}))
        logits = outputs.logits
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.args.label_smoothing_factor)

        if not model.training:  # evaluation: plain CE of the student; no teacher pass, no memory update
            for tap in (self._student_tap, self._hidden_taps.get("student")):
                if tap is not None:
                    tap.clear()
            return (ce, outputs) if return_outputs else ce

        args = self.args
        terms = {"loss_ce": ce}
        loss = args.ce_weight * ce
        if self.teacher is not None:
            teacher_outputs = self._teacher_forward(model_inputs["pixel_values"], **self._method_forward_kwargs("teacher"))
            teacher_logits = teacher_outputs.logits
            if args.kd_weight > 0:
                terms["loss_kd"] = kd_loss(logits, teacher_logits, args.kd_temperature)
                loss = loss + args.kd_weight * terms["loss_kd"]
            if self._student_tap is not None:
                student = self._model_outputs("student", outputs, logits)
                teacher = self._model_outputs("teacher", teacher_outputs)
            if self.rrd is not None:
                self.rrd.train()
                terms["loss_rrd"] = self._distiller("rrd")(student.features, teacher.features, indices)
                loss = loss + args.rrd_weight * terms["loss_rrd"]
            if self.method is not None and self.method.main_stage_loss:
                self.method.train()
                name = args.distill_method
                terms[f"loss_{name}"] = self._distiller(name)(student, teacher, index=indices, labels=labels)
                loss = loss + args.distill_weight * terms[f"loss_{name}"]
        for name, value in terms.items():
            self._loss_terms[name].append(value.detach().float())
        return (loss, outputs) if return_outputs else loss

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        # Two-stage methods (AB, FT, FSP, ...) first train their init-stage parameters on their own loss. A resumed
        # run skips it: the checkpoint already holds its result.
        method = self.method
        if method is not None and method.init_stage is not None and not resume_from_checkpoint and not self._init_stage_done:
            epochs = self.args.init_epochs if self.args.init_epochs is not None else method.init_stage.epochs
            if epochs > 0:
                self._run_init_stage(epochs)
            self._init_stage_done = True
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def _run_init_stage(self, epochs: int) -> None:
        """RepDistiller's `init()`: SGD (momentum 0.9) on the method's loss alone, teacher in eval mode."""
        from tqdm.auto import tqdm

        method, stage, args = self.method, self.method.init_stage, self.args
        params = method.begin_init_stage(self.model)
        optimizer = torch.optim.SGD(params, lr=stage.learning_rate or args.learning_rate, momentum=0.9,
                                    weight_decay=args.weight_decay)
        loader = self.get_train_dataloader()
        world_size = self.accelerator.num_processes
        try:
            self.model.train(stage.trains_student)
            method.train()
            for epoch in range(epochs):
                total, batches = torch.zeros((), device=self.args.device), 0
                description = f"{args.distill_method} init stage {epoch + 1}/{epochs}"
                from .data import set_epoch

                set_epoch(self.train_dataset, epoch)
                for batch in tqdm(loader, desc=description, disable=args.disable_tqdm or not self.is_local_process_zero()):
                    inputs = Trainer._prepare_inputs(self, batch)
                    pixel_values = inputs["pixel_values"]
                    if self.batch_transform is not None:
                        pixel_values = self.batch_transform(pixel_values, True, index=inputs.get("index"), epoch=epoch)
                    with self.accelerator.autocast():
                        output = self.model(pixel_values=pixel_values, **self._method_forward_kwargs("student"))
                    student = self._model_outputs("student", output)
                    teacher_output = self._teacher_forward(pixel_values, **self._method_forward_kwargs("teacher"))
                    teacher = self._model_outputs("teacher", teacher_output)
                    loss = method(student, teacher, index=inputs.get("index"), labels=inputs.get("labels"))
                    loss.backward()
                    if world_size > 1:  # keep the processes identical, as DDP would
                        for param in params:
                            if param.grad is not None:
                                torch.distributed.all_reduce(param.grad)
                                param.grad /= world_size
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    total, batches = total + loss.detach().float(), batches + 1
                mean = self.accelerator.reduce(total / max(batches, 1), reduction="mean").item()
                self.init_stage_history.append({"init_stage_loss": mean, "init_stage_epoch": epoch + 1})
                logger.info("%s init stage epoch %d/%d: loss %.4f", args.distill_method, epoch + 1, epochs, mean)
        finally:
            method.end_init_stage()
            self.model.zero_grad(set_to_none=True)

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
        if self.optimizer is None and len(self.distillers):
            # One optimizer for student and heads: same LR schedule, same fp16 unscaling, resumable as one state.
            container = nn.ModuleDict({"student": model if model is not None else self.model, "distill": self.distillers})
            return super().create_optimizer(container)
        return super().create_optimizer(model)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        if self.args.decay_all_parameters:
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def _clip_grad_norm(self, model):
        if not len(self.distillers):
            return super()._clip_grad_norm(model)
        parameters = [*model.parameters(), *(p for p in self.distillers.parameters() if p.requires_grad)]
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
        if len(self.distillers) and self.args.should_save:
            state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.distillers.state_dict().items()}
            save_file(state, os.path.join(output_dir, RRD_STATE_NAME), metadata={"format": "pt"})

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or not len(self.distillers):
            return
        path = os.path.join(checkpoint, RRD_STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{checkpoint} has no {RRD_STATE_NAME}: it was not written by RRDTrainer with these losses, so the "
                "projection heads and memories cannot be restored and the resumed run would differ from an "
                "uninterrupted one. Resume from a checkpoint of this run, or start a new run (resume_from_checkpoint=None)."
            )
        try:
            self.distillers.load_state_dict(load_file(path, device=str(self.args.device)))
        except RuntimeError as error:
            raise RuntimeError(
                f"{path} does not match this run's distillation setup (losses, embedding_dim, memory_size, "
                f"memory_type or the feature sizes changed): {error}"
            ) from error
