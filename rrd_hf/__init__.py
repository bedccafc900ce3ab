"""rrd_hf: Relational Representation Distillation for vision models, native to Hugging Face transformers."""

from .config import RRD_PRESETS, RRDConfig
from .features import FeatureTap
from .hub import HubMixin, push_to_hub
from .losses import kd_loss, rrd_loss
from .memory import FifoMemory, MomentumMemory
from .methods import METHODS, DistillationMethod, ModelOutputs, build_method
from .metrics import compute_classification_metrics, topk_accuracy
from .rrd import RRDLoss
from .teacher_inputs import TeacherInputAdapter
from .trainer import RRD_STATE_NAME, RRDTrainer

__version__ = "0.1.0"

__all__ = [
    "RRDConfig",
    "RRDTrainer",
    "RRDLoss",
    "RRD_PRESETS",
    "RRD_STATE_NAME",
    "rrd_loss",
    "kd_loss",
    "FifoMemory",
    "MomentumMemory",
    "FeatureTap",
    "HubMixin",
    "push_to_hub",
    "METHODS",
    "DistillationMethod",
    "ModelOutputs",
    "build_method",
    "TeacherInputAdapter",
    "topk_accuracy",
    "compute_classification_metrics",
]
