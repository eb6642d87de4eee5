"""The module graph of the suite's own packages: no import cycles, and imports at the top of each module.

A cycle between modules (tikmix.report and eval.tables once imported each other inside functions) hides which
module builds on which; an import inside a function hides a module's dependencies from its reader. An exception
would be named in LAZY_ALLOWED with its reason; there is none.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tikmix", "eval", "baselines", "sweeps")
# (importing module, imported module): why the import sits inside a function
LAZY_ALLOWED: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    out = {"train": REPO / "train.py"}
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            parts = p.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported module of ours, inside a function?) for every import statement of a file."""
    tree = ast.parse(path.read_text())
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        for n in names:
            if n.split(".")[0] in PACKAGES and n in known:
                out.append((n, id(node) in nested))
    return out


def _graph(lazy: bool) -> dict[str, set[str]]:
    mods = _modules()
    g: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for dep, inside in _imports(p, set(mods)):
            if dep != m and (lazy or not inside):
                g[m].add(dep)
    return g


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_module_graph_has_no_cycle():
    g = _graph(lazy=True)
    for a, b in LAZY_ALLOWED:
        g[a].discard(b)
    assert _cycle(g) is None, f"import cycle: {' -> '.join(_cycle(g))}"


def test_imports_of_our_modules_sit_at_the_top_unless_named():
    mods = _modules()
    lazy = sorted((m, dep) for m, p in mods.items() for dep, inside in _imports(p, set(mods)) if inside)
    assert [x for x in lazy if x not in LAZY_ALLOWED] == []
    assert set(lazy) == set(LAZY_ALLOWED), "an allowed exception is gone: drop it from LAZY_ALLOWED"


def test_the_checker_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(g) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# the run's layer (README, "How it is built"): a mixer builds on the framework only and gets its sub-runs from the
# run through its context (ctx.run_subrun, a tikmix.run.SubRunner), never by importing the run
RUN_LAYER = {"tikmix.run", "tikmix.results", "train"}


def _reach(g: dict[str, set[str]], m: str) -> set[str]:
    seen: set[str] = set()
    todo = [m]
    while todo:
        for d in g.get(todo.pop(), ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_no_mixer_builds_on_the_run():
    """Every mixer module, as tikmix.mixer.discover finds them (importlib, entry points), imports nothing of the
    run's layer, directly or through another module (imports inside functions included)."""
    from tikmix import mixer

    mixer.discover()
    g = _graph(lazy=True)
    mods = sorted({cls.__module__ for cls in mixer._REGISTRY.values()} & set(g))
    assert "baselines.regmix" in mods and "baselines.doremi" in mods
    bad = {m: sorted(_reach(g, m) & RUN_LAYER) for m in mods if _reach(g, m) & RUN_LAYER}
    assert bad == {}


def test_the_layer_check_finds_a_planted_import():
    g = {"baselines.x": {"tikmix.mixer"}, "tikmix.mixer": {"tikmix.run"}, "tikmix.run": set()}
    assert _reach(g, "baselines.x") & RUN_LAYER == {"tikmix.run"}
