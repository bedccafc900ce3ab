"""The registered methods: thin `DistillationMethod` modules around the pure losses.

Which outputs each method reads (our zoo's `hidden_states` is RepDistiller's `feat` list: stem, stage outputs,
pooled vector; so `hidden_states[i]` is `feat[i]`), and the benchmark's weight of its loss (`-b` in RepDistiller's
`scripts/run_cifar_distill.sh`; the total loss is `ce_weight · CE + weight · loss`):

=========  ==========================  ============================  ========  ====
name       reads                       RepDistiller                  weight    CE
=========  ==========================  ============================  ========  ====
kd         logits                      `DistillKL(T=4)`, `-a 0.9`    0.9       0.1
kd_ls      logits (z-scored), T=2      LSKD `--kd-weight 9`          9         0.1
dkd        logits + labels             mdistiller DKD                1         1
dkd_ls     logits (z-scored) + labels  LSKD DKD, T=2, weight 9       9         1
fitnet     hidden_states[2]            `feat[hint_layer=2]`          100       1
at         hidden_states[1:-1]         `feat[1:-1]`                  1000      1
sp         hidden_states[-2]           `[feat[-2]]`                  3000      1
cc         features                    `feat[-1]` → LinearEmbed      0.02      1
vid        hidden_states[1:-1]         `feat[1:-1]`                  1         1
rkd        features                    `feat[-1]`                    1         1
pkt        features                    `feat[-1]`                    30000     1
ab         hidden_states[1:-1], preact `feat[1:-1]`, preact=True     1 (inert) 1
ft         hidden_states[-2]           `feat[-2]`                    200       1
fsp        hidden_states[:-1]          `feat[:-1]`                   50 (inert) 1
nst        hidden_states[1:-1]         `feat[1:-1]`                  50        1
crd        features + index            `feat[-1]`                    0.8       1
=========  ==========================  ============================  ========  ====

(`features` is the penultimate vector, `hidden_states[-1]` = `feat[-1]`.) CRD's weight is 0.8 in RepDistiller's
script; RRD's own re-runs of CRD use 1. The methods reading several stage pairs pair them with `zip`, as
RepDistiller does: with unequal numbers of stages the extra ones are ignored (a warning says so).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillationMethod, InitStage, ModelOutputs, register_method
from .crd import CRDMemory, crd_loss, crd_scores
from .feature import ab_loss, at_loss, fsp_loss, ft_loss, hint_loss, nst_loss, pool_to_common_size
from .heads import Connector, ConvReg, LinearEmbed, Paraphraser, Translator, VIDRegressor
from .logit import dkd_loss, dkd_warmup_factor, kd_loss, kd_ls_loss
from .relation import CC_KERNELS, cc_loss, pkt_loss, rkd_loss, sp_loss
from .vid import vid_loss

__all__ = ["KD", "KDLS", "DKD", "DKDLS", "FitNet", "AT", "NST", "SP", "CC", "VID", "RKD", "PKT", "AB", "FT", "FSP", "CRD"]


def _float32_off_autocast(tensor: torch.Tensor):
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _check_same_classes(student: ModelOutputs, teacher: ModelOutputs, name: str) -> None:
    if student.logits.dim() != 2 or student.logits.shape[1:] != teacher.logits.shape[1:]:
        raise ValueError(
            f"{name}: student logits {tuple(student.logits.shape)} and teacher logits {tuple(teacher.logits.shape)} "
            "must be (B, C) with the same C: teacher and student must predict the same label set."
        )


def _warn_unpaired(name: str, n_s: int, n_t: int) -> None:
    if n_s != n_t:
        warnings.warn(
            f"{name}: the student has {n_s} stage maps and the teacher {n_t}; as in RepDistiller only the first "
            f"{min(n_s, n_t)} pairs are distilled.",
            stacklevel=3,
        )


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


# ------------------------------------------------------------------------------------------------ logit methods
@register_method
class KD(DistillationMethod):
    """Hinton KD, `KL(p_t ‖ p_s) · T²` at T = 4. Benchmark: CE 0.1 + KD 0.9."""

    name = "kd"
    default_weight = 0.9
    default_ce_weight = 0.1
    uses = "logits"

    def __init__(self, student: ModelOutputs, teacher: ModelOutputs, num_samples: int | None = None, temperature: float = 4.0):
        super().__init__(student, teacher, num_samples)
        _check_same_classes(student, teacher, self.name)
        self.temperature = float(temperature)

    def forward(self, student, teacher, index=None, labels=None):
        return kd_loss(student.logits, teacher.logits, self.temperature)


@register_method
class KDLS(DistillationMethod):
    """KD with logit standardisation (Sun et al. CVPR'24): KD at T = 2 on z-scored logits.

    Defaults from the authors' CIFAR-100 command (`--logit-stand --base-temp 2 --kd-weight 9`, CE weight 0.1 of
    their KD config): weight 9, CE 0.1. Not re-verified against their repository (see the report).
    """

    name = "kd_ls"
    default_weight = 9.0
    default_ce_weight = 0.1
    uses = "logits"

    def __init__(self, student, teacher, num_samples=None, temperature: float = 2.0):
        super().__init__(student, teacher, num_samples)
        _check_same_classes(student, teacher, self.name)
        self.temperature = float(temperature)

    def forward(self, student, teacher, index=None, labels=None):
        return kd_ls_loss(student.logits, teacher.logits, self.temperature)


@register_method
class DKD(DistillationMethod):
    """Decoupled KD: `w(epoch) · (alpha · TCKD + beta · NCKD)`, alpha 1, beta 8, T 4, warm-up 20 epochs.

    `w(epoch) = min(epoch / warmup_epochs, 1)` with mdistiller's 1-based epoch; the trainer calls
    `set_epoch(epoch)` at the start of each epoch (for a HF Trainer, `int(state.epoch) + 1`). Until then
    `warmup_factor` is 1 (no warm-up). Needs the batch's ground-truth `labels`. CE weight 1 (mdistiller).
    """

    name = "dkd"
    needs_labels = True
    default_weight = 1.0
    default_ce_weight = 1.0
    uses = "logits, labels"
    _logit_standardization = False

    def __init__(
        self,
        student,
        teacher,
        num_samples=None,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: float = 20.0,
    ):
        super().__init__(student, teacher, num_samples)
        _check_same_classes(student, teacher, self.name)
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature = float(temperature)
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_factor = 1.0

    def set_epoch(self, epoch: float) -> None:
        self.warmup_factor = dkd_warmup_factor(epoch, self.warmup_epochs)

    def forward(self, student, teacher, index=None, labels=None):
        if labels is None:
            raise ValueError(f"{self.name} needs the ground-truth labels: call method(student, teacher, labels=labels).")
        return dkd_loss(
            student.logits, teacher.logits, labels, self.alpha, self.beta, self.temperature,
            warmup_factor=self.warmup_factor, logit_standardization=self._logit_standardization,
        )


@register_method
class DKDLS(DKD):
    """DKD on z-scored logits ("DKD+LS", Sun et al. CVPR'24): T = 2, weight 9 (i.e. alpha 9, beta 72). Unsure: see the report."""

    name = "dkd_ls"
    default_weight = 9.0
    _logit_standardization = True

    def __init__(self, student, teacher, num_samples=None, alpha=1.0, beta=8.0, temperature=2.0, warmup_epochs=20.0):
        super().__init__(student, teacher, num_samples, alpha, beta, temperature, warmup_epochs)


# ------------------------------------------------------------------------------------------------ feature maps
@register_method
class FitNet(DistillationMethod):
    """FitNet hints: `MSE(ConvReg(feat_s[hint_layer]), feat_t[hint_layer])`, hint layer 2, weight 100.

    RepDistiller trains it in one stage (jointly with CE). `init_epochs > 0` adds the FitNets paper's first stage
    (hint training of the student's layers up to the guided layer together with the regressor, loss = hint loss
    alone); RepDistiller has no such stage, so the default is 0.
    """

    name = "fitnet"
    needs_hidden_states = True
    default_weight = 100.0
    uses = "hidden_states[hint_layer=2]"

    def __init__(self, student, teacher, num_samples=None, hint_layer: int = 2, init_epochs: int = 0):
        super().__init__(student, teacher, num_samples)
        s_hidden, t_hidden = self._hidden(student, "student"), self._hidden(teacher, "teacher")
        for role, hidden in (("student", s_hidden), ("teacher", t_hidden)):
            if not -len(hidden) <= hint_layer < len(hidden) - 1 or hidden[hint_layer].dim() != 4:
                raise ValueError(
                    f"fitnet hint_layer={hint_layer} must select a (B, C, H, W) map of the {role}'s hidden_states "
                    f"(0 .. {len(hidden) - 2}; the last entry is the pooled vector)."
                )
        self.hint_layer = int(hint_layer)
        self.regressor = ConvReg(s_hidden[hint_layer].shape, t_hidden[hint_layer].shape)
        if init_epochs > 0:
            self.init_stage = InitStage(
                epochs=int(init_epochs),
                loss="hint loss (forward)",
                trains_student=True,
                ddp_note="student layers after the hint layer and the classifier get no gradient in this stage.",
            )

    def _init_stage_own_parameters(self):
        return list(self.regressor.parameters())

    def forward(self, student, teacher, index=None, labels=None):
        f_s = student.hidden_states[self.hint_layer]
        f_t = teacher.hidden_states[self.hint_layer]
        with _float32_off_autocast(f_s):
            regressed = self.regressor(f_s.float())
        return hint_loss(regressed, f_t)


class _StagePairs(DistillationMethod):
    """Methods that sum a pairwise loss over `zip(feat_s[1:-1], feat_t[1:-1])`."""

    needs_hidden_states = True
    uses = "hidden_states[1:-1]"

    def __init__(self, student, teacher, num_samples=None):
        super().__init__(student, teacher, num_samples)
        n_s, n_t = len(self._stage_maps(student, "student")), len(self._stage_maps(teacher, "teacher"))
        _warn_unpaired(self.name, n_s, n_t)
        self.num_pairs = min(n_s, n_t)

    def pair_loss(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student, teacher, index=None, labels=None):
        pairs = zip(student.hidden_states[1:-1], teacher.hidden_states[1:-1])
        return sum(self.pair_loss(f_s, f_t) for f_s, f_t in pairs)


@register_method
class AT(_StagePairs):
    """Attention transfer (p = 2) summed over the stage pairs `feat[1:-1]`, weight 1000."""

    name = "at"
    default_weight = 1000.0

    def __init__(self, student, teacher, num_samples=None, p: float = 2.0):
        super().__init__(student, teacher, num_samples)
        self.p = float(p)

    def pair_loss(self, f_s, f_t):
        return at_loss(f_s, f_t, self.p)


@register_method
class NST(_StagePairs):
    """Neural selective transfer (polynomial-kernel MMD²) summed over the stage pairs `feat[1:-1]`, weight 50."""

    name = "nst"
    default_weight = 50.0

    def pair_loss(self, f_s, f_t):
        return nst_loss(f_s, f_t)


@register_method
class VID(_StagePairs):
    """Variational information distillation over the stage pairs `feat[1:-1]` (regressor mid channels = teacher
    channels, initial variance 5), weight 1. Each pair's regressor and log-scale are trained."""

    name = "vid"
    default_weight = 1.0

    def __init__(self, student, teacher, num_samples=None, init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__(student, teacher, num_samples)
        s_maps, t_maps = self._stage_maps(student, "student"), self._stage_maps(teacher, "teacher")
        self.regressors = nn.ModuleList(
            VIDRegressor(s.shape[1], t.shape[1], t.shape[1], init_pred_var=init_pred_var, eps=eps)
            for s, t in zip(s_maps, t_maps)
        )

    def forward(self, student, teacher, index=None, labels=None):
        total = 0.0
        pairs = zip(student.hidden_states[1:-1], teacher.hidden_states[1:-1], self.regressors)
        for f_s, f_t, regressor in pairs:
            f_s, f_t = pool_to_common_size(f_s, f_t.detach())
            with _float32_off_autocast(f_s):
                mean = regressor(f_s.float())
            total = total + vid_loss(mean, f_t, regressor.log_scale, regressor.eps)
        return total


@register_method
class SP(DistillationMethod):
    """Similarity preserving on the last stage output `feat[-2]`, weight 3000."""

    name = "sp"
    needs_hidden_states = True
    default_weight = 3000.0
    uses = "hidden_states[-2]"

    def forward(self, student, teacher, index=None, labels=None):
        return sp_loss(student.hidden_states[-2], teacher.hidden_states[-2])


@register_method
class AB(DistillationMethod):
    """Activation boundaries (margin 1) on the pre-ReLU stage outputs `feat[1:-1]` (`preact=True`).

    Two stages as in RepDistiller: an init stage of 30 epochs trains the connector and the student's feature
    layers on the AB loss alone; the main stage then adds **no** AB term (`main_stage_loss = False`; the
    benchmark's `-b 1` is inert) and trains with CE only. The connector (identity where channels and height
    match, else ConvReg without ReLU) is frozen outside the init stage. `forward` returns the AB loss in both
    stages.
    """

    name = "ab"
    needs_hidden_states = True
    needs_preact = True
    default_weight = 1.0
    main_stage_loss = False
    uses = "hidden_states[1:-1] (preact=True)"

    def __init__(self, student, teacher, num_samples=None, margin: float = 1.0, init_epochs: int = 30):
        super().__init__(student, teacher, num_samples)
        s_maps, t_maps = self._stage_maps(student, "student"), self._stage_maps(teacher, "teacher")
        self.connector = Connector([m.shape for m in s_maps], [m.shape for m in t_maps])
        _freeze(self.connector)
        self.margin = float(margin)
        self.init_stage = InitStage(
            epochs=int(init_epochs),
            loss="AB loss (forward)",
            trains_student=True,
            ddp_note="the student's classifier gets no gradient (begin_init_stage freezes it).",
        )

    def _init_stage_own_parameters(self):
        return list(self.connector.parameters())

    def forward(self, student, teacher, index=None, labels=None):
        s_maps = student.hidden_states[1:-1]
        with _float32_off_autocast(s_maps[0]):
            connected = self.connector([m.float() for m in s_maps])
        return ab_loss(connected, list(teacher.hidden_states[1:-1]), self.margin)


@register_method
class FT(DistillationMethod):
    """Factor transfer on the last stage output `feat[-2]`, weight 200.

    Init stage (30 epochs, SGD lr 0.01, which RepDistiller uses for resnet/wrn students; the main lr otherwise):
    the paraphraser is trained alone to reconstruct the teacher map, `MSE(decoder(encoder(f_t)), f_t)`; `forward`
    returns that loss during the stage. Main stage: `L1(factor(translator(f_s)), factor(paraphraser(f_t)))` with
    the paraphraser frozen (only the translator and the student train).
    """

    name = "ft"
    needs_hidden_states = True
    default_weight = 200.0
    uses = "hidden_states[-2]"

    def __init__(
        self,
        student,
        teacher,
        num_samples=None,
        k: float = 0.5,
        init_epochs: int = 30,
        init_learning_rate: float | None = 0.01,
    ):
        super().__init__(student, teacher, num_samples)
        s_map, t_map = self._hidden(student, "student")[-2], self._hidden(teacher, "teacher")[-2]
        if s_map.dim() != 4 or t_map.dim() != 4:
            raise ValueError(f"ft needs (B, C, H, W) maps at hidden_states[-2], got {tuple(s_map.shape)}, {tuple(t_map.shape)}.")
        self.paraphraser = Paraphraser(t_map.shape[1], k=k)
        self.translator = Translator(s_map.shape[1], t_map.shape[1], k=k)
        _freeze(self.paraphraser)
        self.init_stage = InitStage(
            epochs=int(init_epochs),
            loss="paraphraser reconstruction MSE of the teacher map (forward)",
            trains_student=False,
            learning_rate=init_learning_rate,
            ddp_note="only the paraphraser trains; begin_init_stage freezes the translator and the student.",
        )

    def _init_stage_own_parameters(self):
        return list(self.paraphraser.parameters())

    def forward(self, student, teacher, index=None, labels=None):
        f_t = teacher.hidden_states[-2].detach()
        if self.in_init_stage:
            with _float32_off_autocast(f_t):
                f_t = f_t.float()
                _, reconstruction = self.paraphraser(f_t)
                return F.mse_loss(reconstruction, f_t)
        f_s = student.hidden_states[-2]
        with _float32_off_autocast(f_s):
            factor_s = self.translator(f_s.float())
            with torch.no_grad():
                factor_t = self.paraphraser(f_t.float(), is_factor=True)
        return ft_loss(factor_s, factor_t)


@register_method
class FSP(DistillationMethod):
    """FSP matrices between consecutive maps of `feat[:-1]` (stem and stages); needs equal channel counts.

    Two stages as in RepDistiller: an init stage of 30 epochs trains the student's feature layers on the FSP
    loss alone; the main stage adds **no** FSP term (`main_stage_loss = False`; `-b 50` is inert).
    """

    name = "fsp"
    needs_hidden_states = True
    default_weight = 50.0
    main_stage_loss = False
    uses = "hidden_states[:-1]"

    def __init__(self, student, teacher, num_samples=None, init_epochs: int = 30):
        super().__init__(student, teacher, num_samples)
        s_maps, t_maps = self._hidden(student, "student")[:-1], self._hidden(teacher, "teacher")[:-1]
        s_c, t_c = [m.shape[1] for m in s_maps], [m.shape[1] for m in t_maps]
        if s_c != t_c:
            raise ValueError(
                f"fsp needs the same channel counts at every map of feat[:-1]: student {s_c}, teacher {t_c} "
                "(RepDistiller marks FSP as not applicable to such pairs)."
            )
        self.init_stage = InitStage(
            epochs=int(init_epochs),
            loss="FSP loss (forward)",
            trains_student=True,
            ddp_note="the student's classifier gets no gradient (begin_init_stage freezes it).",
        )

    def forward(self, student, teacher, index=None, labels=None):
        return fsp_loss(student.hidden_states[:-1], teacher.hidden_states[:-1])


# ------------------------------------------------------------------------------------------------ vectors
@register_method
class CC(DistillationMethod):
    """Correlation congruence on `LinearEmbed(feat[-1]) → 128` of both models (both embeddings trained), weight 0.02.

    `kernel="repdistiller"` (default) is the form in RepDistiller's `CC.py` that produced the benchmark numbers;
    `kernel="gaussian"` the paper's Taylor-approximated Gaussian RBF (gamma 0.4, order 2). See `relation.cc_loss`.
    """

    name = "cc"
    default_weight = 0.02
    uses = "features"

    def __init__(
        self,
        student,
        teacher,
        num_samples=None,
        embedding_dim: int = 128,
        kernel: str = "repdistiller",
        gamma: float = 0.4,
        max_order: int = 2,
    ):
        super().__init__(student, teacher, num_samples)
        if kernel not in CC_KERNELS:
            raise ValueError(f"cc kernel must be one of {CC_KERNELS}, got {kernel!r}.")
        self.embed_s = LinearEmbed(student.features.flatten(1).shape[1], embedding_dim)
        self.embed_t = LinearEmbed(teacher.features.flatten(1).shape[1], embedding_dim)
        self.kernel, self.gamma, self.max_order = kernel, float(gamma), int(max_order)

    def forward(self, student, teacher, index=None, labels=None):
        with _float32_off_autocast(student.features):
            e_s = self.embed_s(student.features.float())
            e_t = self.embed_t(teacher.features.detach().float())
        return cc_loss(e_s, e_t, self.kernel, self.gamma, self.max_order)


@register_method
class RKD(DistillationMethod):
    """Relational KD on `feat[-1]`: distance (25) + angle (50), weight 1."""

    name = "rkd"
    default_weight = 1.0
    uses = "features"

    def __init__(self, student, teacher, num_samples=None, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__(student, teacher, num_samples)
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def forward(self, student, teacher, index=None, labels=None):
        return rkd_loss(student.features, teacher.features, self.distance_weight, self.angle_weight)


@register_method
class PKT(DistillationMethod):
    """Probabilistic knowledge transfer (cosine kernel) on `feat[-1]`, weight 30000."""

    name = "pkt"
    default_weight = 30000.0
    uses = "features"

    def forward(self, student, teacher, index=None, labels=None):
        return pkt_loss(student.features, teacher.features)


@register_method
class CRD(DistillationMethod):
    """Contrastive representation distillation on `feat[-1]`: 128-d embeddings, two N×128 banks (momentum 0.5),
    K = 16384 negatives, T = 0.07, weight 0.8 (RepDistiller; RRD's re-runs use 1).

    Needs the dataset `index` of every sample and `num_samples`. Pass `dataset_labels` (class of every training
    sample) to draw negatives from the other classes as RepDistiller's CIFAR runs do; without it they are uniform
    over the dataset. State (banks, normalisers Z, update counter) is in the state dict and only changes in
    training mode. Under data parallelism the bank updates and the first-batch Z use `self.gather`ed values, so
    every process holds the same state; set `process_index` so processes draw different negatives.
    """

    name = "crd"
    needs_index = True
    default_weight = 0.8
    uses = "features, index"

    def __init__(
        self,
        student,
        teacher,
        num_samples=None,
        embedding_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        seed: int = 0,
        dataset_labels: torch.Tensor | None = None,
        negatives: str | None = None,
    ):
        super().__init__(student, teacher, num_samples)
        if num_samples is None:
            raise ValueError("crd needs num_samples (the length of the training dataset).")
        self.embed_s = nn.Linear(student.features.flatten(1).shape[1], embedding_dim)
        self.embed_t = nn.Linear(teacher.features.flatten(1).shape[1], embedding_dim)
        self.memory = CRDMemory(
            num_samples, embedding_dim, num_negatives, momentum, seed=seed, labels=dataset_labels, negatives=negatives
        )
        if not temperature > 0:
            raise ValueError(f"crd temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)

    def embed(self, student_features: torch.Tensor, teacher_features: torch.Tensor):
        """L2-normalised float32 embeddings `(z_s, z_t)`; both heads receive gradients, the teacher features none."""
        with _float32_off_autocast(student_features):
            z_s = F.normalize(self.embed_s(student_features.float().flatten(1)), dim=1)
            z_t = F.normalize(self.embed_t(teacher_features.detach().float().flatten(1)), dim=1)
        return z_s, z_t

    def forward(self, student, teacher, index=None, labels=None):
        if index is None:
            raise ValueError(
                "crd needs the dataset index of every sample: give the batches an `index` column and call "
                "method(student, teacher, index=batch['index'])."
            )
        z_s, z_t = self.embed(student.features, teacher.features)
        memory = self.memory
        sample_indices = memory.sample_indices(index, self.process_index)
        student_bank, teacher_bank = memory.student_bank, memory.teacher_bank
        if memory.normalizers_set:
            z_norm_s, z_norm_t = memory.normalizers.tolist()
        else:
            # RepDistiller fixes Z = mean(exp(s/T)) · N on the first batch; averaged over all processes here.
            with torch.no_grad():
                out_s = crd_scores(z_s, teacher_bank, sample_indices, self.temperature)
                out_t = crd_scores(z_t, student_bank, sample_indices, self.temperature)
                means = torch.stack([out_s.mean(), out_t.mean()]).reshape(1, 2)
                if self.training:
                    means = self.gather(means).reshape(-1, 2).mean(0, keepdim=True)
                z_norm_s, z_norm_t = (means[0] * memory.num_samples).tolist()
            if self.training:
                memory.set_normalizers(z_norm_s, z_norm_t)
        loss = crd_loss(z_s, z_t, student_bank, teacher_bank, sample_indices, z_norm_s, z_norm_t, self.temperature)
        if self.training:
            index = index.to(z_s.device)
            memory.update(self.gather(z_s.detach()), self.gather(z_t.detach()), self.gather(index))
        return loss
