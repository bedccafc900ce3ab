"""The distillation objective as data: `ce_weight · CE + Σ weight_i · method_i`, each term a registered method.

Give it in full with `distill_terms`, or with the shorthand fields the recipes use (`rrd_weight`, `kd_weight`, the
RRD options, `distill_method`/`distill_weight`/`distill_kwargs`): `resolve_loss_terms` turns either, from a live
`RRDConfig` or from the saved arguments of a finished run, into the one list of `LossTerm`s that the trainer builds,
the model card describes and `rrd-hf aggregate` compares. This is the only place that knows the shorthand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from .registry import method_class
from .rrd import RRD_OPTION_FIELDS, RRD_PRESETS

__all__ = ["LossTerm", "resolve_loss_terms", "describe_objective", "json_field", "OBJECTIVE_FIELDS", "SHORTHAND_FIELDS"]

#: The shorthand fields of the objective (each conflicts with `distill_terms`).
SHORTHAND_FIELDS = ("rrd_weight", "kd_weight", "distill_method", "distill_weight", "distill_kwargs")
#: Every training argument the objective is made of.
OBJECTIVE_FIELDS = frozenset({"ce_weight", "distill_terms", "kd_temperature", "rrd_preset", *SHORTHAND_FIELDS,
                              *RRD_OPTION_FIELDS})


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of the objective: `weight · method(**kwargs)`, logged as `loss_<name>`."""

    name: str
    method: str
    weight: float
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "method": self.method, "weight": self.weight, "kwargs": dict(self.kwargs)}


def json_field(value, what: str):
    """A field given as JSON text (on the command line) or as the value itself; '' means unset."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except json.JSONDecodeError as error:
            raise ValueError(f"{what} must be JSON, got {value!r}: {error}") from None
    return value


def _rrd_options(fields: Mapping) -> dict:
    options = {key: fields[key] for key in RRD_OPTION_FIELDS if fields.get(key) is not None}
    preset = RRD_PRESETS.get(fields.get("rrd_preset") or "published", {})
    return {**preset, **options}


def _defaults_for(method: str, fields: Mapping) -> dict:
    """Options a term of `method` takes from the config's own fields (kwargs given in the term win)."""
    if method == "rrd":
        return _rrd_options(fields)
    if method == "kd" and fields.get("kd_temperature") is not None:
        return {"temperature": fields["kd_temperature"]}
    return {}


def _explicit_terms(fields: Mapping, raw) -> list[LossTerm]:
    raw = json_field(raw, "distill_terms")
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError(f"distill_terms must be a non-empty list of {{'method': ..., 'weight': ...}}, got {raw!r}.")
    terms = []
    for item in raw:
        if isinstance(item, str):
            item = {"method": item}
        if not isinstance(item, Mapping) or "method" not in item:
            raise ValueError(f"every entry of distill_terms needs a 'method', got {item!r}.")
        unknown = set(item) - {"method", "weight", "kwargs", "name"}
        if unknown:
            raise ValueError(f"distill_terms entry {dict(item)!r} has unknown keys {sorted(unknown)}: use method, "
                             "weight, kwargs and name.")
        cls = method_class(item["method"])
        kwargs = {**_defaults_for(cls.name, fields), **dict(json_field(item.get("kwargs"), "kwargs") or {})}
        weight = item.get("weight")
        terms.append(LossTerm(str(item.get("name") or cls.name), cls.name,
                              float(cls.default_weight if weight is None else weight), kwargs))
    return terms


def _shorthand_terms(fields: Mapping) -> list[LossTerm]:
    method = fields.get("distill_method")
    kd_weight = float(fields.get("kd_weight") or 0.0)
    rrd_weight = fields.get("rrd_weight")
    # RRD is the default term only when no other method is named: distill_method="crd" alone trains CRD.
    rrd_weight = float((0.0 if method else 1.0) if rrd_weight is None else rrd_weight)
    terms = []
    if kd_weight:
        terms.append(LossTerm("kd", "kd", kd_weight, _defaults_for("kd", fields)))
    if rrd_weight:
        terms.append(LossTerm("rrd", "rrd", rrd_weight, _rrd_options(fields)))
    kwargs = dict(json_field(fields.get("distill_kwargs"), "distill_kwargs") or {})
    if method:
        cls = method_class(method)
        weight = fields.get("distill_weight")
        terms.append(LossTerm(cls.name, cls.name, float(cls.default_weight if weight is None else weight),
                              {**_defaults_for(cls.name, fields), **kwargs}))
    elif kwargs:
        raise ValueError(f"distill_kwargs={kwargs} is set but no distill_method: name the method they belong to.")
    return terms


def resolve_loss_terms(fields: Mapping) -> tuple[float, list[LossTerm]]:
    """`(ce_weight, terms)` of a config or of a dict of its saved arguments (runs of older versions included).

    Terms with weight 0 are switched off (init stage included) and left out.
    """
    explicit = fields.get("distill_terms")
    if explicit:
        given = [key for key in SHORTHAND_FIELDS if fields.get(key) is not None]
        if given:
            raise ValueError(f"the objective is given twice: distill_terms and {', '.join(given)}. Put every term in "
                             "distill_terms (e.g. {'method': 'kd', 'weight': 1}) and leave the shorthand fields unset.")
        terms = _explicit_terms(fields, explicit)
    else:
        terms = _shorthand_terms(fields)
    names = [term.name for term in terms]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"the objective has more than one term named {duplicates}: give each a distinct 'name' in "
                         "distill_terms (or do not set kd_weight and distill_method='kd' together).")
    ce_weight = fields.get("ce_weight")
    return float(1.0 if ce_weight is None else ce_weight), [term for term in terms if term.weight != 0]


def describe_objective(ce_weight: float, terms: list[LossTerm]) -> str:
    """`"1·CE + 1·KD + 1·RRD"`: the objective in one line, for logs, errors and tables."""
    parts = [f"{ce_weight:g}·CE"] if ce_weight else []
    parts += [f"{term.weight:g}·{term.name.upper()}" for term in terms]
    return " + ".join(parts)
