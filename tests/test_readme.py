"""Every command README.md shows, checked: README.md is read when the tests are collected, so a command added
or edited there is checked without touching this file.

Commands are taken from code blocks (indented or fenced) and from inline code that starts with a program
name. Each ``train.py`` command (python, .venv/bin/python, torchrun) is composed by Hydra with its overrides,
every value of a sweep (``a,b``) and of a sweep preset's sweeper params included: the config-composition
check, a few milliseconds each. A few run end to end at smoke scale (the tests' smoke overrides appended, a
tmp run dir, logger=none): the first ``MAX_RUNS`` train.py commands that need nothing but this machine, then
``python -m eval <run dir>`` and ``python -m eval.tables`` on what they wrote. The bad-input examples (``$ ``
lines followed by their ``error:`` line) run and must print that line (``...`` stands for any text).
Commands that need a GPU, the hub, apt-get, the user's files or more than seconds are skipped with the
reason given by ``SKIPS``; a command no rule covers fails, so every new kind of command gets a decision.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import CONF, REPO, compose

README = REPO / "README.md"
# the findings moved to results/README.md (every table's regeneration commands): checked the same way
READMES = (README, REPO / "results" / "README.md")
PROGRAMS = ("python ", ".venv/bin/python ", "torchrun ", "bash ", "apt-get ", "lm_eval ")
MAX_RUNS = 2  # train.py commands run end to end (each ~5-10 s with its smoke evaluation); the rest are composed

# (pattern searched in the command, why it is not run or composed)
SKIPS = [
    (r"^bash \.ci/install", "installs the suite (network, minutes); CI itself runs it"),
    (r"^apt-get ", "installs Debian packages"),
    (r"-m pytest", "the test suite itself"),
    (r"tests/benchmarks/", "a benchmark script (minutes, measured by hand)"),
    (r"-m tikmix\.data\.local_corpus", "reads files that apt-get installs (fortunes, dict-gcide, python3.11-doc)"),
    (r"^lm_eval ", "lm-eval's own command line, shown as an alternative; names no tasks"),
    (r"-m eval\.tables (?!<)", "reads a sweep dir that a sweep of minutes writes (outputs/, multirun/)"),
    (r"^torchrun$", "the program's name, not a command"),
    (
        r"-m eval\.oracle\b",
        "reads the oracle's sweep folders (hours of runs); tests/test_oracle.py runs select and report on a planted sweep",
    ),
    (
        r"-m eval\.schedule_oracle\b",
        "trains or reads a schedule oracle (an hour of runs); tests/test_schedule.py runs it on a planted problem",
    ),
    (
        r"-m eval\.transfer\b",
        "reads the scale sweep's folders (hours of runs); tests/test_transfer.py runs it on planted runs",
    ),
    (r"train\.py --help$", "Hydra's help, not a run; tests/test_help.py checks what it lists"),
    (
        r"-m sweeps\.sensitivity\b",
        "reads the sensitivity sweep's folders (22 min of runs); tests/test_sensitivity.py runs it on planted runs",
    ),
    (
        r"^python -m eval( …|$)",
        "prose naming the re-scoring command; its full form (python -m eval <run dir> ...) runs below",
    ),
]
# bad-input examples that refer to the user's files, which README does not create; the same errors are cases
# of tests/test_bad_inputs.py
USER_FILES = ("/data/", "my_tasks", "outputs/run_of_")


@dataclass
class Command:
    line: int
    text: str
    expect_error: str | None = None  # the `error:` line README prints under a `$ ` command
    args: list[str] = field(default_factory=list)
    file: str = "README.md"

    @property
    def id(self) -> str:
        where = "" if self.file == "README.md" else f"{self.file}:"
        return f"{where}L{self.line}:{self.text[:60]}"


def _split(text: str) -> list[str]:
    """A shell line without its comment, split at `&&` into commands."""
    text = re.sub(r"\s+#\s.*$", "", text.strip())
    return [c.strip() for c in text.split("&&") if c.strip()]


def readme_commands() -> list[Command]:
    out: list[Command] = []
    for path in READMES:
        name = str(path.relative_to(REPO))
        out += [Command(c.line, c.text, c.expect_error, c.args, name) for c in _commands_of(path)]
    return out


def _commands_of(path: Path) -> list[Command]:
    lines = path.read_text().splitlines()
    out: list[Command] = []
    fenced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        body = line.strip()
        if fenced or (line.startswith("    ") and body):
            prompt = body.startswith("$ ")
            body = body[2:] if prompt else body
            if body.startswith(PROGRAMS):
                nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
                for c in _split(body):
                    out.append(Command(i + 1, c, nxt if prompt and nxt.startswith("error:") else None))
            continue
        for span in re.findall(r"`([^`]+)`", line):
            if span.startswith(PROGRAMS) or span == "torchrun":
                out += [Command(i + 1, c) for c in _split(span)]
    return out


def _train_args(cmd: str) -> list[str] | None:
    """The Hydra overrides of a train.py command (placeholders filled, `-m` and `...` dropped); None if not one."""
    cmd = re.sub(r"<[^<>]*>", "/tmp/readme-placeholder", cmd.replace("…", "..."))
    toks = shlex.split(cmd)
    if not any(t.endswith("train.py") for t in toks):
        return None
    args = toks[[t.endswith("train.py") for t in toks].index(True) + 1 :]
    return [a for a in args if a not in ("-m", "--multirun", "...")]


def skip_reason(c: Command) -> str | None:
    for pattern, why in SKIPS:
        if re.search(pattern, c.text):
            return why
    if c.expect_error and any(p in c.text for p in USER_FILES):
        return "a bad-input example about the user's own files; tests/test_bad_inputs.py has the same case"
    return None


COMMANDS = readme_commands()


def test_readme_has_commands_and_each_is_checked_or_skipped_with_a_reason():
    assert len(COMMANDS) > 20 and any(c.text.startswith("python train.py") for c in COMMANDS)
    undecided = [
        c.id
        for c in COMMANDS
        if skip_reason(c) is None
        and _train_args(c.text) is None
        and not re.match(r"python -m eval(\.tables)? <", c.text)
    ]
    assert not undecided, f"README commands no rule covers (add a check or a SKIPS entry): {undecided}"


SKIPPED = [c for c in COMMANDS if skip_reason(c)]


@pytest.mark.parametrize("cmd", SKIPPED, ids=[c.id for c in SKIPPED])
def test_readme_command_not_run_here(cmd):
    """Listed, with why, in the test report (pytest -rs)."""
    pytest.skip(skip_reason(cmd))


# ------------------------------------------------------------------------------ composition, every command
def _values(override: str) -> list[str] | None:
    """The values a multirun takes for one override (a range: its first and last), None if it is not a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    o = OverridesParser.create().parse_override(override)
    if not o.is_sweep_override():
        return None
    vals = list(o.sweep_string_iterator())
    return [vals[0], vals[-1]] if "range(" in override else vals


def _variants(args: list[str]) -> list[list[str]]:
    """The override lists a multirun would compose: each sweep's values, one at a time, the others at their first."""
    vals = [_values(a) for a in args]
    key = [a.split("=", 1)[0] for a in args]
    first = [a if v is None else f"{k}={v[0]}" for a, k, v in zip(args, key, vals)]
    out = [first]
    for i, v in enumerate(vals):
        out += [first[:i] + [f"{key[i]}={x}"] + first[i + 1 :] for x in (v or [])[1:]]
    return out


@functools.lru_cache(maxsize=None)
def _compose(overrides: tuple[str, ...]) -> dict:
    """The composed config (Hydra's section included) as a container; commands README repeats compose once."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from tikmix.mixer import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = hcompose(
                config_name="config", overrides=[*overrides, "run_dir=/tmp/readme"], return_hydra_config=True
            )
    finally:
        GlobalHydra.instance().clear()
    out = OmegaConf.to_container(cfg, resolve=False)
    job = {k: v for k, v in out.items() if k != "hydra"}
    OmegaConf.to_container(OmegaConf.create(job), resolve=True)  # every interpolation resolves, as run() demands
    return out


def _compose_all(args: list[str]) -> int:
    """Compose every variant of a command and, for a sweep preset, its sweeper params: at their first values, and
    every value of a config group (+sweep=compare: every mixer). Returns how many configs were composed."""
    n = 0
    for ov in _variants(args):
        params = _compose(tuple(ov))["hydra"]["sweeper"].get("params") or {}
        vals = {k: _values(f"{k}={v}") or [str(v)] for k, v in params.items()}
        first = [f"{k}={v[0]}" for k, v in vals.items()]
        _compose(tuple(ov + first))
        for i, (k, v) in enumerate(vals.items()):
            for x in v[1:] if (CONF / k).is_dir() else []:
                _compose(tuple(ov + first[:i] + [f"{k}={x}"] + first[i + 1 :]))
                n += 1
        n += 1
    return n


COMPOSE = [c for c in COMMANDS if skip_reason(c) is None and _train_args(c.text) is not None and not c.expect_error]


@pytest.mark.parametrize("cmd", COMPOSE, ids=[c.id for c in COMPOSE])
def test_readme_train_command_composes(cmd):
    assert _compose_all(_train_args(cmd.text)) >= 1


# ------------------------------------------------------------------------------ a few, end to end
LOCAL_ONLY = re.compile(
    r"(^|\s)(-m|\+sweep=|data\.root=|data=(?!synthetic)|weights_file=|proxies=|model=(?!tiny\b)|"
    r"budget=(?!smoke\b|demo\b)|hydra/launcher=)"
)


def _runnable() -> list[Command]:
    """The first MAX_RUNS distinct train.py commands that need nothing but this machine and seconds."""
    seen, out = set(), []
    for c in COMPOSE:
        if c.text.startswith("torchrun") or LOCAL_ONLY.search(c.text):
            continue
        key = tuple(a for a in _train_args(c.text) if not a.startswith(("hydra.run.dir=", "logger=")))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out[:MAX_RUNS]


RUNS = _runnable()


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return tmp_path_factory.mktemp("readme_runs")


def _smoke_args(smoke_overrides: list[str]) -> list[str]:
    # the command's own evaluation is kept (budget=smoke limits it): drop the tests' eval=none
    return [o for o in smoke_overrides if not o.startswith("eval=")] + ["trainer.save_final_model=true"]


@pytest.mark.parametrize("cmd", RUNS, ids=[c.id for c in RUNS])
def test_readme_train_command_runs_at_smoke_scale(cmd, smoke_overrides, runs_root):
    from tikmix.run import run

    args = [a for a in _train_args(cmd.text) if not a.startswith("hydra.run.dir=")]
    res = run(compose(args + _smoke_args(smoke_overrides) + [f"run_dir={runs_root / f'L{cmd.line}'}"]), quiet=True)
    assert res["steps"] == 8 and (runs_root / f"L{cmd.line}" / "results.json").exists()


@pytest.fixture(scope="module")
def finished_run(smoke_overrides, runs_root) -> Path:
    from tikmix.run import run

    rd = runs_root / f"L{RUNS[0].line}" if RUNS else runs_root / "default"
    if not (rd / "results.json").exists():  # run on its own (-k) or no runnable command: make one
        run(compose(_smoke_args(smoke_overrides) + [f"run_dir={rd}"]), quiet=True)
    return rd


RESCORE = [c for c in COMMANDS if re.match(r"python -m eval <", c.text)]
TABLES = [c for c in COMMANDS if re.match(r"python -m eval\.tables <", c.text)]


@pytest.mark.parametrize("cmd", RESCORE, ids=[c.id for c in RESCORE])
def test_readme_rescore_command_runs(cmd, finished_run):
    from eval.__main__ import main

    args = shlex.split(re.sub(r"<[^<>]*>", str(finished_run), cmd.text))[3:]
    limit = [] if any(a.startswith("eval.limit=") for a in args) else ["eval.limit=20"]  # smoke scale
    assert main(args + limit) == 0


@pytest.mark.parametrize("cmd", TABLES, ids=[c.id for c in TABLES])
def test_readme_tables_command_runs(cmd, finished_run, runs_root, tmp_path):
    from eval.tables import main

    text = re.sub(r"\[--out DIR\]", f"--out {tmp_path}", re.sub(r"<[^<>]*>", str(runs_root), cmd.text))
    args = [a for a in shlex.split(re.sub(r"\[[^\]]*\]", "", text))[3:]]
    args += [] if "--out" in args else ["--out", str(tmp_path)]  # not into the runs' folder, which others read
    assert main(args) == 0 and (tmp_path / "perplexity.md").exists()


# ------------------------------------------------------------------------------ the bad-input examples
BAD = [c for c in COMMANDS if c.expect_error and skip_reason(c) is None]


def _fragments_in_order(expected: str, actual: str) -> bool:
    pos = 0
    for frag in re.split(r"\.\.\.|…", expected):
        at = actual.find(frag.strip() if frag.strip() else frag, pos)
        if at < 0:
            return False
        pos = at + len(frag.strip())
    return True


@pytest.mark.parametrize("cmd", BAD, ids=[c.id for c in BAD])
def test_readme_bad_input_example_prints_its_error_line(cmd, smoke_overrides, tmp_path, capsys):
    from tikmix.cli import hydra_error_line
    from tikmix.run import main

    try:
        cfg = compose(_train_args(cmd.text) + smoke_overrides + [f"run_dir={tmp_path / 'run'}"])
    except Exception as e:  # noqa: BLE001 - Hydra's own errors: train.py prints hydra_error_line
        line = f"error: {hydra_error_line(e)}"
    else:
        with pytest.raises(SystemExit) as ex:
            main(cfg)
        assert ex.value.code == 2
        line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("error:"))
    assert _fragments_in_order(cmd.expect_error, line), f"README: {cmd.expect_error}\nnow:    {line}"
