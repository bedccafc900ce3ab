"""The CRD/RepDistiller CIFAR-100 model zoo as transformers models.

Importing this package registers every family with ``AutoConfig`` and ``AutoModelForImageClassification``,
so a saved checkpoint loads through the Auto classes in a process that has rrd_hf. It also calls
``register_for_auto_class``, so ``save_pretrained`` writes ``auto_map`` and copies the (rrd_hf-free) modeling
files. A process without rrd_hf can then load the checkpoint with ``trust_remote_code=True``.
"""

from transformers import AutoConfig, AutoModelForImageClassification

from .configuration_cifar_mobilenetv2 import CifarMobileNetV2Config
from .configuration_cifar_resnet import CifarResNetConfig
from .configuration_cifar_resnet_bottleneck import CifarResNetBottleneckConfig
from .configuration_cifar_shufflenetv1 import CifarShuffleNetV1Config
from .configuration_cifar_shufflenetv2 import CifarShuffleNetV2Config
from .configuration_cifar_vgg import VGG_STAGES, CifarVGGConfig
from .configuration_cifar_wrn import CifarWideResNetConfig
from ._cifar_common import CifarConfig, CifarPreTrainedModel
from .modeling_cifar_mobilenetv2 import CifarMobileNetV2ForImageClassification
from .modeling_cifar_resnet import CifarResNetForImageClassification
from .modeling_cifar_resnet_bottleneck import CifarResNetBottleneckForImageClassification
from .modeling_cifar_shufflenetv1 import CifarShuffleNetV1ForImageClassification
from .modeling_cifar_shufflenetv2 import CifarShuffleNetV2ForImageClassification
from .modeling_cifar_vgg import CifarVGGForImageClassification
from .modeling_cifar_wrn import CifarWideResNetForImageClassification
from .zoo import (
    FAMILIES,
    FEATURE_DIMS,
    MODEL_NAMES,
    build_model,
    convert_repdistiller_state_dict,
    get_config,
    resolve_model_name,
)


def _register() -> None:
    for config_cls, model_cls in FAMILIES:
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForImageClassification.register(config_cls, model_cls, exist_ok=True)
        config_cls.register_for_auto_class()  # "AutoConfig"
        model_cls.register_for_auto_class("AutoModelForImageClassification")


_register()

__all__ = [
    "FEATURE_DIMS",
    "MODEL_NAMES",
    "VGG_STAGES",
    "CifarConfig",
    "CifarMobileNetV2Config",
    "CifarMobileNetV2ForImageClassification",
    "CifarPreTrainedModel",
    "CifarResNetBottleneckConfig",
    "CifarResNetBottleneckForImageClassification",
    "CifarResNetConfig",
    "CifarResNetForImageClassification",
    "CifarShuffleNetV1Config",
    "CifarShuffleNetV1ForImageClassification",
    "CifarShuffleNetV2Config",
    "CifarShuffleNetV2ForImageClassification",
    "CifarVGGConfig",
    "CifarVGGForImageClassification",
    "CifarWideResNetConfig",
    "CifarWideResNetForImageClassification",
    "build_model",
    "convert_repdistiller_state_dict",
    "get_config",
    "resolve_model_name",
]
