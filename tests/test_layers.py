"""The package's dependency graph: layers point down only, no import cycles, and the math
core (everything below `tracking`) never imports Ray, MLflow or Optuna.

Read from the source with `ast`, every import counted, at module level or inside a function:
an import deferred into a function is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO

PKG = "drifting_platform"
ROOT = REPO / "platform" / PKG

# a module may import modules of its own rank or below, never above
LAYERS = {
    0: ("config", "rundir", "home", "storage", "encoder_artifact", "rerun", "signals"),
    1: ("drift", "eval", "sampling"),
    2: ("models", "data"),
    # release: the authors' artifacts read into models/ networks; preflight: a config's
    # registry names, paths and devices, checked before a command creates anything
    3: ("release", "encoders", "preflight"),
    4: ("train",),
    5: ("pretrain", "inference"),
    6: ("tracking",),  # the only importer of mlflow
    7: ("reports",),
    8: ("launch",),  # Ray Train / Tune; the only importer of ray
    9: ("cli",),
}
RANK = {name: rank for rank, names in LAYERS.items() for name in names}
ORCHESTRATION = ("ray", "mlflow", "optuna")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _type_checking_only(tree: ast.Module) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(modules of ours, top-level external packages) that module `name` imports."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    ours, external = set(), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name.split(".")[0] == PKG else external).add(alias.name if alias.name.split(".")[0] == PKG else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PKG:
                external.add(target.split(".")[0])
                continue
            for alias in node.names:  # `from . import x` names a submodule when there is one
                sub = f"{target}.{alias.name}"
                ours.add(sub if sub in MODULES else target)
    ours = {m for m in ours if m in MODULES and m != name}
    return ours, external


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    missing = sorted({_layer(m) for m in MODULES if m != PKG and _layer(m) not in RANK})
    assert not missing, f"modules without a layer in LAYERS: {missing}"


def test_layers_point_down():
    wrong = []
    for name, (ours, _) in GRAPH.items():
        if name == PKG:
            continue
        for target in ours:
            if target != PKG and RANK[_layer(target)] > RANK[_layer(name)]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports of a higher layer:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    # Tarjan's strongly connected components over every import
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v][0]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package's __init__ re-exporting its own submodules is not a cycle of ours
            real = [m for m in comp if not any(o.startswith(m + ".") for o in comp)]
            if len(real) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("layer", sorted(n for n, r in RANK.items() if r < RANK["tracking"]))
def test_math_core_imports_no_orchestration(layer):
    found = sorted(
        f"{name} imports {ext}"
        for name, (_, external) in GRAPH.items()
        if _layer(name) == layer
        for ext in external & set(ORCHESTRATION)
    )
    assert not found, found


def test_only_tracking_imports_mlflow_and_only_launch_imports_ray():
    for name, (_, external) in GRAPH.items():
        if "mlflow" in external:
            assert _layer(name) == "tracking", name
        if "ray" in external:
            assert _layer(name) == "launch", name
