"""The registry of distillation methods: a name for every method class, and building one from its name.

The registry imports nothing from the methods themselves: each method module registers its classes with
`@register_method` when `rrd_hf.methods` is imported, which happens before anything in this module can be used
(importing `rrd_hf.methods.registry` runs `rrd_hf/methods/__init__.py` first).
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["METHODS", "register_method", "canonical_name", "method_class", "method_options", "check_method_kwargs",
           "build_method"]

#: Registered method classes by canonical (lowercase, `_`-separated) name.
METHODS: dict[str, type] = {}


def canonical_name(name: str) -> str:
    """`"DKD-LS"` → `"dkd_ls"`: names are case-insensitive and `-` is the same as `_`."""
    return str(name).strip().lower().replace("-", "_")


def register_method(cls: type) -> type:
    """Class decorator: add a `DistillationMethod` subclass to `METHODS` under its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name != canonical_name(name):
        raise ValueError(f"{cls.__name__}.name must be a non-empty lowercase name without '-', got {name!r}.")
    if not isinstance(getattr(cls, "default_weight", None), (int, float)):
        raise ValueError(f"{cls.__name__} must define default_weight (the weight of its loss in the benchmark).")
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"a method named {name!r} is already registered ({METHODS[name].__name__}).")
    METHODS[name] = cls
    return cls


def method_class(name: str) -> type:
    key = canonical_name(name)
    if key not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}: choose one of {', '.join(sorted(METHODS))}.")
    return METHODS[key]


def method_options(cls: type) -> dict[str, Any]:
    """The keyword arguments a method accepts (its `__init__` after `context`) with their defaults."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, context
    return {p.name: p.default for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_method_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Fail with the list of valid options when `kwargs` holds a key the method does not take (a typo, usually)."""
    cls = method_class(name)
    options = method_options(cls)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        valid = ", ".join(f"{key}={value!r}" for key, value in options.items()) or "none"
        raise ValueError(f"{cls.name} does not take {', '.join(map(repr, unknown))}; its options (with defaults) are: "
                         f"{valid}.")


def build_method(name: str, context, **kwargs: Any):
    """Build the method `name` for the models described by `context` (a `MethodContext`)."""
    check_method_kwargs(name, kwargs)
    return method_class(name)(context, **kwargs)
