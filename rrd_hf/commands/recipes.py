"""Reading a recipe file and checking the arguments of `rrd-hf train` before any data is loaded.

A recipe is data the user may have copied from anywhere, so it is read strictly:

* **Duplicate keys are refused.** PyYAML (like `json`) keeps the last of two equal keys, so a recipe that sets
  `student:` twice would silently train the second model; the user meant one of them, and only they know which.
* **YAML aliases are refused.** Recipes never need them, and an alias can expand exponentially (the "billion laughs"
  file: a few lines that take minutes and gigabytes to build). Refusing the alias event when the document is composed
  means nothing is ever expanded.
* **Syntax errors are one line** naming the file, the line and the column, instead of PyYAML's multi-line traceback.

The argument checks (`check_model_arguments`) run right after parsing: a misspelt zoo name or a bad
`student_init_kwargs` is reported before minutes of decoding data, and as what it is (not as "the Hub cannot be
reached" for a name that was never meant to be a Hub id).
"""

from __future__ import annotations

import difflib
import json
import os

__all__ = ["RecipeError", "load_recipe", "check_model_arguments", "RESERVED_INIT_KWARGS"]

#: Config fields a zoo student gets from the dataset: `student_init_kwargs` may not set them.
RESERVED_INIT_KWARGS = ("num_labels", "id2label", "label2id", "zoo_name", "architectures", "transformers_version")


class RecipeError(ValueError):
    """A recipe file or a recipe argument that cannot be used as it is (one line says why and where)."""


def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses aliases (before expanding anything) and duplicate keys."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                mark = event.start_mark
                raise RecipeError(
                    f"line {mark.line + 1}, column {mark.column + 1}: YAML aliases (*{event.anchor}) are not accepted "
                    "in a recipe (they can expand without bound); write the value out instead."
                )
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)
                seen = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        if key in seen:
                            raise RecipeError(f"line {line}: {key!r} is given twice (first on line {seen[key]}); "
                                              "keep one of them.")
                        seen[key] = line
                    except TypeError:  # an unhashable key: PyYAML reports it itself
                        continue
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _refuse_duplicate_pairs(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise RecipeError(f"{key!r} is given twice; keep one of them.")
        out[key] = value
    return out


def load_recipe(path: str | os.PathLike) -> dict:
    """The fields of a YAML or JSON recipe as a dict; `RecipeError` (one line) for anything it cannot be trusted on."""
    import yaml

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe {path} not found (run from the repository root, or give its full path).")
    with open(path, encoding="utf-8") as handle:
        try:
            text = handle.read()
        except UnicodeDecodeError as error:
            raise RecipeError(f"recipe {path} is not UTF-8 text ({error.reason} at byte {error.start}).") from None
    try:
        if path.endswith(".json"):
            recipe = json.loads(text, object_pairs_hook=_refuse_duplicate_pairs) if text.strip() else {}
        else:
            recipe = yaml.load(text, Loader=_strict_loader())  # noqa: S506 (a SafeLoader subclass)
    except RecipeError as error:
        raise RecipeError(f"recipe {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise RecipeError(f"recipe {path} is not valid JSON: {error.msg} at line {error.lineno}, column "
                          f"{error.colno}.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(
            f"recipe {path} is not valid YAML: {problem}{where} (each field is `name: value` at the start of its "
            "line; nested values are indented under their field)."
        ) from None
    recipe = recipe or {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"recipe {path} must be a mapping of field: value, got {type(recipe).__name__}.")
    return recipe


def _close(name: str, choices) -> str:
    matches = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" (close: {', '.join(matches)})" if matches else ""


def _zoo_fields(canonical: str) -> set[str]:
    import dataclasses

    from ..models.zoo import config_class_of

    config_class = config_class_of(canonical)
    return {field.name for field in dataclasses.fields(config_class)} - set(RESERVED_INIT_KWARGS)


def check_model_arguments(model_args) -> None:
    """Refuse, before any data is loaded, a student that is neither a zoo name, a folder nor a Hub id, and
    `student_init_kwargs` that is not a JSON object of the zoo config's own fields with valid values."""
    from ..models import MODEL_NAMES, resolve_model_name

    student = model_args.student
    if not student:
        return  # said later, with what to set
    canonical = None
    if not os.path.exists(student):
        try:
            canonical = resolve_model_name(student)
        except ValueError:
            if "/" not in student:  # not a folder, not namespace/name: meant as a zoo name
                raise RecipeError(
                    f"student {student!r}: unknown zoo name{_close(student, MODEL_NAMES)}. Zoo names: "
                    f"{', '.join(MODEL_NAMES)}; or give a folder written by save_pretrained, or a Hub id "
                    "(namespace/name)."
                ) from None
    kwargs_text = model_args.student_init_kwargs
    if kwargs_text in (None, ""):
        return
    if canonical is None:
        raise RecipeError(
            f"student_init_kwargs is only for a zoo student (a name like resnet8x4), but student {student!r} is a "
            "folder or a Hub id whose config is used as saved: remove student_init_kwargs."
        )
    try:
        overrides = json.loads(kwargs_text) if isinstance(kwargs_text, str) else kwargs_text
    except json.JSONDecodeError as error:
        raise RecipeError(
            f"student_init_kwargs is not valid JSON ({error.msg} at column {error.colno}): give an object such as "
            "'{\"depth\": 14}'."
        ) from None
    if not isinstance(overrides, dict):
        raise RecipeError(f"student_init_kwargs must be a JSON object of config fields, got "
                          f"{type(overrides).__name__}.")
    reserved = sorted(set(overrides) & set(RESERVED_INIT_KWARGS))
    if reserved:
        it = "it" if len(reserved) == 1 else "them"
        raise RecipeError(f"student_init_kwargs sets {', '.join(reserved)}: the student takes {it} from the dataset "
                          f"(its classes); remove {it}.")
    fields = _zoo_fields(canonical)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        hints = "; ".join(f"{name!r}{_close(name, fields)}" for name in unknown)
        raise RecipeError(f"student_init_kwargs has fields that {canonical}'s config does not have: {hints}.")
    from ..models import get_config

    try:
        get_config(canonical, **overrides)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"student_init_kwargs {kwargs_text} do not make a valid {canonical}: {error}") from None
