"""`python train.py --help` lists the user-facing groups and every user-facing preset, one line each.

The help text is conf/hydra/help/tikmix.yaml; this test reads conf/ and sweeps/ and fails when a preset is
missing from it, or when an internal preset (a base file, a sweep's job mixer) is shown as one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import CONF, REPO

# presets that are parts of others, not choices: the mixers that sweeps run as their jobs (+sweep=regmix_proxies:
# regmix_candidate; +sweep=oracle/oracle_confirm: design)
INTERNAL = {"mixer": {"regmix_candidate", "design"}}


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


def test_help_lists_every_user_facing_preset_once(help_text):
    sections = _sections(help_text)
    for group in ("mixer", "model", "budget", "data", "eval", "logger"):
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
