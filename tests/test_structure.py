"""The package's shape, read from its source: modules of one job and bounded size, no import cycle, no private name
used across modules, a registry that knows no method, a trainer that names none."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "rrd_hf"
MAX_LINES = 520  # "about 500"


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def module_level_imports(name: str, path: pathlib.Path, known: dict) -> set[str]:
    """rrd_hf modules imported when `name` is imported (top-level statements only: imports inside functions run
    later and cannot form an import-time cycle)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target in known:
                targets.add(target)
            targets.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name in known)
    # A package importing its own submodules is how packages are built, not a cycle.
    return {t for t in targets if t != name and not t.startswith(name + ".")}


def test_no_module_is_longer_than_about_500_lines():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by responsibility: {long}"


def test_no_import_cycle_between_modules():
    known = modules()
    graph = {name: module_level_imports(name, path, known) for name, path in known.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node, trail):
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] + [target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_no_private_name_is_imported_from_another_module():
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("rrd_hf")):
                found += [f"{name}: {alias.name}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not found, found


def test_the_registry_imports_no_method_and_the_trainer_names_none():
    registry = modules()["rrd_hf.methods.registry"].read_text(encoding="utf-8")
    assert "from ." not in registry and "import rrd_hf" not in registry
    from rrd_hf import METHODS

    trainer = modules()["rrd_hf.trainer"].read_text(encoding="utf-8")
    code = "\n".join(line.split("#")[0] for line in trainer.splitlines())
    named = sorted(m for m in METHODS if m != "rrd" and (f'"{m}"' in code or f"'{m}'" in code or f".{m.upper()}" in code))
    assert not named, f"the trainer names methods {named}: it must only loop over the objective's terms"
