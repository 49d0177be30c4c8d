"""The house rules of docs/architecture.md, checked: what may import what, no import cycle,
no file over 400 lines and no function over 80, and the report's viewer script parses."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "tokenprobe"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60

# the layers, lowest first: a module may import its own layer and those below, never above
LAYERS = [
    {"errors", "stats", "files", "registry"},
    {"model", "text", "data", "checkpoint", "journal", "provenance"},
    {"runner", "prefix", "executors", "heatmap", "results", "rowset", "tuned", "sae"},
    {"analyses.base", "loading"},
    {"analyses.*"},  # each analysis's folder; never another analysis's
    {"analyses", "report"},
    {"cli", "_start"},
    {"__init__"},
]


def _module(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    """The layer unit a module belongs to: a top module, a package, or one analysis."""
    parts = module.split(".")
    if parts[0] == "analyses":
        if len(parts) == 1:
            return "analyses"
        if parts[1] in (
            "base",
            "option",
            "settings",
        ):  # what every analysis declares, and its settings
            return "analyses.base"
        return f"analyses.{parts[1]}"
    return parts[0]


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer or (
            unit.startswith("analyses.") and unit != "analyses.base" and "analyses.*" in layer
        ):
            return i
    raise AssertionError(f"{unit} is in no layer: add it to LAYERS and docs/architecture.md")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported tokenprobe module, at module level?) of every import outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = _module(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                elif child.module and child.module.startswith("tokenprobe"):
                    target = child.module.removeprefix("tokenprobe").lstrip(".")
                else:
                    continue
                names = [a.name for a in child.names if a.name != "__version__"]
                for name in names:  # `from . import model` imports a module
                    sub = f"{target}.{name}" if target else name
                    if (SRC / sub.replace(".", "/")).with_suffix(".py").exists() or (
                        SRC / sub.replace(".", "/")
                    ).is_dir():
                        found.append((sub, top))
                    else:
                        found.append((target or "__init__", top))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("tokenprobe."):
                        found.append((alias.name.removeprefix("tokenprobe."), top))
            is_scope = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            visit(child, top and not is_scope)

    visit(tree, True)
    return found


FILES = sorted(SRC.rglob("*.py"))


def test_imports_follow_the_layers():
    wrong = []
    for path in FILES:
        me = _unit(_module(path))
        for target, _ in _imports(path):
            other = _unit(target)
            if other == me or (me == "__init__"):
                continue
            if other == "__init__":  # `from .. import __version__` is not counted
                wrong.append(f"{_module(path)} imports the package root")
                continue
            if (
                me.startswith("analyses.")
                and other.startswith("analyses.")
                and "analyses.base" not in (me, other)
            ):
                wrong.append(f"{_module(path)} imports another analysis ({target})")
            elif _layer(other) > _layer(me):
                wrong.append(
                    f"{_module(path)} (layer {_layer(me)}) imports {target} (layer {_layer(other)})"
                )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    """No circle, whether the imports are at module level or inside functions (those for type
    checkers only aside): a lazy import inside a function is still a circle of knowledge."""
    graph: dict[str, set[str]] = {}
    for path in FILES:
        graph[_module(path)] = {t for t, _ in _imports(path) if t != _module(path)}
    seen: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(nxt) :], nxt]))
            if nxt not in seen:
                walk(nxt, [*stack, nxt])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            walk(node, [node])


def test_files_and_functions_stay_small():
    big = []
    for path in FILES:
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > MAX_FILE_LINES:
            big.append(f"{path.relative_to(SRC)}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    big.append(f"{path.relative_to(SRC)}: {node.name}() {length} lines")
    assert not big, "\n".join(big)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_viewer_script_parses():
    script = SRC / "report" / "viewer.js"
    done = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_package_imports_its_names_on_first_use():
    """`import tokenprobe` waits for no torch (the command's Ctrl-C window is short); every
    public name resolves; a saved result's kind is found with nothing else imported first."""
    code = (
        "import sys, tokenprobe\n"
        "assert 'torch' not in sys.modules, 'import tokenprobe imported torch'\n"
        "assert sorted(set(tokenprobe.__all__) - {'__version__'}) == sorted(tokenprobe._WHERE)\n"
        "from tokenprobe import registry\n"
        "assert registry.by_kind('trace').name == 'trace'\n"
        "assert all(getattr(tokenprobe, n) is not None for n in tokenprobe.__all__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
