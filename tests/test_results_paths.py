"""Published results name paths relative to the repository, never the machine that made them ([5 of 6] case 9)."""

from __future__ import annotations

import re

from tests.conftest import REPO

ABSOLUTE = re.compile(r"(?<![\w.])/(?:work|root|home|tmp|Users|mnt|var)/[^\s`'\")\]]+")


def test_no_results_file_names_an_absolute_path_of_a_machine():
    found = []
    for p in sorted((REPO / "results").rglob("*")):
        if p.is_file() and p.suffix in (".md", ".json", ".csv", ".yaml"):
            for m in ABSOLUTE.finditer(p.read_text(errors="replace")):
                found.append(f"{p.relative_to(REPO)}: {m.group(0)}")
    assert not found, found[:10]
