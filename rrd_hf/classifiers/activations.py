"""What the distillation methods read from a model's forward: logits, penultimate features, hidden states.

The penultimate features of any image classifier are read from its classifier's *input* by a forward pre-hook (no
second forward, works through DDP and torch.compile); hidden states come from `output_hidden_states` or, for models
that return none, from forward hooks on named modules. `ActivationReader` turns one forward into `Activations`.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from ..methods.base import Activations

__all__ = ["FeatureTap", "HiddenStateTap", "ActivationReader", "find_classifier", "feature_dim",
           "student_feature_modules"]

_CLASSIFIER_NAMES = ("classifier", "fc", "head", "heads")


def find_classifier(model: nn.Module, module_name: str | None = None) -> tuple[str, nn.Module]:
    """The module whose input is the penultimate feature vector: `module_name`, else the usual classifier names."""
    if module_name:
        try:
            return module_name, model.get_submodule(module_name)
        except AttributeError:
            raise ValueError(
                f"{type(model).__name__} has no submodule {module_name!r}; pass the dotted name of its classifier "
                f"(e.g. one of: {', '.join(n for n, _ in model.named_children())})."
            ) from None
    for name in _CLASSIFIER_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module) and not isinstance(module, nn.Identity):
            return name, module
    raise ValueError(
        f"cannot find the classifier of {type(model).__name__} (looked for {', '.join(_CLASSIFIER_NAMES)}). "
        "Set student_feature_module / teacher_feature_module to the dotted name of the module that maps the "
        "penultimate features to logits."
    )


def feature_dim(model: nn.Module, module_name: str | None = None) -> int:
    """Size of the penultimate vector: `config.feature_dim` or the `in_features` of the classifier's first Linear."""
    name, classifier = find_classifier(model, module_name)
    config_dim = getattr(getattr(model, "config", None), "feature_dim", None)
    if module_name is None and isinstance(config_dim, int):
        return config_dim
    for module in [classifier, *classifier.modules()]:
        if isinstance(module, nn.Linear):
            return module.in_features
    raise ValueError(
        f"cannot infer the feature size of {type(model).__name__}: its classifier {name!r} contains no nn.Linear. "
        "Name a module whose input is a flat feature vector with student_feature_module / teacher_feature_module."
    )


class FeatureTap:
    """Keeps the (flattened) input of `model.<classifier>` from the latest forward pass.

    Registered once as a forward pre-hook, before the model is wrapped by DDP or compiled, so it fires inside
    every wrapper. `pop()` hands the features over and forgets them, so a stale batch can never be used twice.
    """

    def __init__(self, model: nn.Module, module_name: str | None = None):
        self.module_name, module = find_classifier(model, module_name)
        self.dim = feature_dim(model, module_name)
        self._features: torch.Tensor | None = None
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self._features = args[0].flatten(1)

    def pop(self) -> torch.Tensor:
        if self._features is None:
            raise RuntimeError(
                f"no features were captured at {self.module_name!r} during the forward pass: the model computes its "
                "logits without calling that module. Set student_feature_module / teacher_feature_module."
            )
        features, self._features = self._features, None
        return features

    def clear(self) -> None:
        self._features = None

    def remove(self) -> None:
        self._handle.remove()
        self._features = None


class HiddenStateTap:
    """Outputs of named modules from the latest forward pass, for models that expose no `hidden_states`.

    Feature-map methods (FitNet, AT, ...) read `hidden_states`; for a model that does not return them, name the
    modules whose outputs should stand in (e.g. its stem and each stage), in order.
    """

    def __init__(self, model: nn.Module, module_names: list[str]):
        self._outputs: dict[int, torch.Tensor] = {}
        self._handles = []
        for position, name in enumerate(module_names):
            _, module = find_classifier(model, name)  # resolves a dotted name with a clear error
            self._handles.append(module.register_forward_hook(self._hook(position)))
        self.size = len(module_names)

    def _hook(self, position: int):
        def store(module, args, output):
            self._outputs[position] = output[0] if isinstance(output, (tuple, list)) else output

        return store

    def clear(self) -> None:
        self._outputs = {}

    def pop(self) -> tuple[torch.Tensor, ...]:
        if len(self._outputs) != self.size:
            raise RuntimeError(f"only {len(self._outputs)} of the {self.size} hidden-state modules ran in the forward pass.")
        outputs, self._outputs = self._outputs, {}
        return tuple(outputs[i] for i in range(self.size))


def student_feature_modules(model: nn.Module, classifier_name: str | None = None) -> list[nn.Module]:
    """The modules a two-stage method's init stage trains: RepDistiller's `get_feat_modules()`.

    rrd_hf's zoo models define `feature_modules()` (e.g. a WRN's final BatchNorm is not among them); for any other
    model, every top-level module but the classifier.
    """
    if callable(getattr(model, "feature_modules", None)):
        return list(model.feature_modules())
    name, _ = find_classifier(model, classifier_name)
    top = name.split(".")[0]
    return [module for child, module in model.named_children() if child != top]


class ActivationReader:
    """Reads the `Activations` the objective needs from one model's forward passes.

    Built once per model with what the methods need (`features`, `hidden_states`, `preact`); `forward_kwargs` says
    how to call the model, `read(output)` collects the result of that call. Hooks are registered at construction,
    before any wrapping, so they fire inside DDP and compiled wrappers.
    """

    def __init__(self, model: nn.Module, role: str, *, features: bool = False, hidden_states: bool = False,
                 preact: bool = False, feature_module: str | None = None, hidden_modules: list[str] | None = None):
        self.role = role
        self.feature_tap = FeatureTap(model, feature_module) if features or hidden_states else None
        self.hidden_tap = HiddenStateTap(model, hidden_modules) if hidden_states and hidden_modules else None
        self.forward_kwargs: dict = {}
        if hidden_states and self.hidden_tap is None:
            self.forward_kwargs["output_hidden_states"] = True
        if preact:
            if self.hidden_tap is None and "preact" not in inspect.signature(model.forward).parameters:
                raise ValueError(
                    f"the objective needs pre-activation feature maps (forward(..., preact=True)), which the {role} "
                    f"{type(model).__name__} does not provide; rrd_hf.models architectures do."
                )
            if self.hidden_tap is None:
                self.forward_kwargs["preact"] = True

    @property
    def feature_dim(self) -> int | None:
        return None if self.feature_tap is None else self.feature_tap.dim

    def read(self, output, logits: torch.Tensor | None = None) -> Activations:
        logits = output.logits if logits is None else logits
        if self.feature_tap is None:
            return Activations(logits)
        features = self.feature_tap.pop()
        hidden = self.hidden_tap.pop() if self.hidden_tap is not None else getattr(output, "hidden_states", None)
        if hidden is not None and hidden[-1].dim() != 2:  # end with the pooled vector, as rrd_hf.models do
            hidden = (*hidden, features)
        return Activations(logits, features, None if hidden is None else tuple(hidden))

    @torch.no_grad()
    def read_example(self, model: nn.Module, pixel_values: torch.Tensor, autocast, adapt=None) -> Activations:
        """Activations of one eval-mode forward (BatchNorm statistics untouched), to size the methods' parts."""
        was_training = model.training
        model.eval()
        try:
            with autocast():
                output = model(pixel_values=adapt(pixel_values) if adapt is not None else pixel_values,
                               **self.forward_kwargs)
        finally:
            model.train(was_training)
        return self.read(output)

    def clear(self) -> None:
        for tap in (self.feature_tap, self.hidden_tap):
            if tap is not None:
                tap.clear()
