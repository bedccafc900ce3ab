"""The frozen teacher's eval-mode BatchNorm folded into the convolution before it (opt-in:
`fold_teacher_batch_norm=True`).

In eval mode a BatchNorm is a fixed per-channel affine map, `y = (x − μ) · γ/√(σ² + ε) + β`; after a convolution it
can be merged into the convolution's weight and bias (`torch.nn.utils.fusion.fuse_conv_bn_eval`), which removes one
full read and write of every feature map of a float32 teacher. The values are the same up to float rounding. Under
bf16/fp16 autocast the teacher's convolutions hold half-precision weights and are left unfolded, and a compiler
(`torch.compile`) folds such pairs itself, so it is off by default.

Which convolution feeds which BatchNorm is read from one traced forward, not from module order: a pair is folded only
when the BatchNorm module received the convolution module's output and nothing else used that output (counted over
every torch function call of the forward, with a `TorchFunctionMode`), when neither module has hooks or a
non-standard `forward`, and when the BatchNorm has running statistics. The folded model is then checked against the
original on the same input; if any output differs by more than float rounding, the original is kept. What one
trace cannot see: a forward that takes other paths for other inputs, or that keeps a convolution's output in a
Python attribute for later; such a teacher must not be folded.

The user's module is never changed: the result is a shallow copy that shares every untouched module, parameter and
hook with it; only the ancestors of a folded pair are copied (with their own child dictionaries), the convolution
is replaced by its folded copy and the BatchNorm becomes `nn.Identity`. Moving or casting the folded copy later
(`.to(...)`) therefore also moves the modules it shares with the original, as it would have moved the original.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

logger = logging.getLogger(__name__)

__all__ = ["fold_batch_norms", "foldable_pairs"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _plain(module: nn.Module) -> bool:
    """A standard module: no hooks of its own and the forward of its torch class (no subclass override)."""
    standard = next((cls for cls in (*_CONVS, *_NORMS) if isinstance(module, cls)), None)
    hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks,
             module._state_dict_hooks, module._load_state_dict_pre_hooks)
    return standard is not None and type(module).forward is standard.forward and not any(hooks)


class _UseCounter(TorchFunctionMode):
    """Counts, for each watched tensor, the torch calls that take it and return a tensor (metadata reads excluded)."""

    def __init__(self):
        super().__init__()
        self.watched: dict[int, torch.Tensor] = {}  # the tensors stay referenced, so their ids are not reused
        self.uses: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if any(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(result)[0]):
            for leaf in tree_flatten((args, kwargs or {}))[0]:
                if isinstance(leaf, torch.Tensor) and id(leaf) in self.watched:
                    self.uses[id(leaf)] += 1
        return result


def foldable_pairs(model: nn.Module, run: Callable[[nn.Module], object]) -> list[tuple[str, str]]:
    """`(convolution name, BatchNorm name)` pairs of `model` that can be folded, found by one forward `run(model)`."""
    return _trace(model, run)[0]


def _trace(model: nn.Module, run: Callable[[nn.Module], object]) -> tuple[list[tuple[str, str]], object]:
    """The foldable pairs and the outputs of the traced forward (None when nothing could be folded, untraced)."""
    names = {module: name for name, module in model.named_modules()}
    convs = {m for m in names if isinstance(m, _CONVS) and _plain(m) and m.weight.dtype in (torch.float32, torch.float64)}
    norms = {m for m in names if isinstance(m, _NORMS) and _plain(m) and not m.training
             and m.running_mean is not None and m.running_var is not None}
    if not convs or not norms:
        return [], None
    counter = _UseCounter()
    produced: dict[int, nn.Module] = {}  # id of a convolution's output -> that convolution
    consumed: list[tuple[nn.Module, torch.Tensor]] = []  # (BatchNorm, its input)

    def after_conv(module, args, output):
        if isinstance(output, torch.Tensor):
            counter.watched[id(output)], counter.uses[id(output)] = output, 0
            produced.setdefault(id(output), module)

    def before_norm(module, args):
        consumed.append((module, args[0]))

    handles = [m.register_forward_hook(after_conv) for m in convs]
    handles += [m.register_forward_pre_hook(before_norm) for m in norms]
    try:
        with torch.no_grad(), counter:
            outputs = run(model)
    finally:
        for handle in handles:
            handle.remove()
    returned = {id(leaf) for leaf in _tensors(outputs)}
    calls: dict[nn.Module, int] = {}
    for module in list(produced.values()) + [norm for norm, _ in consumed]:
        calls[module] = calls.get(module, 0) + 1
    pairs = []
    for norm, tensor in consumed:
        conv = produced.get(id(tensor))
        if (conv is None or calls[conv] != 1 or calls[norm] != 1 or counter.uses[id(tensor)] != 1
                or id(tensor) in returned or conv.out_channels != norm.num_features):
            continue  # not conv -> BN only, a module used twice, the output used elsewhere or returned
        pairs.append((names[conv], names[norm]))
    return pairs, outputs


def _tensors(outputs) -> list[torch.Tensor]:
    if hasattr(outputs, "to_tuple"):  # a transformers ModelOutput
        outputs = outputs.to_tuple()
    return [leaf for leaf in tree_flatten(outputs)[0] if isinstance(leaf, torch.Tensor)]


def _folded_conv(conv: nn.Module, norm: nn.Module) -> nn.Module:
    """The convolution with the BatchNorm folded in (torch's own fold), frozen like the teacher it belongs to."""
    return fuse_conv_bn_eval(conv, norm).requires_grad_(False)


def _replace(root: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """A shallow copy of `root` with the named submodules replaced; only the ancestors of a replaced one are copied."""
    copies: dict[str, nn.Module] = {}

    def copied(path: str) -> nn.Module:
        if path not in copies:
            original = root.get_submodule(path)
            module = copy.copy(original)
            module._modules = dict(original._modules)
            if path:
                parent, _, child = path.rpartition(".")
                copied(parent)._modules[child] = module
            copies[path] = module
        return copies[path]

    for path, module in replacements.items():
        parent, _, child = path.rpartition(".")
        copied(parent)._modules[child] = module
    return copied("")


def _same_outputs(expected, actual) -> tuple[bool, float]:
    expected, actual = _tensors(expected), _tensors(actual)
    if len(expected) != len(actual):
        return False, float("inf")
    worst = 0.0
    for a, b in zip(expected, actual):
        if a.shape != b.shape or not a.is_floating_point():
            if not torch.equal(a, b):
                return False, float("inf")
            continue
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            return False, float("nan")  # a NaN/inf statistic or weight: nothing to compare; the run's guard reports it
        a, b = a.double(), b.double()
        scale = a.abs().max().item() if a.numel() else 0.0
        error = (a - b).abs().max().item() if a.numel() else 0.0
        worst = max(worst, error / max(scale, 1e-6))
        if not error <= 1e-3 * max(scale, 1e-6):  # float32 rounding over a deep network stays far below this
            return False, worst
    return True, worst


def fold_batch_norms(model: nn.Module, run: Callable[[nn.Module], object]) -> tuple[nn.Module, list[str]]:
    """`model` with its foldable eval-mode BatchNorms folded (a shallow copy; `model` itself is unchanged), and the
    names of the folded BatchNorms. `run(module)` makes the forward call the model is used with (same inputs' shape,
    same keyword arguments); it is called twice, without gradients: traced on `model`, then on the folded copy,
    whose outputs are compared with the traced ones."""
    pairs, expected = _trace(model, run)
    if not pairs:
        return model, []
    replacements = {}
    for conv_name, norm_name in pairs:
        replacements[conv_name] = _folded_conv(model.get_submodule(conv_name), model.get_submodule(norm_name))
        replacements[norm_name] = nn.Identity()
    folded = _replace(model, replacements)
    with torch.no_grad():
        actual = run(folded)
    same, worst = _same_outputs(expected, actual)
    if not same:
        logger.warning("folding %d BatchNorms into their convolutions changed the teacher's outputs (largest relative "
                       "difference %.2g; nan: the outputs are not finite): the teacher runs unfolded.", len(pairs), worst)
        return model, []
    return folded, [norm for _, norm in pairs]
