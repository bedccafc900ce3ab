"""The training objective of a run: which distillation terms it minimised, and how the card names them."""

from __future__ import annotations

import re

METHOD_NAMES = {"kd_ls": "KD-LS", "dkd_ls": "DKD-LS", "fitnet": "FitNet", "nst": "NST"}


def describe_objective(args: dict | None, teacher: dict | None, override: str | None = None) -> tuple[str, str | None, list[str]]:
    """(display name, tag slug, loss terms) of the training objective; slug None when nothing was distilled."""
    if override:
        return override, re.sub(r"[^a-z0-9]+", "-", override.lower()).strip("-"), []
    if not args:
        return ("distillation (method not recorded)", None, []) if teacher else ("not recorded", None, [])
    terms = [name for name, key in (("RRD", "rrd_weight"), ("KD", "kd_weight")) if float(args.get(key) or 0) > 0]
    other = args.get("distill_method")
    if other and float(args.get("distill_weight") or 0) > 0:
        terms.append(METHOD_NAMES.get(other, other.upper()))
    if not terms:
        return "cross-entropy only (no distillation)", None, []
    if terms[0] != "RRD" and len(terms) > 1:  # the benchmark's naming: CRD+KD, DKD+KD... the other method first
        terms = [terms[-1], *terms[:-1]]
    name = "+".join(terms)
    return name, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"), terms
