"""The layering of ARCHITECTURE.md, checked on the source: lower layers never import upper ones.

Every import counts: the ones inside functions too, and `importlib.import_module` of a
module named by a string in the file. Each module of `tf_minilm`, `export` and `serving`
has a layer (`LAYERS`, longest matching prefix; the lazy package fronts `FRONTS` are above
everything, so nothing in the packages may import them); a module may import modules of
its own layer or below, and the module graph has no cycle, so no module reaches up to one
that uses it. Every module's first docstring says what it owns and what it imports, and
its `Imports:` paragraph is checked against the real imports both ways: every project
module it imports is named there (or its sub-package is), and every project module or
sub-package named there is imported.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("tf_minilm", "export", "serving")

# (module prefix, layer); the longest matching prefix wins. Keep in step with ARCHITECTURE.md.
LAYERS = (
    ("tf_minilm", 0),  # the sub-package markers (the front itself is in FRONTS)
    ("tf_minilm.constants", 0),
    ("tf_minilm.fileio", 0),
    ("tf_minilm.versions", 0),
    ("tf_minilm.argtypes", 0),
    ("tf_minilm.provenance", 0),
    ("tf_minilm.rules", 0),
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


# The lazy public fronts (`from tf_minilm import Distiller`): they import anything, by name.
FRONTS = ("tf_minilm", "export", "serving")
FRONT_LAYER = 9


def layer_of(module: str) -> int:
    if module in FRONTS:
        return FRONT_LAYER
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
    """Project modules imported anywhere in `path` (`from pkg import module` resolved), and
    those named by a string in a file that calls `importlib.import_module`."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names
                      if alias.name.split(".")[0] in PACKAGES}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            dynamic = True
    if dynamic:
        found |= {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                  and isinstance(node.value, str) and node.value in known
                  and node.value not in FRONTS}  # "export" is also a command's name
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


def _named_in_imports(doc: str) -> set[str]:
    """The project modules and sub-packages a docstring's `Imports:` paragraph names in
    backticks (`distill.config`, `tf_minilm.constants`, `model` for the sub-package)."""
    text = doc.split("Imports:", 1)[1].split("\n\n", 1)[0]
    named = set()
    for token in re.findall(r"`([A-Za-z_][\w.]*)`", text):
        for candidate in (token, f"tf_minilm.{token}"):
            if candidate in MODULES or any(name.startswith(candidate + ".") for name in MODULES):
                named.add(candidate)
                break
    return named


@pytest.mark.parametrize("module", sorted(n for n, p in MODULES.items()
                                          if p.name != "__init__.py"))
def test_the_imports_line_tells_the_truth(module):
    doc = ast.get_docstring(ast.parse(MODULES[module].read_text(encoding="utf-8"))) or ""
    named = _named_in_imports(doc)
    deps = {dep for dep in GRAPH[module] if dep in MODULES and dep not in FRONTS}

    def covers(name: str, dep: str) -> bool:
        return dep == name or dep.startswith(name + ".")

    unnamed = sorted(dep for dep in deps if not any(covers(name, dep) for name in named))
    stale = sorted(name for name in named if not any(covers(name, dep) for dep in deps))
    assert not unnamed and not stale, (
        f"{module}: its docstring's 'Imports:' line does not match its imports; imported but "
        f"not named: {unnamed}; named but not imported: {stale}")


def test_the_checks_see_function_level_and_importlib_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text('"""Probe.\n\nOwns: nothing. Imports: `data.corpus`, `fileio`.\n"""\n'
                      "import importlib\n\ndef f():\n    from tf_minilm.data import corpus\n"
                      "    return importlib.import_module('tf_minilm.distill.job')\n")
    found = imports(source, set(MODULES))
    assert found == {"tf_minilm.data.corpus", "tf_minilm.distill.job"}
    named = _named_in_imports(ast.get_docstring(ast.parse(source.read_text())))
    assert named == {"tf_minilm.data.corpus", "tf_minilm.fileio"}  # fileio: named, not imported
