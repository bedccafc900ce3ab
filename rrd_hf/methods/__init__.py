"""Every distillation term as a registered method: a pure loss function beside the thin module that holds its state.

* `rrd` (RRD, with its memories in `memory`), `logit` (KD, KD with logit standardisation, DKD, DKD+LS), `feature`
  (FitNet, AT, NST, FSP, AB, FT), `relation` (SP, CC, RKD, PKT), `vid` (VID), `crd` (CRD and its banks).
* `METHODS` maps every name to its class; `build_method(name, context, **options)` builds one for the models
  described by a `MethodContext`. The trainer's objective is a list of weighted terms naming these methods.

Adding a method is one module with a `DistillationMethod` subclass decorated with `@register_method`, plus its
import below (or, outside rrd_hf, importing your module before building the trainer)::

    from rrd_hf.methods import DistillationMethod, register_method

    @register_method
    class LogitMSE(DistillationMethod):
        name = "logit_mse"
        default_weight = 1.0

        def forward(self, student, teacher, index=None, labels=None):
            return (student.logits.float() - teacher.logits.detach().float()).pow(2).mean()
"""

from . import crd, feature, logit, relation, rrd, vid  # noqa: F401  (each registers its methods)
from .base import (
    Activations,
    DistillationMethod,
    InitStage,
    MethodContext,
    extra_buffer_count,
    extra_parameter_count,
)
from .crd import CRD, CRDMemory
from .feature import AB, AT, FSP, FT, NST, FitNet
from .logit import DKD, DKDLS, KD, KDLS, kd_loss
from .memory import FifoMemory, MomentumMemory
from .registry import METHODS, build_method, canonical_name, check_method_kwargs, method_class, method_options, register_method
from .relation import CC, PKT, RKD, SP
from .rrd import RRD, RRD_PRESETS, rrd_loss
from .vid import VID

__all__ = [
    "METHODS",
    "register_method",
    "build_method",
    "method_class",
    "method_options",
    "check_method_kwargs",
    "canonical_name",
    "DistillationMethod",
    "MethodContext",
    "Activations",
    "InitStage",
    "extra_buffer_count",
    "extra_parameter_count",
    "rrd_loss",
    "kd_loss",
    "FifoMemory",
    "MomentumMemory",
    "CRDMemory",
    "RRD_PRESETS",
    "RRD",
    "KD",
    "KDLS",
    "DKD",
    "DKDLS",
    "FitNet",
    "AT",
    "NST",
    "SP",
    "CC",
    "VID",
    "RKD",
    "PKT",
    "AB",
    "FT",
    "FSP",
    "CRD",
]
