"""The config travels down the build chain once, in typed sections (tikmix/config.py's dataclasses).

tikmix/run.py turns the composed config into a :class:`~tikmix.config.RunConfig` (``typed_run``) and hands each
builder its own section. Below it no function takes or reads a DictConfig: no module of the suite names
``DictConfig`` / ``ListConfig`` (an annotation, a string annotation, an import, an ``isinstance``), so nothing can
take one by its type or test for one, except

- DOORS: the modules where a composed config enters (the run, the conversion itself, the other entry points);
- ALLOWED: (module, function) pairs, each with why it still turns a composed node into plain values.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tikmix", "eval", "baselines", "sweeps")
OMEGA_TYPES = {"DictConfig", "ListConfig"}
DOORS = {
    "tikmix/run.py": "the build chain's door: the composed config becomes the typed RunConfig here",
    "tikmix/config.py": "the conversion itself (typed, validate)",
    "eval/__main__.py": "python -m eval: an entry point composing its own config",
    "tikmix/console.py": "writes Hydra's own .hydra/ record of the composed config",
    "tikmix/cli.py": "Hydra's composition errors, before any config exists",
}
ALLOWED: dict[tuple[str, str], str] = {}


def uses(source: str) -> list[tuple[str, int]]:
    """(enclosing function or "<module>", line) of every mention of an OmegaConf container type in ``source``."""
    tree = ast.parse(source)
    owner: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(node):  # the outermost function: ast.walk meets it first
                if n is not node:
                    owner.setdefault(id(n), node.name)
    for node in ast.walk(tree):  # a function's own annotations belong to it
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in [*ast.walk(node.args), *(ast.walk(node.returns) if node.returns else [])]:
                owner[id(n)] = node.name
    out = []
    for node in ast.walk(tree):
        hit = (
            (isinstance(node, ast.Name) and node.id in OMEGA_TYPES)
            or (isinstance(node, ast.Attribute) and node.attr in OMEGA_TYPES)
            or (isinstance(node, ast.alias) and node.name.split(".")[-1] in OMEGA_TYPES)
            or (isinstance(node, ast.Constant) and isinstance(node.value, str) and _annotation_names(node.value))
        )
        if hit:
            out.append((owner.get(id(node), "<module>"), getattr(node, "lineno", 0)))
    return out


def _annotation_names(text: str) -> bool:
    """A string annotation ("DictConfig | None") naming an OmegaConf type (docstrings and messages are prose)."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Name) and n.id in OMEGA_TYPES for n in ast.walk(tree))


def test_below_the_run_no_function_takes_or_reads_a_dictconfig():
    bad, allowed_seen = [], set()
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            rel = p.relative_to(REPO).as_posix()
            if rel in DOORS:
                continue
            for fn, line in uses(p.read_text()):
                if (rel, fn) in ALLOWED:
                    allowed_seen.add((rel, fn))
                else:
                    bad.append(f"{rel}:{line} ({fn})")
    assert bad == [], "a function below tikmix/run.py names DictConfig/ListConfig: take the typed section instead"
    assert allowed_seen == set(ALLOWED), "an allowed exception is gone: drop it from ALLOWED"


def test_the_check_finds_each_way_of_taking_a_dictconfig():
    assert uses("from omegaconf import DictConfig\n") == [("<module>", 1)]
    assert [f for f, _ in uses("def f(cfg: DictConfig) -> int:\n    return cfg.x\n")] == ["f"]
    assert [f for f, _ in uses("def f(cfg: 'DictConfig | None'):\n    pass\n")] == ["f"]
    assert [f for f, _ in uses("import omegaconf\ndef g(c):\n    return isinstance(c, omegaconf.ListConfig)\n")] == [
        "g"
    ]
    assert uses('def f(cfg: "ModelConfig"):\n    """Not a DictConfig."""\n') == []
