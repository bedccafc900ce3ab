"""Code shared by every CIFAR model family: the config base, the model base and the weight-init rules.

This file ships next to Hub checkpoints. ``save_pretrained`` copies it because the configuration/modeling files
import it relatively, and ``trust_remote_code`` loading copies it back. For that reason it may import only torch,
transformers and relative siblings, never ``rrd_hf``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention


class CifarConfig(PreTrainedConfig):
    """Base config. It derives ``feature_dim`` and ``hidden_size`` from the architecture fields.

    Both values are derived rather than free fields, so a config can never describe a classifier input that
    the network does not produce. A value passed in (for example one read back from ``config.json``) is only
    checked against the derived one.
    """

    num_channels: int = 3

    def __post_init__(self, **kwargs):
        passed = {key: kwargs.pop(key) for key in ("feature_dim", "hidden_size") if key in kwargs}
        self._normalize_fields()
        super().__post_init__(**kwargs)
        if self.num_labels is None or int(self.num_labels) < 1:
            raise ValueError(f"{type(self).__name__}: num_labels must be >= 1, got {self.num_labels!r}")
        dim = int(self._compute_feature_dim())
        for key, value in passed.items():
            if value is not None and int(value) != dim:
                raise ValueError(
                    f"{type(self).__name__}: {key}={value} does not match the architecture, which produces "
                    f"{dim}-dimensional features"
                )
        self.feature_dim = dim
        self.hidden_size = dim

    def _normalize_fields(self):
        """Turn tuple defaults and JSON lists into plain lists and validate the fields (subclasses override)."""

    def _compute_feature_dim(self) -> int:
        raise NotImplementedError


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling, flattened to (B, C).

    The reference models use fixed kernels (AvgPool2d(8), avg_pool2d(4), ...) sized for 32x32 inputs. Global
    pooling gives the same result there and also works for other input sizes.
    """
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle. ``reshape`` instead of ``view``, so channels_last inputs also work."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _torch_default_(module: nn.Module, zero_bias: bool = False) -> None:
    """``reset_parameters`` of Conv2d/Linear, written with the guarded transformers init functions.

    The guarded functions skip tensors that ``from_pretrained`` has already loaded.
    """
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    if module.bias is not None:
        if zero_bias:
            init.zeros_(module.bias)
        else:
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(module.bias, -bound, bound)


class CifarPreTrainedModel(PreTrainedModel):
    """Base class for the CIFAR classifiers. It owns ``forward``, so every family keeps the same contract.

    The contract:
    * ``logits = self.classifier(pooled)``, where ``self.classifier`` is a top-level ``nn.Linear(feature_dim,
      num_labels)``. Distillation trainers capture the penultimate vector with a forward-pre-hook on
      ``model.classifier``, so no other code path may compute logits.
    * ``hidden_states`` follows RepDistiller's ``is_feat=True`` list: the stem output, then the stage outputs,
      then the pooled (B, feature_dim) vector as the last entry. With ``preact=True`` the stage outputs are
      taken before their final ReLU, as in RepDistiller's ``preact=True``. Each family's class docstring gives
      the exact layout.
    * ``loss`` is ``F.cross_entropy(logits, labels)``, computed here and not through ``self.loss_function``. It
      is a per-batch mean, and ``accepts_loss_kwargs = False`` tells the Trainer not to rescale it.

    Subclasses implement ``_forward_features(pixel_values, preact) -> (features, pooled)``, where ``features``
    is the list of maps before the pooled vector. They declare their init scheme with ``_conv_init`` and
    ``_linear_init``, and the modules of ``feature_modules()`` with ``_feature_module_names``.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = False
    # "kaiming_fan_out": normal(0, sqrt(2 / (k*k*out))), which is what every reference family except ShuffleNet
    # uses. "torch_default": PyTorch's reset_parameters (the ShuffleNets never re-initialise).
    _conv_init = "kaiming_fan_out"
    # "torch_default" | "torch_default_zero_bias" (WRN) | "normal_0.01" (VGG, MobileNetV2)
    _linear_init = "torch_default"
    # Attribute names of the modules RepDistiller's ``get_feat_modules()`` returns for this family, in its order.
    # Its parameter-free entries (ReLU, pooling) are left out: this port applies them functionally, and they
    # carry nothing to train or to switch between train and eval mode.
    _feature_module_names: tuple[str, ...] = ()

    def _forward_features(self, pixel_values: torch.Tensor, preact: bool):
        raise NotImplementedError

    def feature_modules(self) -> list[nn.Module]:
        """The feature extractor of the benchmark's two-stage methods (RepDistiller's ``get_feat_modules()``).

        AB and FSP train exactly these modules in their init stage, so they differ from "everything but the
        classifier" where the reference differs: WRN leaves out its final ``bn1``, MobileNetV2 its last 1x1
        ``conv2``, ShuffleV2 its ``conv2``/``bn2``.
        """
        if not self._feature_module_names:
            raise NotImplementedError(f"{type(self).__name__} does not declare _feature_module_names.")
        return [getattr(self, name) for name in self._feature_module_names]

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        preact: bool = False,
    ):
        """Classify ``pixel_values`` (B, C, H, W) and optionally return the intermediate feature maps.

        Args:
            labels: int class ids (B,), or class probabilities (B, num_labels) for soft targets such as mixup.
            output_hidden_states: defaults to ``config.output_hidden_states``.
            preact: return the stage outputs in ``hidden_states`` before their last ReLU. ``preact=True``
                implies ``output_hidden_states=True``, because the flag means nothing without it.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        output_hidden_states = bool(output_hidden_states) or preact
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        features, pooled = self._forward_features(pixel_values, preact)
        logits = self.classifier(pooled)

        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss = F.cross_entropy(logits, labels)

        hidden_states = (*features, pooled) if output_hidden_states else None
        output = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=hidden_states)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise weights as the RepDistiller reference does, so from-scratch training matches it."""
        if isinstance(module, nn.Conv2d):
            if self._conv_init == "kaiming_fan_out":
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    init.zeros_(module.bias)
            else:
                _torch_default_(module)
        elif isinstance(module, nn.Linear):
            if self._linear_init == "normal_0.01":
                init.normal_(module.weight, mean=0.0, std=0.01)
                if module.bias is not None:
                    init.zeros_(module.bias)
            else:
                _torch_default_(module, zero_bias=self._linear_init == "torch_default_zero_bias")
        elif isinstance(module, nn.BatchNorm2d):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
