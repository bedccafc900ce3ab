"""The training objective of a run: the weighted distillation terms it minimised, and how the card names them.

`resolve_objective` is the only place that knows how training arguments spell the objective; everything else
works on the resolved `(ce_weight, terms)`, so the card follows the trainer's resolution by changing that one
function.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping

from ..methods.objective import LossTerm, resolve_loss_terms
from ..methods.rrd import DEFAULT_MOMENTUM_ANCHORS
from .facts import fmt

#: Display names that are not simply the method's name in capitals.
METHOD_NAMES = {"kd_ls": "KD-LS", "dkd_ls": "DKD-LS", "fitnet": "FitNet", "nst": "NST"}

#: The settings of RRD and KD worth a row of their own, in the card's order, with their labels.
_RRD_SETTINGS = (
    ("rrd_preset", "RRD preset"),
    ("student_temperature", "τ_s (student temperature)"),
    ("teacher_temperature", "τ_t (teacher temperature)"),
    ("enqueue", "enqueue order"),
    ("memory_type", "memory type"),
    ("memory_size", "memory size K"),
    ("memory_momentum", "memory momentum"),
    ("num_anchors", "anchors drawn per step"),
    ("embedding_dim", "embedding dim (projection heads)"),
)
_KD_SETTINGS = (("temperature", "KD temperature T"),)
_OPTIONAL = {"rrd_preset"}  # shown only when set


def resolve_objective(args: Mapping) -> tuple[float | None, list[LossTerm]]:
    """(ce_weight, terms) from saved training arguments, as the trainer resolves them (`rrd_hf.methods.objective.
    resolve_loss_terms`: `distill_terms`, or the shorthand fields of newer and older runs). Terms of weight 0 were
    switched off and are not listed."""
    ce_weight, terms = resolve_loss_terms(args)
    resolved = []
    for term in terms:
        kwargs = dict(term.kwargs)
        if term.method == "rrd" and args.get("rrd_preset"):
            kwargs["rrd_preset"] = args["rrd_preset"]  # shown beside the temperatures it set
        resolved.append(dataclasses.replace(term, kwargs=kwargs))
    return ce_weight, resolved


def recorded_terms(run: Mapping) -> tuple[float | None, list[LossTerm]] | None:
    """The terms a run recorded in `_rrd_run.json` (`loss_terms`, `ce_weight`), if it did."""
    terms = run.get("loss_terms")
    if terms is None:
        return None
    return run.get("ce_weight"), [LossTerm(t["name"], t["method"], float(t["weight"]), dict(t.get("kwargs") or {}))
                                  for t in terms]


def display(term: LossTerm) -> str:
    return METHOD_NAMES.get(term.method, term.method.upper())


def active(terms: list[LossTerm]) -> list[LossTerm]:
    """The terms that were minimised (weight > 0), named as the field does: RRD first, KD last (RRD+KD, CRD+KD)."""
    used = [t for t in terms if t.weight > 0]
    return sorted(used, key=lambda t: 0 if t.method == "rrd" else 2 if t.method == "kd" else 1)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def describe_objective(objective: tuple[float | None, list[LossTerm]] | None, teacher: dict | None,
                       override: str | None = None) -> tuple[str, str | None, list[str]]:
    """(display name, tag slug, names of the active terms); slug None when nothing was distilled."""
    if override:
        return override, slug(override), []
    if objective is None:
        return ("distillation (method not recorded)", None, []) if teacher else ("not recorded", None, [])
    names = [display(t) for t in active(objective[1])]
    if not names:
        return "cross-entropy only (no distillation)", None, []
    name = "+".join(names)
    return name, slug(name), names


def loss_formula(objective: tuple[float | None, list[LossTerm]]) -> str:
    """`1 · CE + 1 · KD + 1 · RRD`: every term of the objective with its weight."""
    ce_weight, terms = objective
    return " + ".join([f"{fmt(ce_weight)} · CE", *(f"{fmt(t.weight)} · {display(t)}" for t in terms)])


def objective_rows(objective: tuple[float | None, list[LossTerm]], args: Mapping) -> list[tuple[str, str]]:
    """Card rows of the loss and of each active term's settings (only the terms that were minimised)."""
    used = active(objective[1])
    if not used:
        return []
    rows = [("loss", loss_formula(objective))]
    others = [t for t in used if t.method not in ("rrd", "kd")]
    for term in others:
        rows.append(("distillation method (rrd_hf.methods)", term.method))
        if term.kwargs:
            label = "method arguments" if len(others) == 1 else f"{display(term)} arguments"
            rows.append((label, json.dumps(term.kwargs, sort_keys=True)))
    if others and args.get("init_epochs") is not None:
        rows.append(("initialisation-stage epochs", fmt(args.get("init_epochs"))))
    for term in used:
        settings = _RRD_SETTINGS if term.method == "rrd" else _KD_SETTINGS if term.method == "kd" else ()
        for key, label in settings:
            value = term.kwargs.get(key)
            if key in _OPTIONAL and not value:
                continue
            momentum = term.kwargs.get("memory_type") == "momentum"
            if key in ("memory_momentum", "num_anchors") and not momentum:
                continue  # only the momentum memory has them
            if key == "memory_size" and momentum:
                continue  # one slot per training sample
            if key == "num_anchors" and value is None:
                value = DEFAULT_MOMENTUM_ANCHORS
            rows.append((label, fmt(value)))
        known = {key for key, _ in settings}
        if settings:  # what the trainer resolved beyond the usual settings
            rows += [(f"{display(term)} {key}", fmt(value)) for key, value in sorted(term.kwargs.items())
                     if key not in known]
    return rows
