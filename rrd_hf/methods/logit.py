"""Logit distillation losses: KD, DKD and logit standardisation (pure functions, float32, teacher detached).

* KD: Hinton et al. 2015, `kd_loss` (KL · T², batch mean, as in the CRD benchmark code).
* DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022 (megvii-research/mdistiller `DKD.py`):
  `alpha · TCKD + beta · NCKD`, times a linear warm-up factor `min(epoch / 20, 1)`.
* Logit standardisation: Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024
  (sunshangquan/logit-standardization-KD): each logit vector is z-scored, `(z − mean) / (std + 1e-7)` with the
  unbiased standard deviation (`torch.std` default), before the temperature softmax. Usable in KD and in DKD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillationMethod, MethodContext, float32_math
from .memory import check_index_range
from .registry import register_method
from .rrd import check_temperature

__all__ = [
    "KD",
    "KDLS",
    "DKD",
    "DKDLS",
    "kd_loss",
    "standardize_logits",
    "kd_ls_loss",
    "dkd_terms",
    "dkd_loss",
    "dkd_warmup_factor",
]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: KL(softmax(t/T) ‖ softmax(s/T)) · T², averaged over the batch (as in the CRD benchmark code)."""
    check_temperature("kd temperature", temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "KD needs teacher and student to predict the same label set."
        )
    with float32_math(student_logits):
        log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
        log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} must both "
            "be (batch, classes) with the same shape: teacher and student must predict the same label set."
        )
    if student_logits.shape[1] < 2:
        raise ValueError(f"logit distillation needs at least 2 classes, got {student_logits.shape[1]}.")


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score every row: `(z − mean(z)) / (std(z) + eps)`, unbiased std, in float32 (Sun et al. 2024, `normalize`)."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (batch, classes) with at least 2 classes, got {tuple(logits.shape)}.")
    with float32_math(logits):
        logits = logits.float()
        mean = logits.mean(dim=1, keepdim=True)
        std = logits.std(dim=1, keepdim=True)
        return (logits - mean) / (std + eps)


def kd_ls_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """KD on standardised logits: `kd_loss(standardize(s), standardize(t), T)`; invariant to shifting/scaling either."""
    _check_logits(student_logits, teacher_logits)
    return kd_loss(standardize_logits(student_logits), standardize_logits(teacher_logits.detach()), temperature)


def _binary_log_probs(log_probs: torch.Tensor, labels: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """(B, 2) log of [p_target, 1 − p_target] from full log-probabilities, without leaving log space."""
    log_target = log_probs.gather(1, labels.unsqueeze(1))
    log_other = log_probs.masked_fill(target_mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.cat([log_target, log_other], dim=1)


def _other_classes(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, classes − 1) the class ids other than each row's label, ascending. Gathering them needs no host sync,
    unlike a boolean-mask selection, whose output size the host must read."""
    others = torch.arange(classes - 1, device=labels.device).unsqueeze(0)
    return others + (others >= labels.unsqueeze(1)).long()


def dkd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    logit_standardization: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DKD's two parts `(TCKD, NCKD)`, each `KL(teacher ‖ student) · T²` summed over classes and averaged over the batch.

    * TCKD: KL between the binary distributions `[p_gt, 1 − p_gt]` of teacher and student (softmax at T).
    * NCKD: KL between the softmaxes at T over the non-target classes only (the target class removed).

    Mathematically equal to mdistiller's `dkd_loss` (which masks the target with `−1000` and takes `log` of
    probabilities); this version stays in log space, so it never takes `log(0)`.
    """
    _check_logits(student_logits, teacher_logits)
    check_temperature("dkd temperature", temperature)
    batch, classes = student_logits.shape
    if labels is None:
        raise ValueError("DKD needs the ground-truth labels of the batch (labels=...).")
    if labels.shape != (batch,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids of shape ({batch},), got {tuple(labels.shape)} {labels.dtype}.")
    check_index_range(labels, classes, what="labels", hint="They must be class ids of the models' label set.")
    with float32_math(student_logits):
        s, t = student_logits.float(), teacher_logits.detach().float()
        if logit_standardization:
            s, t = standardize_logits(s), standardize_logits(t)
        labels = labels.long().to(s.device)
        target_mask = F.one_hot(labels, classes).bool()
        log_p_s = F.log_softmax(s / temperature, dim=1)
        log_p_t = F.log_softmax(t / temperature, dim=1)
        tckd = F.kl_div(
            _binary_log_probs(log_p_s, labels, target_mask), _binary_log_probs(log_p_t, labels, target_mask),
            reduction="sum", log_target=True,
        )
        others = _other_classes(labels, classes)
        s_other, t_other = s.gather(1, others), t.gather(1, others)
        nckd = F.kl_div(
            F.log_softmax(s_other / temperature, dim=1), F.log_softmax(t_other / temperature, dim=1),
            reduction="sum", log_target=True,
        )
        scale = temperature**2 / max(batch, 1)
        return tckd * scale, nckd * scale


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    warmup_factor: float = 1.0,
    logit_standardization: bool = False,
) -> torch.Tensor:
    """`warmup_factor · (alpha · TCKD + beta · NCKD)`; CIFAR defaults alpha=1, beta=8, T=4 (mdistiller `cfg.DKD`).

    `warmup_factor` is mdistiller's `min(epoch / warmup, 1)` (see `dkd_warmup_factor`). With
    `logit_standardization=True` this is "DKD+LS" (both logit vectors z-scored first).
    """
    if not 0.0 <= warmup_factor:
        raise ValueError(f"warmup_factor must be >= 0, got {warmup_factor}.")
    tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature, logit_standardization)
    return warmup_factor * (alpha * tckd + beta * nckd)


def dkd_warmup_factor(epoch: float, warmup_epochs: float = 20.0) -> float:
    """mdistiller's DKD warm-up: `min(epoch / warmup_epochs, 1)` with a **1-based** epoch (0.05 in epoch 1 of 20)."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}.")
    if warmup_epochs <= 0:
        return 1.0
    return float(min(epoch / warmup_epochs, 1.0))


# ------------------------------------------------------------------------------------------------ the methods
def check_same_classes(context: MethodContext, name: str) -> None:
    student, teacher = context.student.logits, context.teacher.logits
    if student.dim() != 2 or student.shape[1:] != teacher.shape[1:]:
        raise ValueError(
            f"{name}: student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} must be (B, C) "
            "with the same C: teacher and student must predict the same label set."
        )


@register_method
class KD(DistillationMethod):
    """Hinton KD, `KL(p_t ‖ p_s) · T²` at T = 4. The benchmark runs it as 0.1 · CE + 0.9 · KD; RRD+KD uses 1 · KD."""

    name = "kd"
    default_weight = 0.9

    def __init__(self, context: MethodContext, temperature: float = 4.0):
        super().__init__(context)
        check_same_classes(context, self.name)
        self.check_options({"temperature": temperature})
        self.temperature = float(temperature)

    @classmethod
    def check_options(cls, options, *, global_batch_size=None):
        if "temperature" in options:
            check_temperature("kd temperature", options["temperature"])

    def forward(self, student, teacher, index=None, labels=None):
        return kd_loss(student.logits, teacher.logits, self.temperature)


@register_method
class KDLS(KD):
    """KD with logit standardisation (Sun et al. CVPR'24): KD at T = 2 on z-scored logits, weight 9 (their CIFAR-100
    setting with CE weight 0.1; see the recipes for the sources of these constants)."""

    name = "kd_ls"
    default_weight = 9.0

    def __init__(self, context: MethodContext, temperature: float = 2.0):
        super().__init__(context, temperature)

    def forward(self, student, teacher, index=None, labels=None):
        return kd_ls_loss(student.logits, teacher.logits, self.temperature)


@register_method
class DKD(DistillationMethod):
    """Decoupled KD: `w(epoch) · (alpha · TCKD + beta · NCKD)`, alpha 1, beta 8, T 4, warm-up 20 epochs, weight 1.

    `w(epoch) = min(epoch / warmup_epochs, 1)` with mdistiller's 1-based epoch, read from `context.epoch` (1
    outside a training loop). beta is per pair in the reference configs (see the recipes). Needs the labels.
    """

    name = "dkd"
    default_weight = 1.0
    logit_standardization = False

    def __init__(
        self,
        context: MethodContext,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20.0,
    ):
        super().__init__(context)
        check_same_classes(context, self.name)
        check_temperature("dkd temperature", temperature)
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature = float(temperature)
        self.warmup_epochs = float(warmup_epochs)

    @property
    def warmup_factor(self) -> float:
        epoch = self.context.epoch
        return 1.0 if epoch is None else dkd_warmup_factor(epoch, self.warmup_epochs)

    def forward(self, student, teacher, index=None, labels=None):
        if labels is None:
            raise ValueError(f"{self.name} needs the ground-truth labels: call method(student, teacher, labels=labels).")
        return dkd_loss(
            student.logits, teacher.logits, labels, self.alpha, self.beta, self.temperature,
            warmup_factor=self.warmup_factor, logit_standardization=self.logit_standardization,
        )


@register_method
class DKDLS(DKD):
    """DKD on z-scored logits ("DKD+LS", Sun et al. CVPR'24): T = 2, weight 9 (see the recipes for the sources)."""

    name = "dkd_ls"
    default_weight = 9.0
    logit_standardization = True

    def __init__(self, context: MethodContext, alpha: float = 1.0, beta: float = 8.0, temperature: float = 2.0,
                 warmup_epochs: float = 20.0):
        super().__init__(context, alpha, beta, temperature, warmup_epochs)
