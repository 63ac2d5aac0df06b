"""The layering of ARCHITECTURE.md, checked on the source: lower layers never import upper ones.

Every import counts, the ones inside functions too. Each module of `tf_minilm`, `export`
and `serving` has a layer (`LAYERS`, first matching prefix); a module may import modules
of its own layer or below, and the module graph has no cycle, so no module reaches up to
one that uses it. Every module's first docstring says what it owns and what it imports.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("tf_minilm", "export", "serving")

# (module prefix, layer); the longest matching prefix wins. Keep in step with ARCHITECTURE.md.
LAYERS = (
    ("tf_minilm", 0),  # the lazy package front and sub-package markers
    ("tf_minilm.constants", 0),
    ("tf_minilm.fileio", 0),
    ("tf_minilm.versions", 0),
    ("tf_minilm.argtypes", 0),
    ("tf_minilm.provenance", 0),
    ("tf_minilm.model.config", 1),
    ("tf_minilm.card", 1),
    ("tf_minilm.tokens", 1),
    ("tf_minilm.schedules", 1),
    ("export.errors", 1),
    ("export.logs", 1),
    ("serving.metrics", 1),
    ("tf_minilm.assets", 2),
    ("tf_minilm.model", 2),
    ("tf_minilm.hf", 3),
    ("serving.runtime", 3),
    ("tf_minilm.data", 4),
    ("tf_minilm.evaluate", 5),
    ("export", 5),
    ("tf_minilm.distill", 6),
    ("serving", 7),
    ("tf_minilm.commands", 8),
    ("tf_minilm.cli", 8),
    ("export.cli", 8),
    ("serving.cli_serve", 8),
    ("serving.cli_bench", 8),
)


def layer_of(module: str) -> int:
    matches = [(len(prefix), layer) for prefix, layer in LAYERS
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} has no layer in LAYERS"
    return max(matches)[1]


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in `path` (`from pkg import module` resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names
                      if alias.name.split(".")[0] in PACKAGES}
    return found


MODULES = modules()
GRAPH = {name: imports(path, set(MODULES)) - {name} for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    upward = sorted(dep for dep in GRAPH[module] if layer_of(dep) > layer_of(module))
    assert not upward, (f"{module} (layer {layer_of(module)}) imports "
                        + ", ".join(f"{dep} (layer {layer_of(dep)})" for dep in upward))


def test_the_module_graph_has_no_cycle():
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, "import cycle: " + " -> ".join(trail + [name])
        state[name] = 1
        for dep in sorted(GRAPH.get(name, ())):
            if dep in MODULES:
                visit(dep, trail + [name])
        state[name] = 2

    for name in sorted(MODULES):
        visit(name, [])


@pytest.mark.parametrize("module", sorted(n for n, p in MODULES.items()
                                          if p.name != "__init__.py"))
def test_first_docstring_says_what_the_module_owns_and_imports(module):
    doc = ast.get_docstring(ast.parse(MODULES[module].read_text(encoding="utf-8"))) or ""
    assert "Owns:" in doc and "Imports:" in doc, (
        f"{module}: the module docstring must say what it owns ('Owns: ...') and what it "
        "may import ('Imports: ...')")


def test_serving_imports_nothing_that_needs_tensorflow():
    """The serving server's closure (batching, server, runtime) stays TF-free by layer."""
    closure, todo = set(), ["serving.server", "serving.batching", "serving.runtime"]
    while todo:
        name = todo.pop()
        if name in closure or name not in MODULES:
            continue
        closure.add(name)
        todo.extend(GRAPH[name])
    heavy = sorted(n for n in closure if layer_of(n) >= 2 and not n.startswith("serving"))
    assert not heavy, f"the server imports {heavy}"
