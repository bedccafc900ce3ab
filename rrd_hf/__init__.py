"""rrd_hf: Relational Representation Distillation for vision models, native to Hugging Face transformers."""

from .garbage_collection import paused as _paused

# Importing torch, transformers and datasets creates ~400,000 long-lived objects: no collector passes over them
# while they are created (rrd_hf.garbage_collection).
with _paused():
    # (models registers the zoo with the Auto classes: saved students load after `import rrd_hf`)
    from . import models  # noqa: F401
    from .config import RRD_PRESETS, LossTerm, RRDConfig, resolve_loss_terms
    from .features import FeatureTap
    from .hub import HubMixin, push_to_hub
    from .methods import (
        METHODS,
        Activations,
        DistillationMethod,
        FifoMemory,
        MethodContext,
        MomentumMemory,
        build_method,
        kd_loss,
        register_method,
        rrd_loss,
    )
    from .metrics import compute_classification_metrics, topk_accuracy
    from .teacher import TeacherInputAdapter
    from .trainer import DISTILL_STATE_NAME, RRDTrainer

__version__ = "0.1.0"

__all__ = [
    "RRDConfig",
    "RRDTrainer",
    "LossTerm",
    "resolve_loss_terms",
    "RRD_PRESETS",
    "DISTILL_STATE_NAME",
    "METHODS",
    "DistillationMethod",
    "MethodContext",
    "Activations",
    "build_method",
    "register_method",
    "rrd_loss",
    "kd_loss",
    "FifoMemory",
    "MomentumMemory",
    "FeatureTap",
    "TeacherInputAdapter",
    "HubMixin",
    "push_to_hub",
    "topk_accuracy",
    "compute_classification_metrics",
]
