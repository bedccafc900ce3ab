"""The CRD benchmark's 13 baselines and the modern logit methods, as pure losses plus thin modules.

* Pure losses (float32 under autocast, teacher detached inside): `logit` (KD, DKD, logit standardisation),
  `feature` (FitNet, AT, NST, FSP, AB, FT), `relation` (SP, CC, RKD, PKT), `vid`, `crd`.
* Thin modules with one interface (`base.DistillationMethod`): `distillers`; its docstring has the table of
  which hidden states each method reads and its benchmark weight.
* `build_method(name, student_example, teacher_example, num_samples=None, **kwargs)` and `METHODS`.
"""

from . import crd, feature, logit, relation, vid
from .base import (
    METHODS,
    DistillationMethod,
    InitStage,
    ModelOutputs,
    build_method,
    extra_buffer_count,
    extra_parameter_count,
    register_method,
    student_feature_parameters,
)
from .crd import CRDMemory
from .distillers import AB, AT, CC, CRD, DKD, DKDLS, FSP, FT, KD, KDLS, NST, PKT, RKD, SP, VID, FitNet

__all__ = [
    "METHODS",
    "DistillationMethod",
    "InitStage",
    "ModelOutputs",
    "build_method",
    "extra_buffer_count",
    "extra_parameter_count",
    "register_method",
    "student_feature_parameters",
    "CRDMemory",
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
    "crd",
    "feature",
    "logit",
    "relation",
    "vid",
]
