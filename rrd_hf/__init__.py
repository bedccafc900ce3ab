"""rrd_hf: Relational Representation Distillation for vision models, native to Hugging Face transformers.

`import rrd_hf` is cheap and changes nothing in the process: each public name below is imported from its
subpackage on first use (as `trl` does), so torch and transformers load when something needs them. Importing
`rrd_hf.models` registers the model zoo with the Auto classes (the trainer and the loaders do it themselves).

Layout, lower layers first (a package imports only from the layers below it):
`models` and `methods` (the zoo; the distillation losses and the objective), `data`, `classifiers` (loading any
image classifier, reading its activations, the frozen teacher), `evaluation` (metrics, evaluation, probe, figures),
`runs` (what a run records, aggregating runs), `hub` (model cards, export, push), `training` (`RRDConfig`,
`RRDTrainer`) and `commands` (the `rrd-hf` command line, the only place that tunes its own process).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__  # noqa: F401  (cheap: no dependency)

#: public name -> the module that defines it
_EXPORTS = {
    "RRDConfig": "rrd_hf.training.config",
    "RRDTrainer": "rrd_hf.training.trainer",
    "DISTILL_STATE_NAME": "rrd_hf.training.checkpoints",
    "LossTerm": "rrd_hf.methods.objective",
    "resolve_loss_terms": "rrd_hf.methods.objective",
    "RRD_PRESETS": "rrd_hf.methods",
    "METHODS": "rrd_hf.methods",
    "DistillationMethod": "rrd_hf.methods",
    "MethodContext": "rrd_hf.methods",
    "Activations": "rrd_hf.methods",
    "build_method": "rrd_hf.methods",
    "register_method": "rrd_hf.methods",
    "rrd_loss": "rrd_hf.methods",
    "kd_loss": "rrd_hf.methods",
    "FifoMemory": "rrd_hf.methods",
    "MomentumMemory": "rrd_hf.methods",
    "FeatureTap": "rrd_hf.classifiers.activations",
    "TeacherInputAdapter": "rrd_hf.classifiers.inputs",
    "FrozenTeacher": "rrd_hf.classifiers.teacher",
    "HubMixin": "rrd_hf.hub",
    "push_to_hub": "rrd_hf.hub",
    "topk_accuracy": "rrd_hf.evaluation.metrics",
    "compute_classification_metrics": "rrd_hf.evaluation.metrics",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rrd_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .classifiers.activations import FeatureTap
    from .classifiers.inputs import TeacherInputAdapter
    from .classifiers.teacher import FrozenTeacher
    from .evaluation.metrics import compute_classification_metrics, topk_accuracy
    from .hub import HubMixin, push_to_hub
    from .methods import (METHODS, RRD_PRESETS, Activations, DistillationMethod, FifoMemory, MethodContext,
                          MomentumMemory, build_method, kd_loss, register_method, rrd_loss)
    from .methods.objective import LossTerm, resolve_loss_terms
    from .training.checkpoints import DISTILL_STATE_NAME
    from .training.config import RRDConfig
    from .training.trainer import RRDTrainer
