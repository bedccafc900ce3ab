"""The package's shape, read from its source: layers that import only downwards, no import cycle (imports inside
functions included), no private name used across modules, a registry that knows no method, a trainer that names
none."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "rrd_hf"

#: Lower layers first. A module may import from its own package and from the packages of lower layers only;
#: packages of one layer do not import each other. The package root (`rrd_hf/__init__.py`) re-exports lazily
#: from every layer, and nothing imports it.
LAYERS = (
    ("rrd_hf.version", "rrd_hf.models", "rrd_hf.methods"),
    ("rrd_hf.data",),
    ("rrd_hf.classifiers",),
    ("rrd_hf.evaluation", "rrd_hf.runs"),
    ("rrd_hf.hub",),
    ("rrd_hf.training",),
    ("rrd_hf.commands",),
    ("rrd_hf.train",),  # `python -m rrd_hf.train`, the module `accelerate launch` starts
)


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported_modules(name: str, path: pathlib.Path, known: dict) -> set[str]:
    """rrd_hf modules that `name` imports anywhere in its source: at the top and inside functions (those run later
    but still tie the two modules together), `TYPE_CHECKING` blocks excepted."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and getattr(block.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(block)}
    targets = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known}
            targets.update(submodules)
            if target in known and (node.module or len(submodules) < len(node.names)):
                targets.add(target)  # `from . import submodule` alone does not import names of the package
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name in known)
    return {t for t in targets if t != name}


def layer_of(module: str) -> tuple[int, str] | None:
    for index, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return index, package
    return None


def test_every_module_belongs_to_a_layer():
    unplaced = [name for name in modules() if name != "rrd_hf" and layer_of(name) is None]
    assert not unplaced, f"place these in a package of LAYERS (or add their package to it): {unplaced}"


def test_layers_import_only_downwards_inside_functions_too():
    known = modules()
    wrong = []
    for name, path in known.items():
        if name == "rrd_hf":
            continue
        layer, package = layer_of(name)
        for target in imported_modules(name, path, known):
            if target == "rrd_hf":
                wrong.append(f"{name} imports the package root")
                continue
            target_layer, target_package = layer_of(target)
            if target_package != package and target_layer >= layer:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle_between_modules_inside_functions_too():
    known = modules()
    # A package importing its own submodules is how packages are built, not a cycle.
    graph = {name: {t for t in imported_modules(name, path, known) if not t.startswith(name + ".")}
             for name, path in known.items()}
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


def test_function_level_imports_are_read(tmp_path):
    """The reader the checks above rely on sees an import inside a function, relative or absolute."""
    low, high = tmp_path / "a.py", tmp_path / "b.py"
    low.write_text("def f():\n    from ..training import trainer\n    import rrd_hf.hub\n", encoding="utf-8")
    high.write_text("from ..data import a\n", encoding="utf-8")
    known = {"rrd_hf.data.a": low, "rrd_hf.training.trainer": high, "rrd_hf.training": None, "rrd_hf.hub": None}
    assert imported_modules("rrd_hf.data.a", low, known) == {"rrd_hf.training", "rrd_hf.training.trainer", "rrd_hf.hub"}
    assert layer_of("rrd_hf.training.trainer")[0] > layer_of("rrd_hf.data.a")[0]


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

    trainer = modules()["rrd_hf.training.trainer"].read_text(encoding="utf-8")
    code = "\n".join(line.split("#")[0] for line in trainer.splitlines())
    named = sorted(m for m in METHODS if m != "rrd" and (f'"{m}"' in code or f"'{m}'" in code or f".{m.upper()}" in code))
    assert not named, f"the trainer names methods {named}: it must only loop over the objective's terms"


def test_no_private_framework_api_nor_hardware_branch_in_the_package():
    """The library takes no private path through torch/Python internals and makes no decision by CPU vendor."""
    forbidden = ("torch.ops.mkldnn._", "getrefcount", "_use_count", "_storage_Use_Count", "/proc/cpuinfo",
                 "GenuineIntel", "AuthenticAMD", "_set_params_and_buffers_to_ignore", "gc.freeze", "gc.disable",
                 "mallopt")
    allowed = {"rrd_hf.commands.process": ("gc.freeze", "mallopt"),  # the command line tunes its own processes
               "rrd_hf.runs.record": ("/proc/cpuinfo",)}  # names the CPU in the run record; decides nothing
    found = [f"{name}: {word}" for name, path in modules().items() for word in forbidden
             if word in path.read_text(encoding="utf-8") and word not in allowed.get(name, ())]
    assert not found, found
