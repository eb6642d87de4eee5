"""A run directory keeps Hydra's record of the job (.hydra/) and the console output (console.log).

A run of ``python train.py`` writes <run dir>/.hydra/{config,hydra,overrides}.yaml beside the suite's own
resolved config.yaml, and everything it printed (the eval table and summary included, with logger=none) to
console.log. A command that is refused (here: a checkpoint of another config) leaves both as they were.
"""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.conftest import REPO
from tikmix.console import ConsoleLog, _Tee


def _train(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_run_dir_keeps_hydra_record_and_console_log(smoke_overrides, tmp_path):
    rd = tmp_path / "run"
    args = [
        *smoke_overrides,
        "eval=synthetic9",
        "eval.limit=4",
        "trainer.save_final_model=false",
        f"hydra.run.dir={rd}",
    ]
    r = _train(args)
    assert r.returncode == 0, r.stderr[-3000:]
    hydra_dir = rd / ".hydra"
    assert yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) == args[:-1]  # hydra.* ones: in hydra.yaml
    assert yaml.safe_load((hydra_dir / "hydra.yaml").read_text())["hydra"]["run"]["dir"] == str(rd)
    assert yaml.safe_load((hydra_dir / "config.yaml").read_text())["mixer"]["name"] == "stratified"
    assert (rd / "config.yaml").exists()  # the suite's resolved config stays where it was
    log = (rd / "console.log").read_text()
    for printed in ("[tikmix] mixer=stratified", "[eval] synthetic9 at step 8, limit 4", "average", "results: "):
        assert printed in log and printed in r.stdout, printed
    assert "\r" not in log  # progress-bar redraws keep their last state only
    (rd / "results.json").unlink()  # an unfinished run (its checkpoint kept), which a re-run would resume ...
    before = {p: p.read_bytes() for p in [rd / "console.log", *hydra_dir.iterdir()]}
    bad = _train([*args[:-1], "trainer.weight_decay=0.05", f"hydra.run.dir={rd}"])  # ... but another config: refused
    assert bad.returncode == 2 and "different config" in bad.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_console_log_holds_output_until_attached_and_collapses_redraws(tmp_path, capsys):
    with ConsoleLog() as log:
        print("before the run dir is known")
        sys.stderr.write("bar 1/3\rbar 2/3\rbar 3/3\n")
        log.attach(tmp_path / "console.log")
        print("after")
        sys.stderr.write("no newline at the end")
    assert (tmp_path / "console.log").read_text() == (
        "before the run dir is known\nbar 3/3\nafter\nno newline at the end\n"
    )
    assert "before the run dir is known" in capsys.readouterr().out  # the console still shows everything
    with ConsoleLog():
        print("a refused command")  # never attached: nothing written anywhere
    assert list(tmp_path.iterdir()) == [tmp_path / "console.log"]
    assert not isinstance(sys.stdout, _Tee) and not isinstance(sys.stderr, _Tee)  # the streams are restored


def test_the_console_holds_one_progress_bar_and_no_library_noise(smoke_overrides, tmp_path):
    """[5 of 6] case 7: between the training bar and the evaluation table nothing but the stage's own line: no
    lm-eval bar per task, no "Tokenizing inputs" / "Running loglikelihood requests" bars, no transformers
    "Writing model shards" bar, no matplotlib font-cache message."""
    import subprocess
    import sys

    from tests.conftest import REPO

    args = [o for o in smoke_overrides if not o.startswith("eval=")] + ["eval=synthetic9", "eval.limit=4"]
    r = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, "trainer.progress=true", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    for noise in ("Tokenizing inputs", "Running loglikelihood", "Writing model shards", "fontManager", "it/s]"):
        assert noise not in out, noise
    assert "step/s]" in out and "[eval] synthetic9 at step 8" in out  # the training bar and the stage's one line
