"""The import structure: no cycle among gpunn's modules, and the kernels below the library.

Every module's imports are read with ``ast`` (nothing is imported): ``import`` and
``from ... import`` statements anywhere in the file, those inside functions included,
and ``importlib.import_module(...)`` / ``__import__(...)`` calls, whose target must be
readable (a string, or an f-string whose fixed prefix names the modules it may load).
An edge goes to the module named (``from gpunn import cli`` names ``gpunn.cli``), not to
the packages above it.  ``kernels/`` is installed as ``gpunn.kernels``.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"gpunn": ROOT / "gpunn", "gpunn.kernels": ROOT / "kernels"}


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of gpunn and gpunn.kernels (a ``gpunn/kernels/``
    folder in the checkout only points the package at ``kernels/``: it is that package)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            if package == "gpunn" and path.is_relative_to(ROOT / "gpunn" / "kernels"):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _dynamic_target(call: ast.Call, where: str) -> list[str]:
    """The module names an ``import_module``/``__import__`` call may load: its literal, or the
    fixed prefix of an f-string (``f"gpunn.kernels.{name}"`` -> ``gpunn.kernels.``)."""
    arg = call.args[0] if call.args else None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return [arg.values[0].value + "*"]
    raise AssertionError(f"{where}: an import whose target cannot be read from the source")


def _is_dynamic_import(node: ast.Call) -> bool:
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    return name in ("import_module", "__import__")


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The gpunn modules that module ``name`` imports, anywhere in its source."""
    package = name if _is_package(path) else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            targets += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                full = f"{base}.{a.name}"
                targets.append(full if full in known else base)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            targets += _dynamic_target(node, where)
    out = set()
    for t in targets:
        if t.endswith("*"):
            out |= {m for m in known if m.startswith(t[:-1])}
            continue
        while t and t not in known:  # "import gpunn.backend.ops" names a module; "numpy.linalg" none of ours
            t = t.rpartition(".")[0]
        if t:
            out.add(t)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_reader_sees_every_kind_of_import():
    """The parser itself, on the imports this repository uses."""
    graph = import_graph()
    assert "gpunn.instrument" in graph["gpunn.train"]  # at the top of the module
    assert "gpunn.train" in graph["gpunn.profile"]  # inside a function
    assert "gpunn.kernels.softmax" in graph["gpunn.ptx"]  # importlib.import_module(f"gpunn.kernels.{name}")
    assert "gpunn.kernels.launch" in graph["gpunn.kernels.softmax"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_gpunn_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_kernels_import_nothing_from_gpunn():
    graph = import_graph()
    up = {f"{m} -> {t}" for m, targets in graph.items() if m.startswith("gpunn.kernels")
          for t in targets if not t.startswith("gpunn.kernels")}
    assert not up, "kernels/ imports gpunn: " + ", ".join(sorted(up))
