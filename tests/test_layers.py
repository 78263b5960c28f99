"""The package's import graph: no cycles (function-level imports included) and the layer rules.

Every module of ``genomamba/`` is parsed with ``ast`` (nothing is imported). An edge A -> B is any
import of B in A: top-level or inside a function, relative imports resolved, ``from pkg.x import y``
counted as an edge to ``pkg.x.y`` when ``y`` is a submodule (else to ``pkg.x``), and
``importlib.import_module("...")`` with a literal name. The parent packages that Python imports
implicitly on the way to a module are not edges.

Layers (README, "Architecture"): data -> tokenizers -> models -> ops are the core, with config and
files; lit and api sit on top; bench and the CLI commands are at the edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import genomamba

PKG_DIR = Path(genomamba.__file__).resolve().parent

CORE = ("genomamba.config", "genomamba.tokenizers", "genomamba.data", "genomamba.models", "genomamba.ops",
        "genomamba.files", "genomamba.errors", "genomamba.parallel", "genomamba.adapters")
EDGE = ("genomamba.commands", "genomamba.bench", "genomamba.__main__")
# layer -> the layers it must never import
FORBIDDEN = {
    **{core: ("genomamba.lit", "genomamba.api") + EDGE for core in CORE},
    "genomamba.lit": ("genomamba.commands", "genomamba.bench"),
    "genomamba.api": ("genomamba.commands", "genomamba.bench"),
}


# ----------------------------------------------------------------------------- the graph


def module_files(pkg_dir: Path, pkg: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``pkg_dir`` (packages by their __init__)."""
    out = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        rel = path.relative_to(pkg_dir).with_suffix("")
        parts = [pkg, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(not p.isidentifier() for p in parts):
            continue
        out[".".join(parts)] = path
    return out


def _known(name: str, modules) -> str | None:
    """``name`` if it is a module, else its longest prefix that is one (a name imported from it)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules, pkg: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import of a module of ``pkg`` in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []

    def add(name: str, line: int) -> None:
        if name == pkg or name.startswith(pkg + "."):
            target = _known(name, modules)
            if target is not None:
                found.append((target, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base, node.lineno)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name == "import_module":
                add(node.args[0].value, node.lineno)
    return found


def import_graph(pkg_dir: Path, pkg: str) -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]]]:
    """(module -> imported modules, (a, b) -> ["file:line", ...] where a imports b)."""
    files = module_files(pkg_dir, pkg)
    graph: dict[str, set[str]] = {m: set() for m in files}
    where: dict[tuple[str, str], list[str]] = {}
    for mod, path in files.items():
        for target, line in imports_of(mod, path, files, pkg):
            if target == mod:
                continue
            graph[mod].add(target)
            where.setdefault((mod, target), []).append(f"{path.relative_to(pkg_dir.parent)}:{line}")
    return graph, where


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; returns every component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


def describe_cycles(graph, where) -> list[str]:
    lines = []
    for comp in strongly_connected(graph):
        members = set(comp)
        lines.append("cycle among " + ", ".join(comp) + ":")
        for a in comp:
            for b in sorted(graph[a] & members):
                lines.append(f"    {a} -> {b}  ({', '.join(where[(a, b)])})")
    return lines


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def layer_violations(graph, where) -> list[str]:
    out = []
    for a in sorted(graph):
        for layer, banned in FORBIDDEN.items():
            if not in_layer(a, layer):
                continue
            for b in sorted(graph[a]):
                if any(in_layer(b, x) for x in banned):
                    out.append(f"{a} -> {b}  ({', '.join(where[(a, b)])}): {layer} must not import {b}")
    return out


# ----------------------------------------------------------------------------- the package


def test_package_has_no_import_cycles():
    graph, where = import_graph(PKG_DIR, "genomamba")
    assert {"genomamba.models.lm", "genomamba.models.io", "genomamba.ops", "genomamba.api"} <= set(graph)
    cycles = describe_cycles(graph, where)
    assert not cycles, "import cycles (lazy imports count too):\n" + "\n".join(cycles)


def test_layers_import_only_downwards():
    graph, where = import_graph(PKG_DIR, "genomamba")
    bad = layer_violations(graph, where)
    assert not bad, "layer rule violations:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_checker_sees_lazy_relative_and_submodule_imports(tmp_path):
    _write(tmp_path, {
        "pk/__init__.py": "from pk.core import thing\n",
        "pk/core/__init__.py": "",
        "pk/core/a.py": "from . import b\n",  # submodule by relative import: edge to pk.core.b
        "pk/core/b.py": "def f():\n    from ..top import g\n",  # lazy, two levels up
        "pk/core/thing.py": "",
        "pk/top.py": "import importlib\n\ndef g():\n    importlib.import_module('pk.core.a')\n"
                     "from pk.core.a import NAME\n",  # a name, not a module: edge to pk.core.a
        "pk/leaf.py": "import pk.core.thing\nimport os\n",  # only the named module, not its parents
    })
    graph, where = import_graph(tmp_path / "pk", "pk")
    assert graph["pk"] == {"pk.core.thing"}
    assert graph["pk.core.a"] == {"pk.core.b"}
    assert graph["pk.core.b"] == {"pk.top"}
    assert graph["pk.top"] == {"pk.core.a"}
    assert graph["pk.leaf"] == {"pk.core.thing"}
    assert where[("pk.core.b", "pk.top")] == ["pk/core/b.py:2"]
    assert strongly_connected(graph) == [["pk.core.a", "pk.core.b", "pk.top"]]
    text = "\n".join(describe_cycles(graph, where))
    assert "pk.core.b -> pk.top  (pk/core/b.py:2)" in text


def test_checker_reports_layer_violations(tmp_path):
    _write(tmp_path, {
        "genomamba/__init__.py": "",
        "genomamba/models/__init__.py": "",
        "genomamba/models/lm.py": "def f():\n    from genomamba.bench import common\n",
        "genomamba/bench/__init__.py": "",
        "genomamba/bench/common.py": "from genomamba.models import lm\n",
        "genomamba/lit/__init__.py": "",
        "genomamba/lit/cli.py": "from genomamba.models.lm import f\n",
        "genomamba/api.py": "import genomamba.lit.cli\n",
    })
    graph, where = import_graph(tmp_path / "genomamba", "genomamba")
    bad = layer_violations(graph, where)
    assert bad == ["genomamba.models.lm -> genomamba.bench.common  (genomamba/models/lm.py:2): "
                   "genomamba.models must not import genomamba.bench.common"]
    assert strongly_connected(graph) == [["genomamba.bench.common", "genomamba.models.lm"]]
