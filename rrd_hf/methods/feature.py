"""Feature-map distillation losses of the CRD benchmark (RepDistiller `distiller_zoo`), as pure functions.

Every function computes in float32 (also under autocast) and detaches the teacher maps inside. Where a student and
a teacher map differ in spatial size, the larger one is average-pooled to the smaller one first, as RepDistiller
does (it pools to `(H, H)`, assuming square maps; here `(H, W)`, identical for square maps).

* FitNet (Romero et al. 2015): `hint_loss`, MSE between the regressed student map and the teacher map.
* AT (Zagoruyko & Komodakis 2017): `at_loss`, p = 2.
* NST (Huang & Wang 2017): `nst_loss`, squared MMD with the polynomial kernel k(a, b) = (aᵀb)².
* FSP (Yim et al. 2017): `fsp_matrix`, `fsp_loss`.
* AB (Heo et al. 2019): `ab_criterion`, `ab_loss`, margin 1.0, on pre-ReLU maps.
* FT (Kim et al. 2018): `factor`, `ft_loss`, L1 between the normalised spatial maps of the factors.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillationMethod, InitStage, MethodContext, float32_math
from .heads import Connector, ConvReg, Paraphraser, Translator
from .registry import register_method

__all__ = [
    "FitNet",
    "AT",
    "NST",
    "FSP",
    "AB",
    "FT",
    "StagePairs",
    "freeze",
    "pool_to_common_size",
    "average_pool",
    "hint_loss",
    "attention_map",
    "at_loss",
    "nst_loss",
    "fsp_matrix",
    "fsp_loss",
    "ab_criterion",
    "ab_loss",
    "factor",
    "ft_loss",
]


def _check_maps(name: str, f_s: torch.Tensor, f_t: torch.Tensor, same_channels: bool = False) -> None:
    if f_s.dim() != 4 or f_t.dim() != 4 or f_s.shape[0] != f_t.shape[0]:
        raise ValueError(
            f"{name} needs student and teacher maps (B, C, H, W) with the same batch size, got {tuple(f_s.shape)} "
            f"and {tuple(f_t.shape)}. Use the hidden_states of output_hidden_states=True, not the pooled vector."
        )
    if same_channels and f_s.shape[1] != f_t.shape[1]:
        raise ValueError(f"{name} needs equal channel counts, got student {f_s.shape[1]} and teacher {f_t.shape[1]}.")


def average_pool(f: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Average-pool `f` (B, C, H, W) to `size` (h, w).

    When the sizes divide, an integer-kernel `avg_pool2d` (the same windows and values as adaptive pooling): its
    CUDA backward is deterministic, while `adaptive_avg_pool2d`'s raises under `torch.use_deterministic_algorithms`
    (`full_determinism=True`). Sizes that do not divide (no benchmark pair has them) keep adaptive pooling.
    """
    (h, w), (out_h, out_w) = f.shape[2:], tuple(size)
    if h % out_h == 0 and w % out_w == 0:
        return F.avg_pool2d(f, kernel_size=(h // out_h, w // out_w))
    return F.adaptive_avg_pool2d(f, (out_h, out_w))


def pool_to_common_size(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the spatially larger of two maps to the other's size (RepDistiller's dimension matching)."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = average_pool(f_s, f_t.shape[2:])
    elif s_h < t_h:
        f_t = average_pool(f_t, f_s.shape[2:])
    return f_s, f_t


def hint_loss(regressed_student: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """FitNet: `mean((r(f_s) − f_t)²)` over all elements (`nn.MSELoss()`)."""
    if regressed_student.shape != teacher_map.shape:
        raise ValueError(
            f"the regressed student map {tuple(regressed_student.shape)} must have the teacher map's shape "
            f"{tuple(teacher_map.shape)}: build the regressor from the same hint layer of both models."
        )
    with float32_math(regressed_student):
        return F.mse_loss(regressed_student.float(), teacher_map.detach().float())


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """AT's spatial attention: `normalize(mean_c(f^p))`, flattened to (B, H·W), float32."""
    with float32_math(f):
        return F.normalize(f.float().pow(p).mean(1).reshape(f.shape[0], -1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer for one stage pair: `mean((a(f_s) − a(f_t))²)` over batch and positions."""
    _check_maps("AT", f_s, f_t)
    f_s, f_t = pool_to_common_size(f_s, f_t.detach())
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # a: (B, Ca, N), b: (B, Cb, N) -> (B, Cb, Ca) with entries (a_i · b_j)²  (RepDistiller's unsqueeze layout)
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """NST for one stage pair: MMD² between the channel distributions, polynomial kernel (aᵀb)², full form.

    Each channel's spatial response is L2-normalised; the loss is `mean k(t, t) + mean k(s, s) − 2 mean k(s, t)`
    (RepDistiller `NSTLoss` with `full_loss=True`; the teacher term is a constant).
    """
    _check_maps("NST", f_s, f_t)
    f_s, f_t = pool_to_common_size(f_s, f_t.detach())
    with float32_math(f_s):
        s = F.normalize(f_s.float().reshape(f_s.shape[0], f_s.shape[1], -1), dim=2)
        t = F.normalize(f_t.float().reshape(f_t.shape[0], f_t.shape[1], -1), dim=2)
        return _poly_kernel(t, t).mean() + _poly_kernel(s, s).mean() - 2 * _poly_kernel(s, t).mean()


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """FSP ("flow of solution procedure") matrix of two maps: `G[b, j, i] = mean_xy top[b, j] · bottom[b, i]`.

    Shape (B, C_top, C_bottom); the larger map is pooled to the smaller one first.
    """
    if bottom.dim() != 4 or top.dim() != 4:
        raise ValueError(f"FSP needs (B, C, H, W) maps, got {tuple(bottom.shape)} and {tuple(top.shape)}.")
    bottom, top = pool_to_common_size(bottom, top)
    with float32_math(bottom):
        b = bottom.float().reshape(bottom.shape[0], bottom.shape[1], -1)
        t = top.float().reshape(top.shape[0], top.shape[1], -1)
        return torch.bmm(t, b.transpose(1, 2)) / b.shape[2]


def fsp_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over consecutive map pairs of `mean((G_s − G_t)²)` (RepDistiller `FSP`, `loss_kd = sum(loss_group)`)."""
    if len(student_maps) != len(teacher_maps) or len(student_maps) < 2:
        raise ValueError(
            f"FSP needs the same number (>= 2) of student and teacher maps, got {len(student_maps)} and "
            f"{len(teacher_maps)}."
        )
    for s, t in zip(student_maps, teacher_maps):
        _check_maps("FSP", s, t, same_channels=True)
    total = 0.0
    for i in range(len(student_maps) - 1):
        g_s = fsp_matrix(student_maps[i], student_maps[i + 1])
        g_t = fsp_matrix(teacher_maps[i].detach(), teacher_maps[i + 1].detach())
        total = total + (g_s - g_t).pow(2).mean()
    return total


def ab_criterion(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """AB's alternative L2 of one pair, summed over all elements (not averaged).

    `(s + m)² · [s > −m ∧ t ≤ 0] + (s − m)² · [s ≤ m ∧ t > 0]`, s the (connected) student pre-ReLU map, t the
    teacher's pre-ReLU map: the student is pushed to the teacher's side of the ReLU boundary by a margin m.
    """
    if source.shape != target.shape:
        raise ValueError(
            f"AB compares maps of equal shape (the connector maps the student to the teacher's shape), got "
            f"{tuple(source.shape)} and {tuple(target.shape)}."
        )
    with float32_math(source):
        s, t = source.float(), target.detach().float()
        loss = (s + margin).pow(2) * ((s > -margin) & (t <= 0)).float() + (s - margin).pow(2) * (
            (s <= margin) & (t > 0)
        ).float()
        return loss.abs().sum()


def ab_loss(sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], margin: float = 1.0) -> torch.Tensor:
    """RepDistiller `ABLoss` summed: `Σ_i 2^(i−n+1) · criterion_i / B / 1000 · 3` over the n stage pairs."""
    if len(sources) != len(targets) or not sources:
        raise ValueError(f"AB needs as many student as teacher maps (>= 1), got {len(sources)} and {len(targets)}.")
    n, batch = len(sources), sources[0].shape[0]
    total = 0.0
    for i, (s, t) in enumerate(zip(sources, targets)):
        total = total + 2.0 ** (i - n + 1) * ab_criterion(s, t, margin) / batch / 1000 * 3
    return total


def factor(f: torch.Tensor, p1: float = 2.0) -> torch.Tensor:
    """FT's factor normalisation (RepDistiller `FactorTransfer.factor`): `normalize(mean_c(f^p1))`, flattened to
    (B, H·W), float32.

    The benchmark compares spatial maps, not the factors themselves: the channel mean of the squared factor (the
    same map as AT's `attention_map`), L2-normalised per sample.
    """
    return attention_map(f, p1)


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor, p1: float = 2.0, p2: int = 1) -> torch.Tensor:
    """Factor transfer as the benchmark computes it: `mean |F(s) − F(t)|` (p2 = 1) or `mean (F(s) − F(t))^p2`.

    `factor_s` is the translator's output, `factor_t` the paraphraser's encoding of the teacher map (both
    (B, C, H, W) with equal channels; the larger is pooled to the smaller first), F = `factor` with exponent p1;
    the mean runs over the B·H·W entries of the normalised maps.
    """
    _check_maps("FT", factor_s, factor_t, same_channels=True)
    factor_s, factor_t = pool_to_common_size(factor_s, factor_t.detach())
    diff = factor(factor_s, p1) - factor(factor_t, p1)
    return diff.abs().mean() if p2 == 1 else diff.pow(p2).mean()


# ------------------------------------------------------------------------------------------------ the methods
def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def warn_unpaired(name: str, n_s: int, n_t: int) -> None:
    if n_s != n_t:
        warnings.warn(
            f"{name}: the student has {n_s} stage maps and the teacher {n_t}; as in RepDistiller only the first "
            f"{min(n_s, n_t)} pairs are distilled.",
            stacklevel=3,
        )


def warn_if_post_relu(method: DistillationMethod, context: MethodContext) -> None:
    for role in ("student", "teacher"):
        maps = method.hidden(getattr(context, role), role)[1:-1]
        if maps and all(bool((m >= 0).all()) for m in maps):
            warnings.warn(
                f"{method.name}: every {role} stage map is non-negative, i.e. looks post-ReLU; this method needs "
                "pre-ReLU maps: run the models with preact=True.",
                stacklevel=3,
            )


@register_method
class FitNet(DistillationMethod):
    """FitNet hints: `MSE(ConvReg(feat_s[hint_layer]), feat_t[hint_layer])`, hint layer 2, weight 100.

    RepDistiller trains it in one stage (jointly with CE). `init_epochs > 0` adds the FitNets paper's first stage
    (hint training of the student's feature modules together with the regressor, loss = hint loss alone);
    RepDistiller has no such stage, so the default is 0.
    """

    name = "fitnet"
    needs_hidden_states = True
    has_init_stage = True
    default_weight = 100.0

    def __init__(self, context: MethodContext, hint_layer: int = 2, init_epochs: int = 0):
        super().__init__(context)
        s_hidden, t_hidden = self.hidden(context.student, "student"), self.hidden(context.teacher, "teacher")
        for role, hidden in (("student", s_hidden), ("teacher", t_hidden)):
            if not -len(hidden) <= hint_layer < len(hidden) - 1 or hidden[hint_layer].dim() != 4:
                raise ValueError(
                    f"fitnet hint_layer={hint_layer} must select a (B, C, H, W) map of the {role}'s hidden_states "
                    f"(0 .. {len(hidden) - 2}; the last entry is the pooled vector)."
                )
        self.hint_layer = int(hint_layer)
        self.regressor = ConvReg(s_hidden[hint_layer].shape, t_hidden[hint_layer].shape)
        self.init_stage = InitStage(epochs=int(init_epochs), trains_student=True)

    def init_stage_parameters(self):
        return list(self.regressor.parameters())

    def forward(self, student, teacher, index=None, labels=None):
        f_s = student.hidden_states[self.hint_layer]
        f_t = teacher.hidden_states[self.hint_layer]
        with float32_math(f_s):
            regressed = self.regressor(f_s.float())
        return hint_loss(regressed, f_t)


class StagePairs(DistillationMethod):
    """Methods that sum a pairwise loss over `zip(feat_s[1:-1], feat_t[1:-1])`."""

    needs_hidden_states = True

    def __init__(self, context: MethodContext):
        super().__init__(context)
        n_s = len(self.stage_maps(context.student, "student"))
        n_t = len(self.stage_maps(context.teacher, "teacher"))
        warn_unpaired(self.name, n_s, n_t)
        self.num_pairs = min(n_s, n_t)

    def pair_loss(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student, teacher, index=None, labels=None):
        pairs = zip(student.hidden_states[1:-1], teacher.hidden_states[1:-1])
        return sum(self.pair_loss(f_s, f_t) for f_s, f_t in pairs)


@register_method
class AT(StagePairs):
    """Attention transfer (p = 2) summed over the stage pairs `feat[1:-1]`, weight 1000."""

    name = "at"
    default_weight = 1000.0

    def __init__(self, context: MethodContext, p: float = 2.0):
        super().__init__(context)
        self.p = float(p)

    def pair_loss(self, f_s, f_t):
        return at_loss(f_s, f_t, self.p)


@register_method
class NST(StagePairs):
    """Neural selective transfer (polynomial-kernel MMD²) summed over the stage pairs `feat[1:-1]`, weight 50."""

    name = "nst"
    default_weight = 50.0

    def pair_loss(self, f_s, f_t):
        return nst_loss(f_s, f_t)


@register_method
class AB(DistillationMethod):
    """Activation boundaries (margin 1) on the pre-ReLU stage outputs `feat[1:-1]` (`preact=True`).

    Two stages as in RepDistiller: an init stage of 30 epochs trains the connector and the student's feature
    modules on the AB loss alone; the main stage then adds **no** AB term (`main_stage_loss = False`; the
    benchmark's `-b 1` is inert) and trains with CE only. The connector (identity where channels and height
    match, else ConvReg without ReLU) is frozen outside the init stage. `forward` returns the AB loss.
    """

    name = "ab"
    needs_hidden_states = True
    needs_preact = True
    has_init_stage = True
    default_weight = 1.0
    main_stage_loss = False

    def __init__(self, context: MethodContext, margin: float = 1.0, init_epochs: int = 30):
        super().__init__(context)
        s_maps, t_maps = self.stage_maps(context.student, "student"), self.stage_maps(context.teacher, "teacher")
        warn_if_post_relu(self, context)
        self.connector = Connector([m.shape for m in s_maps], [m.shape for m in t_maps])
        freeze(self.connector)
        self.margin = float(margin)
        self.init_stage = InitStage(epochs=int(init_epochs), trains_student=True)

    def init_stage_parameters(self):
        return list(self.connector.parameters())

    def forward(self, student, teacher, index=None, labels=None):
        s_maps = student.hidden_states[1:-1]
        with float32_math(s_maps[0]):
            connected = self.connector([m.float() for m in s_maps])
        return ab_loss(connected, list(teacher.hidden_states[1:-1]), self.margin)


@register_method
class FT(DistillationMethod):
    """Factor transfer on the last stage output `feat[-2]`, weight 200.

    Init stage (30 epochs): the paraphraser is trained alone to reconstruct the teacher map,
    `MSE(decoder(encoder(f_t)), f_t)`, with the student untouched (eval mode); `forward` returns that loss during
    the stage. Main stage: `L1(factor(translator(f_s)), factor(paraphraser(f_t)))` with the paraphraser frozen.

    `init_learning_rate=None` trains the stage at the run's learning rate, as RepDistiller's `init()` does with
    `opt.learning_rate` (0.05; 0.01 for MobileNetV2/ShuffleNet students). Its one exception is FT with a CIFAR
    ResNet or WRN student (resnet8 ... resnet110, resnet8x4, resnet32x4, wrn_16_1 ... wrn_40_2), which `init()`
    trains at 0.01: reproducing those pairs takes `init_learning_rate=0.01`.
    """

    name = "ft"
    needs_hidden_states = True
    has_init_stage = True
    default_weight = 200.0

    def __init__(self, context: MethodContext, k: float = 0.5, init_epochs: int = 30,
                 init_learning_rate: float | None = None):
        super().__init__(context)
        s_map, t_map = self.hidden(context.student, "student")[-2], self.hidden(context.teacher, "teacher")[-2]
        if s_map.dim() != 4 or t_map.dim() != 4:
            raise ValueError(f"ft needs (B, C, H, W) maps at hidden_states[-2], got {tuple(s_map.shape)}, {tuple(t_map.shape)}.")
        self.paraphraser = Paraphraser(t_map.shape[1], k=k)
        self.translator = Translator(s_map.shape[1], t_map.shape[1], k=k)
        freeze(self.paraphraser)
        self.init_stage = InitStage(epochs=int(init_epochs), trains_student=False, learning_rate=init_learning_rate)

    def init_stage_parameters(self):
        return list(self.paraphraser.parameters())

    def forward(self, student, teacher, index=None, labels=None):
        f_t = teacher.hidden_states[-2].detach()
        if self.in_init_stage:
            with float32_math(f_t):
                f_t = f_t.float()
                _, reconstruction = self.paraphraser(f_t)
                return F.mse_loss(reconstruction, f_t)
        f_s = student.hidden_states[-2]
        with float32_math(f_s):
            factor_s = self.translator(f_s.float())
            with torch.no_grad():
                factor_t = self.paraphraser(f_t.float(), is_factor=True)
        return ft_loss(factor_s, factor_t)


@register_method
class FSP(DistillationMethod):
    """FSP matrices between consecutive maps of `feat[:-1]` (stem and stages); needs equal channel counts.

    Two stages as in RepDistiller: an init stage of 30 epochs trains the student's feature modules on the FSP
    loss alone; the main stage adds **no** FSP term (`main_stage_loss = False`; `-b 50` is inert).
    """

    name = "fsp"
    needs_hidden_states = True
    has_init_stage = True
    default_weight = 50.0
    main_stage_loss = False

    def __init__(self, context: MethodContext, init_epochs: int = 30):
        super().__init__(context)
        s_maps = self.hidden(context.student, "student")[:-1]
        t_maps = self.hidden(context.teacher, "teacher")[:-1]
        s_c, t_c = [m.shape[1] for m in s_maps], [m.shape[1] for m in t_maps]
        if s_c != t_c:
            raise ValueError(
                f"fsp needs the same channel counts at every map of feat[:-1]: student {s_c}, teacher {t_c} "
                "(RepDistiller marks FSP as not applicable to such pairs)."
            )
        self.init_stage = InitStage(epochs=int(init_epochs), trains_student=True)

    def forward(self, student, teacher, index=None, labels=None):
        return fsp_loss(student.hidden_states[:-1], teacher.hidden_states[:-1])
