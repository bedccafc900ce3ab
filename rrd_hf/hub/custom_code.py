"""A folder's own Python code: which files `config.auto_map` ships, and when loading would have to run them.

Publishing treats the folder as untrusted. rrd_hf's architectures and transformers' load through the Auto classes
registered in this process, so their `auto_map` files are copied but never imported; any other architecture needs
its files imported to load, which happens only when the user says so (`trust_remote_code=True`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ExportError

RELATIVE_IMPORT_RE = re.compile(r"^\s*from\s+\.(\w*)\s+import\s+([\w\s,()]+)", re.MULTILINE)
#: A module `auto_map` may name: a bare Python identifier, i.e. a `.py` file directly in the folder.
MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def rrd_hf_model_types() -> set[str]:
    """The `model_type`s of rrd_hf's own architectures (importing rrd_hf.models registers them)."""
    from ..models import FAMILIES

    return {config_class.model_type for config_class, _ in FAMILIES}


def known_model_type(config: dict) -> bool:
    """True when this process loads `config`'s architecture without the folder's code (transformers' or rrd_hf's)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    rrd_hf_model_types()  # registers rrd_hf's architectures with the Auto classes
    return config.get("model_type") in CONFIG_MAPPING


def requires_remote_code(config: dict) -> bool:
    """The folder names code in `auto_map` for an architecture this process does not know."""
    return bool(config.get("auto_map")) and not known_model_type(config)


def check_code_trust(folder: str, config: dict, trust_remote_code: bool) -> None:
    """Refuse, before anything is staged, to load an unknown architecture's code without the user's consent."""
    if trust_remote_code or not requires_remote_code(config):
        return
    files = ", ".join(module_closure(folder, config))
    raise ExportError(
        f"{folder}: config.json's auto_map points to custom code ({files}) for model_type "
        f"{config.get('model_type')!r}, which neither transformers nor rrd_hf knows, so validating the export would "
        "run that code. rrd_hf never runs a published folder's code on its own: read those files, and if you trust "
        "them pass trust_remote_code=True (export_student / push_to_hub) or `rrd-hf push --trust-remote-code`."
    )


def module_closure(folder: str, config: dict) -> list[str]:
    """The .py files `config.auto_map` names, plus every sibling they import relatively (recursively).

    Only bare module names are accepted (a file directly in the folder, never a path with separators or `..`),
    and only regular files that are not links: a crafted `auto_map` can make the export neither read nor write
    anything outside the folder."""
    auto_map = config.get("auto_map") or {}
    pending = []
    for reference in auto_map.values():
        for item in reference if isinstance(reference, (list, tuple)) else [reference]:
            if not isinstance(item, str) or not item:
                continue
            if "--" in item:
                raise ExportError(f"{folder}: config.json's auto_map entry {item!r} points to code in another "
                                  "repository; only code saved in the folder itself can be exported.")
            if "." in item:
                pending.append(item.rsplit(".", 1)[0])
    seen: list[str] = []
    while pending:
        module = pending.pop()
        if not MODULE_NAME_RE.match(module):
            raise ExportError(f"{folder}: config.json's auto_map names the module {module!r}, which is not a bare "
                              "module name (a .py file directly in the folder): refusing to export it.")
        filename = f"{module}.py"
        if filename in seen:
            continue
        path = os.path.join(folder, filename)
        if os.path.islink(path):
            raise ExportError(f"{folder}: {filename} is a symbolic link; only regular files of the folder are exported.")
        if not os.path.isfile(path):
            raise ExportError(
                f"{folder}: config.json's auto_map needs {filename}, which is missing. Re-save the model with "
                "save_pretrained after registering it for the Auto classes (rrd_hf.models does this), or remove auto_map."
            )
        seen.append(filename)
        source = Path(path).read_text(encoding="utf-8")
        for match in RELATIVE_IMPORT_RE.finditer(source):
            if match.group(1):
                pending.append(match.group(1))
            else:  # from . import a, b
                pending.extend(n.strip() for n in match.group(2).strip("() \n").split(",") if n.strip())
    return sorted(seen)
