"""`python train.py --help` lists the user-facing groups and every user-facing preset, one line each.

The help text is conf/hydra/help/tikmix.yaml, its mixer lines made from the mixers' classes (tikmix.mixer.help_lines);
this test reads conf/ and sweeps/ and fails when a preset is missing from it, or when an internal preset (a base
file, a sweep's job mixer) is shown as one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONF, REPO
from tikmix.mixer import available, mixer_class

# presets that are parts of others, not choices: the mixers of family "part", e.g. those sweeps run as their jobs
# (+sweep=regmix_proxies: regmix_candidate; +sweep=oracle/oracle_confirm: design)
INTERNAL = {"mixer": {n for n in available() if mixer_class(n).family == "part"}}


@pytest.fixture(scope="module")
def help_text() -> str:
    r = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, WANDB_MODE="disabled"),
    )
    assert r.returncode == 0 and not r.stderr, r.stderr
    return r.stdout


def _sections(text: str) -> dict[str, list[str]]:
    """{group: [preset names]} from the help text: a group line starts at column 0, its presets are indented."""
    out: dict[str, list[str]] = {}
    group = None
    for line in text.splitlines():
        head = re.match(r"^([+a-z/_]+)(\s|$)", line)
        if head:
            group = head.group(1)
            out[group] = []
        elif group and re.match(r"^  (\S+)\s{2,}\S", line):
            out[group].append(line.split()[0])
    return out


def check_mixers_listed(text: str, conf_dirs: list[Path]) -> None:
    """The help's mixer group lists every mixer preset of ``conf_dirs`` (each a conf/ folder) once, none internal."""
    want = {p.stem for d in conf_dirs for p in (d / "mixer").glob("*.yaml")} - INTERNAL["mixer"]
    assert sorted(_sections(text)["mixer"]) == sorted(want)


def test_help_lists_every_user_facing_preset_once(help_text):
    sections = _sections(help_text)
    check_mixers_listed(help_text, [CONF])
    for group in ("model", "budget", "data", "eval", "logger"):
        want = {p.stem for p in (CONF / group).glob("*.yaml")} - INTERNAL.get(group, set())
        assert sorted(sections[group]) == sorted(want), group
    assert sorted(sections["+sweep"]) == sorted(p.stem for p in (REPO / "sweeps" / "sweep").glob("*.yaml"))
    assert {"basic", "joblib", "slurm"} == set(sections["hydra/launcher"])
    assert {"basic", "optuna"} == set(sections["hydra/sweeper"])


def test_help_shows_no_internal_preset_and_marks_defaults(help_text):
    for names in INTERNAL.values():
        for name in names:
            assert not re.search(rf"\b{name}\b", help_text), name
    defaults = [line.split()[0] for line in help_text.splitlines() if "[default]" in line and line.startswith("  ")]
    assert defaults == ["stratified", "tiny", "demo", "synthetic", "wandb", "basic", "basic"]
