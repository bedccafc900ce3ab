"""Benchmark-name factory for the CRD/RepDistiller CIFAR-100 model zoo."""

from collections.abc import Mapping, Sequence
from numbers import Integral

from transformers import PreTrainedConfig, PreTrainedModel

from .configuration_cifar_mobilenetv2 import CifarMobileNetV2Config
from .configuration_cifar_resnet import CifarResNetConfig
from .configuration_cifar_resnet_bottleneck import CifarResNetBottleneckConfig
from .configuration_cifar_shufflenetv1 import CifarShuffleNetV1Config
from .configuration_cifar_shufflenetv2 import CifarShuffleNetV2Config
from .configuration_cifar_vgg import VGG_STAGES, CifarVGGConfig
from .configuration_cifar_wrn import CifarWideResNetConfig
from .modeling_cifar_mobilenetv2 import CifarMobileNetV2ForImageClassification
from .modeling_cifar_resnet import CifarResNetForImageClassification
from .modeling_cifar_resnet_bottleneck import CifarResNetBottleneckForImageClassification
from .modeling_cifar_shufflenetv1 import CifarShuffleNetV1ForImageClassification
from .modeling_cifar_shufflenetv2 import CifarShuffleNetV2ForImageClassification
from .modeling_cifar_vgg import CifarVGGForImageClassification
from .modeling_cifar_wrn import CifarWideResNetForImageClassification

# (config class, model class) per family. Registration and build_model both iterate over this.
FAMILIES = (
    (CifarResNetConfig, CifarResNetForImageClassification),
    (CifarWideResNetConfig, CifarWideResNetForImageClassification),
    (CifarVGGConfig, CifarVGGForImageClassification),
    (CifarResNetBottleneckConfig, CifarResNetBottleneckForImageClassification),
    (CifarMobileNetV2Config, CifarMobileNetV2ForImageClassification),
    (CifarShuffleNetV1Config, CifarShuffleNetV1ForImageClassification),
    (CifarShuffleNetV2Config, CifarShuffleNetV2ForImageClassification),
)
_MODEL_FOR_CONFIG = {cfg: model for cfg, model in FAMILIES}

_THIN = [16, 16, 32, 64]
_X4 = [32, 64, 128, 256]

# Benchmark name -> (config class, architecture kwargs), in RepDistiller's naming.
_SPECS: dict[str, tuple[type, dict]] = {
    "resnet8": (CifarResNetConfig, {"depth": 8, "num_filters": _THIN}),
    "resnet14": (CifarResNetConfig, {"depth": 14, "num_filters": _THIN}),
    "resnet20": (CifarResNetConfig, {"depth": 20, "num_filters": _THIN}),
    "resnet32": (CifarResNetConfig, {"depth": 32, "num_filters": _THIN}),
    "resnet44": (CifarResNetConfig, {"depth": 44, "num_filters": _THIN}),
    "resnet56": (CifarResNetConfig, {"depth": 56, "num_filters": _THIN}),
    "resnet110": (CifarResNetConfig, {"depth": 110, "num_filters": _THIN}),
    "resnet8x4": (CifarResNetConfig, {"depth": 8, "num_filters": _X4}),
    "resnet32x4": (CifarResNetConfig, {"depth": 32, "num_filters": _X4}),
    "wrn_16_1": (CifarWideResNetConfig, {"depth": 16, "widen_factor": 1}),
    "wrn_16_2": (CifarWideResNetConfig, {"depth": 16, "widen_factor": 2}),
    "wrn_40_1": (CifarWideResNetConfig, {"depth": 40, "widen_factor": 1}),
    "wrn_40_2": (CifarWideResNetConfig, {"depth": 40, "widen_factor": 2}),
    "vgg8": (CifarVGGConfig, {"stages": VGG_STAGES["S"], "batch_norm": True}),
    "vgg11": (CifarVGGConfig, {"stages": VGG_STAGES["A"], "batch_norm": True}),
    "vgg13": (CifarVGGConfig, {"stages": VGG_STAGES["B"], "batch_norm": True}),
    "vgg16": (CifarVGGConfig, {"stages": VGG_STAGES["D"], "batch_norm": True}),
    "vgg19": (CifarVGGConfig, {"stages": VGG_STAGES["E"], "batch_norm": True}),
    "ResNet50": (CifarResNetBottleneckConfig, {"num_blocks": [3, 4, 6, 3]}),
    "MobileNetV2": (CifarMobileNetV2Config, {"expand_ratio": 6, "width_mult": 0.5}),
    "ShuffleV1": (CifarShuffleNetV1Config, {"out_planes": [240, 480, 960], "num_blocks": [4, 8, 4], "groups": 3}),
    "ShuffleV2": (CifarShuffleNetV2Config, {"out_channels": [116, 232, 464, 1024], "num_blocks": [3, 7, 3]}),
}

MODEL_NAMES: tuple[str, ...] = tuple(_SPECS)

# Penultimate (classifier input) size per benchmark name, which projection heads need before any model is
# built. Tests check these against the built models.
FEATURE_DIMS: dict[str, int] = {
    **{n: 64 for n in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")},
    "resnet8x4": 256,
    "resnet32x4": 256,
    "wrn_16_1": 64,
    "wrn_16_2": 128,
    "wrn_40_1": 64,
    "wrn_40_2": 128,
    **{n: 512 for n in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "ResNet50": 2048,
    "MobileNetV2": 1280,
    "ShuffleV1": 960,
    "ShuffleV2": 1024,
}

# Case-insensitive lookup, plus the names used by RepDistiller's model_dict and common spellings.
_ALIASES: dict[str, str] = {name.lower(): name for name in MODEL_NAMES}
_ALIASES.update({f"{n}_bn": n for n in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")})
_ALIASES.update(
    {
        "mobile_half": "MobileNetV2",
        "mobilenet_v2": "MobileNetV2",
        "shufflenetv1": "ShuffleV1",
        "shufflenet_v1": "ShuffleV1",
        "shufflenetv2": "ShuffleV2",
        "shufflenet_v2": "ShuffleV2",
        "resnet_50": "ResNet50",
    }
)


def resolve_model_name(name: str) -> str:
    """Map a benchmark name or alias ("RESNET8X4", "wrn-40-2", "vgg13_bn", "mobile_half") to its canonical name."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in _ALIASES:
        raise ValueError(f"Unknown CIFAR model name {name!r}. Valid names: {', '.join(MODEL_NAMES)}")
    return _ALIASES[key]


def _check_num_labels(num_labels) -> int:
    if isinstance(num_labels, bool) or not isinstance(num_labels, Integral) or num_labels < 1:
        raise ValueError(f"num_labels must be an int >= 1, got {num_labels!r}")
    return int(num_labels)


def _labels_from_class_names(class_names, num_labels) -> tuple[int, dict[int, str]]:
    """(num_labels, id2label) from a list of class names; ``num_labels`` may be None (taken from the list)."""
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
        raise TypeError(f"class_names must be a list of names, got {type(class_names).__name__}")
    names = [str(name) for name in class_names]
    if not names:
        raise ValueError("class_names is empty: give one name per class")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"class_names must be unique (label2id maps each name to one id); repeated: {duplicates}")
    if num_labels is not None and _check_num_labels(num_labels) != len(names):
        raise ValueError(f"class_names has {len(names)} names but num_labels={num_labels}: give one name per label")
    return _check_num_labels(len(names)), dict(enumerate(names))


def config_class_of(name: str) -> type:
    """The configuration class of a zoo name (its fields are what `student_init_kwargs` may set)."""
    return _SPECS[resolve_model_name(name)][0]


def get_config(
    name: str, num_labels: int | None = None, class_names: Sequence[str] | None = None, **config_overrides
) -> PreTrainedConfig:
    """Config of a benchmark model. ``config_overrides`` replace architecture fields or set ``id2label`` and the like.

    Args:
        num_labels: number of classes; defaults to ``len(class_names)``, else 100 (CIFAR-100).
        class_names: the class names in label-id order. They become ``id2label``/``label2id``, so a pipeline
            answers "apple" rather than "LABEL_0". Give either this or ``id2label``, not both.

    ``id2label`` must have ``num_labels`` entries. ``label2id`` is derived from it when not given.
    """
    canonical = resolve_model_name(name)
    config_cls, arch = _SPECS[canonical]
    kwargs = {**arch, **config_overrides}
    if class_names is not None:
        if kwargs.get("id2label") is not None:
            raise ValueError("give class_names or id2label, not both: class_names already sets id2label and label2id")
        num_labels, kwargs["id2label"] = _labels_from_class_names(class_names, num_labels)
    num_labels = _check_num_labels(100 if num_labels is None else num_labels)
    id2label = kwargs.get("id2label")
    if id2label is not None:
        if not isinstance(id2label, Mapping) or len(id2label) != num_labels:
            raise ValueError(
                f"id2label must be a mapping with num_labels={num_labels} entries, got "
                f"{len(id2label) if isinstance(id2label, Mapping) else type(id2label).__name__}"
            )
        kwargs["id2label"] = {int(k): str(v) for k, v in id2label.items()}
        kwargs.setdefault("label2id", {v: k for k, v in kwargs["id2label"].items()})
    else:
        kwargs["num_labels"] = num_labels
    # Records which zoo entry this is, for model cards and logs.
    kwargs.setdefault("zoo_name", canonical)
    return config_cls(**kwargs)


def build_model(
    name: str, num_labels: int | None = None, class_names: Sequence[str] | None = None, **config_overrides
) -> PreTrainedModel:
    """Build a randomly initialised benchmark model from its RepDistiller name, e.g. ``build_model("resnet32x4")``.

    ``build_model("resnet8", class_names=["cat", "dog"])`` gives a 2-class model whose config names its labels
    (``num_labels`` defaults to ``len(class_names)``, else 100). See ``get_config``.
    """
    config = get_config(name, num_labels, class_names, **config_overrides)
    return _MODEL_FOR_CONFIG[type(config)](config)


def convert_repdistiller_state_dict(state_dict: Mapping) -> dict:
    """Rename a RepDistiller checkpoint's keys to ours, so its pretrained teachers load with ``load_state_dict``.

    Only the classifier is named differently: ``fc.*`` (ResNet, WRN), ``linear.*`` (ResNet50, ShuffleNets) and
    ``classifier.0.*`` (MobileNetV2) all become ``classifier.*``. A ``{"model": state_dict}`` checkpoint and a
    DataParallel ``module.`` prefix are unwrapped too.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    out = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        for old in ("fc.", "linear.", "classifier.0."):
            if key.startswith(old):
                key = "classifier." + key[len(old):]
                break
        out[key] = value
    return out


__all__ = [
    "FAMILIES",
    "FEATURE_DIMS",
    "MODEL_NAMES",
    "build_model",
    "convert_repdistiller_state_dict",
    "get_config",
    "resolve_model_name",
]
