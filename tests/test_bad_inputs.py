"""Bad input, one table: every user error gives one clear line, exit 2, and touches nothing.

Each case names a bad config value, mixture, data file, task folder or checkpoint. The run directory exists
before the command (a sentinel file, and for the checkpoint cases the checkpoint's own files), and so does
the data cache (a built token-shard entry). The test asserts, for every case:

(a) exit code 2;
(b) exactly one stderr line starting with ``error:``, holding the case's distinctive substrings (the field,
    e.g. ``mixer.weights`` / ``data.root`` / ``eval.include_path`` / ``checkpoint``, and what is wrong);
(c) no ``Traceback`` on stderr;
(d) every file of the run directory byte-for-byte as it was, nothing added; the data cache's files as they
    were (a failed build of another entry may leave its empty ``<key>.lock``, the lock file's own name).

Most cases run in-process: the config is composed as the command line composes it (``tests.conftest
.compose``) and handed to ``tikmix.run.main``, the very function train.py's Hydra task calls, which prints
the line and exits. Cases marked ``cli`` run ``python train.py`` for real: Hydra's own errors (an unknown
preset or key, an override it cannot parse), which train.py reports as the same one line, and two runs
that go through the whole entry point (a mixture error, a corrupt checkpoint).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests.conftest import REPO, compose, run_until_crash

# --------------------------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    overrides: list[str]  # may hold {data}, {tasks}: the fixtures' folders
    expect: list[str]  # substrings of the one "error:" line
    files: Callable[[dict], dict[str, bytes]] | None = None  # run-dir files to create first (besides SENTINEL)
    cli: bool = False  # run `python train.py` as a subprocess
    marks: list = field(default_factory=list)
    new_cache: bool = False  # the data is valid for a cache entry (built, complete), the run is refused after


def _ckpt(part: str = "whole", config: bool = True) -> Callable[[dict], dict[str, bytes]]:
    def files(fx: dict) -> dict[str, bytes]:
        ck = fx["other_model"]["checkpoints/last.pt"]
        out = {"checkpoints/last.pt": ck if part == "whole" else ck[: len(ck) // 2]}
        if config:
            out["config.yaml"] = fx["other_model"]["config.yaml"]
        return out

    return files


def _same_ckpt(step: int | None = None, drop: str | None = None) -> Callable[[dict], dict[str, bytes]]:
    """A checkpoint of the cases' own config (so its fingerprint fits), edited: another step, a part removed."""

    def files(fx: dict) -> dict[str, bytes]:
        ck = torch.load(io.BytesIO(fx["same_config"]["checkpoints/last.pt"]), weights_only=True)
        if step is not None:
            ck["step"] = step
        if drop is not None:
            del ck[drop]
        buf = io.BytesIO()
        torch.save(ck, buf)
        return {"checkpoints/last.pt": buf.getvalue(), "config.yaml": fx["same_config"]["config.yaml"]}

    return files


def _raw_ckpt(data: bytes | object) -> Callable[[dict], dict[str, bytes]]:
    def files(fx: dict) -> dict[str, bytes]:
        if isinstance(data, bytes):
            return {"checkpoints/last.pt": data}
        buf = io.BytesIO()
        torch.save(data, buf)
        return {"checkpoints/last.pt": buf.getvalue()}

    return files


FIXED = ["mixer=fixed"]
JSONL = ["data=jsonl", "data.domain_field=domain"]
CUSTOM = ["eval=custom", "eval.tasks=[mytask]"]

CASES = [
    # --- configs: presets and keys (Hydra's errors, reported by train.py) ----------------------------------
    Case(
        "config-unknown-mixer-preset",
        ["mixer=nope"],
        ["config error: mixer: no preset 'nope'", "available: aioli", "tikmix_m"],
        cli=True,
    ),
    Case("config-unknown-model-preset", ["model=huge"], ["config error: model: no preset 'huge'", "tiny"], cli=True),
    Case(
        "config-unknown-key",
        ["trainer.lrr=1"],
        ["config error: trainer.lrr: no such key", "Could not override 'trainer.lrr'"],
        cli=True,
    ),
    Case(
        "config-unparsable-override",
        ["mixer.weights={arith: 0.5"],
        ["config error: mixer.weights: cannot parse the override"],
        cli=True,
    ),
    # --- configs: values --------------------------------------------------------------------------------------
    Case(
        "config-unknown-mixer-name",
        ["mixer.name=nope"],
        ["config error: mixer: unknown mixer 'nope'; available:", "stratified"],
    ),
    Case(
        "config-mixer-param-not-a-number",
        ["mixer=tikmix_m", "mixer.lhs_low=abc"],
        ["mixer.lhs_low: must be a number, got 'abc'"],
    ),
    Case(
        "config-regmix-proxy-model",
        ["mixer=regmix", "mixer.proxy_model.num_heads=3"],
        ["config error: mixer.proxy_model.num_heads: must divide hidden_size=256"],
    ),
    Case(
        "config-model-odd-head-size", ["model.hidden_size=100"], ["model.hidden_size:", "must be even", "100 / 4 = 25"]
    ),
    Case(
        "config-model-layers-not-int", ["model.num_layers=four"], ["model.num_layers: must be an integer, got 'four'"]
    ),
    Case(
        "config-budget-seq-len-over-context",
        ["budget.seq_len=1024"],
        ["budget.seq_len: 1024 exceeds the model's context model.max_position_embeddings=512"],
    ),
    Case(
        "config-budget-total-below-one-batch",
        ["budget.total_tokens=100"],
        ["budget.total_tokens: 100 is smaller than one batch"],
    ),
    Case(
        "config-budget-warmup-frac",
        ["budget.warmup_frac=2"],
        ["budget.warmup_frac: must be a number >= 0 and < 1, got 2"],
    ),
    Case(
        "config-trainer-warmup-steps",
        ["trainer.warmup_steps=-5"],
        ["trainer.warmup_steps: must be an integer >= 0 or null, got -5"],
    ),
    Case(
        "config-budget-stages",
        ["budget.stages=[0.5,1.5]"],
        ["budget.stages: stage boundaries are fractions strictly between 0 and 1"],
    ),
    Case("config-trainer-lr-not-a-number", ["trainer.lr=abc"], ["trainer.lr: must be a number, got 'abc'"]),
    Case(
        "config-trainer-schedule",
        ["trainer.schedule=linear"],
        ["trainer.schedule: unknown 'linear'; allowed: cosine, wsd, constant"],
    ),
    Case(
        "config-trainer-on-nonfinite",
        ["trainer.on_nonfinite=ignore"],
        ["trainer.on_nonfinite: unknown 'ignore'; allowed: stop, skip"],
    ),
    Case(
        "config-trainer-betas",
        ["trainer.betas=[0.9]"],
        ["trainer.betas: must be two numbers [beta1, beta2] in [0, 1), got [0.9]"],
    ),
    Case(
        "config-trainer-val-tokens", ["trainer.val_tokens=-5"], ["trainer.val_tokens: must be an integer >= 1, got -5"]
    ),
    Case(
        "config-unresolvable-interpolation",
        ["trainer.lr=${nosuch.key}"],
        ["trainer.lr: Interpolation key 'nosuch.key' not found"],
    ),
    Case("config-seed", ["seed=abc"], ["config error: seed: must be an integer from 0 to 4294967295, got 'abc'"]),
    Case(
        "config-data-source",
        ["data.source=csv"],
        ["data.source: must be one of synthetic, jsonl, text_dir, hf; got 'csv'"],
    ),
    Case(
        "config-data-unknown-domain",
        ["data.domains=[nosuch]"],
        ["data.domains: unknown domain(s) nosuch; available: arith"],
    ),
    Case(
        "config-targets-unknown-domain", ["targets.domains=[nosuch]"], ["targets.domains: unknown domain(s) ['nosuch']"]
    ),
    Case(
        "config-targets-loss",
        ["targets.loss=tokens"],
        ["config error: targets.loss: unknown 'tokens'; allowed: answer, first_token, margin"],
    ),
    Case(
        "config-seed-out-of-range",
        ["seed=99999999999999999999999"],
        ["config error: seed: must be an integer from 0 to 4294967295"],
    ),
    Case(
        "config-budget-stage-on-the-last-step",
        ["budget.stages=[0.99]"],
        ["budget.stages: boundary 0.99 of a 8-step budget falls on the end, so its stage would be empty"],
    ),
    # --- mixture weights (mixer=fixed) ------------------------------------------------------------------------
    Case(
        "weights-unknown-domain",
        FIXED + ["mixer.weights={arith: 0.5, nosuch: 0.5}"],
        ["config error: mixer.weights: unknown domain(s) ['nosuch']; the data has ['arith', 'boiler'"],
        cli=True,
    ),
    Case(
        "weights-negative",
        FIXED + ["mixer.weights={arith: 1.5, facts: -0.5}"],
        ["mixer.weights.facts: weight must be finite and >= 0, got -0.5"],
    ),
    Case(
        "weights-all-zero",
        FIXED + ["mixer.weights={arith: 0, facts: 0}"],
        ["mixer.weights: weights sum to 0; give at least one domain a positive weight"],
    ),
    Case(
        "weights-sum-not-one",
        FIXED + ["mixer.weights={arith: 0.5, facts: 0.2}"],
        ["mixer.weights: weights sum to 0.7, not 1", "mixer.renormalize=true"],
    ),
    Case(
        "weights-not-a-number",
        FIXED + ["mixer.weights={arith: abc, facts: 0.5}"],
        ["mixer.weights.arith: weight must be a number, got 'abc'"],
    ),
    Case(
        "weights-nan",
        FIXED + ["mixer.weights={arith: nan, facts: 1}"],
        ["mixer.weights.arith: weight must be finite and >= 0, got nan"],
    ),
    Case(
        "weights-a-list",
        FIXED + ["mixer.weights=[0.5,0.5]"],
        ["mixer.weights: expected a mapping domain -> weight, got [0.5, 0.5]"],
    ),
    Case(
        "weights-missing",
        FIXED,
        ["mixer.weights: mixer=fixed needs mixer.weights={domain: weight, ...} or mixer.weights_file=PATH"],
    ),
    Case(
        "weights-file-missing",
        FIXED + ["mixer.weights_file={data}/nope.yaml"],
        ["mixer.weights_file: file not found:", "nope.yaml"],
    ),
    # --- data files --------------------------------------------------------------------------------------------
    Case(
        "data-missing-root",
        JSONL + ["data.root=/nonexistent/corpus"],
        ["config error: data.root: '/nonexistent/corpus' is not an existing folder"],
    ),
    Case(
        "data-empty-folder",
        JSONL + ["data.root={data}/empty"],
        ["no .jsonl/.jsonl.zst/.jsonl.gz files match data.train_files='train/*.jsonl*' under", "empty"],
    ),
    Case(
        "data-invalid-json-line", JSONL + ["data.root={data}/badjson"], ["badjson/train/part0.jsonl:6: not valid JSON"]
    ),
    Case(
        "data-row-without-text",
        JSONL + ["data.root={data}/notext"],
        ["notext/train/part0.jsonl:6: row has no field 'text' (data.text_field)"],
    ),
    Case(
        "data-row-without-domain",
        JSONL + ["data.root={data}/nodomain"],
        ["nodomain/train/part0.jsonl:6: row has no field 'domain' (data.domain_field)"],
    ),
    Case(
        "data-truncated-zst", JSONL + ["data.root={data}/trunc"], ["trunc/train/part0.jsonl.zst: truncated zstd file"]
    ),
    Case(
        "data-unknown-suffix",
        JSONL + ["data.root={data}/csv", "data.train_files=train/part0.csv"],
        ["config error: data.train_files: 'train/part0.csv': supported files are .jsonl, .jsonl.zst, .jsonl.gz"],
    ),
    Case(
        "data-val-split-shorter-than-a-window",
        ["data.synthetic.docs.val.boiler=1", "budget.seq_len=256"],
        ["domain 'boiler' has", "val tokens, fewer than one evaluation window of budget.seq_len+1=257"],
        new_cache=True,
    ),
    Case(
        "data-jsonl-val-one-short-row",
        JSONL + ["data.root={data}/shortval", "data.val_files=val.jsonl", "data.test_files=val.jsonl"],
        ["domain 'code' has", "val tokens, fewer than one evaluation window of budget.seq_len+1=65"],
        new_cache=True,
    ),
    Case(
        "data-lone-surrogate",
        JSONL + ["data.root={data}/surrogate"],
        ["surrogate/train/part0.jsonl:6: field 'text' holds '\\ud800' at character 4, a lone UTF-16 surrogate"],
    ),
    Case(
        "data-text-dir-without-domains",
        ["data=text_dir", "data.root={data}/empty"],
        ["data.root:", "holds no domain folders (source=text_dir wants root/<domain>/**/*.txt)"],
    ),
    # --- task folders (eval=custom) ----------------------------------------------------------------------------
    Case(
        "tasks-missing-include-path",
        CUSTOM + ["eval.include_path=/nonexistent/tasks"],
        ["config error: eval.include_path: /nonexistent/tasks is not a folder"],
    ),
    Case(
        "tasks-folder-without-yaml",
        CUSTOM + ["eval.include_path={tasks}/noyaml"],
        ["config error: eval.include_path:", "noyaml holds no task YAML files"],
    ),
    Case(
        "tasks-malformed-yaml",
        CUSTOM + ["eval.include_path={tasks}/malformed"],
        ["config error: eval.include_path: task file", "malformed/mytask.yaml is not valid YAML"],
    ),
    Case(
        "tasks-yaml-names-missing-data-file",
        CUSTOM + ["eval.include_path={tasks}/missingfile"],
        ["eval task 'mytask': its dataset could not be loaded", "nope_train.jsonl", "missingfile/mytask.yaml"],
    ),
    # --- checkpoints ----------------------------------------------------------------------------------------------
    Case(
        "checkpoint-garbage",
        [],
        ["checkpoint", "last.pt is corrupt or truncated", "delete it to start over"],
        files=_raw_ckpt(b"not a checkpoint"),
        cli=True,
    ),
    Case(
        "checkpoint-empty-file", [], ["checkpoint", "last.pt is corrupt or truncated (EOFError)"], files=_raw_ckpt(b"")
    ),
    Case(
        "checkpoint-truncated",
        [],
        ["checkpoint", "last.pt is corrupt or truncated (RuntimeError: PytorchStreamReader"],
        files=_ckpt("half"),
    ),
    Case(
        "checkpoint-not-tikmix",
        [],
        ["checkpoint", "last.pt is not a tikmix checkpoint of format 1"],
        files=_raw_ckpt({"weights": torch.zeros(3)}),
    ),
    Case(
        "checkpoint-of-another-model",
        [],
        ["holds a checkpoint of a different config: model.hidden_size: 64 there, 128 now"],
        files=_ckpt(),
    ),
    Case(
        "checkpoint-of-another-model-no-config-yaml",
        [],
        [
            "holds a checkpoint of a different config: the model differs: model.embed_tokens.weight [512, 64] there, [512, 128] now"
        ],
        files=_ckpt(config=False),
    ),
    Case(
        "checkpoint-of-another-lr",
        ["model.hidden_size=64", "trainer.lr=1e-4"],
        ["holds a checkpoint of a different config: trainer.lr: 0.003 there, 0.0001 now"],
        files=_ckpt(),
    ),
    Case(
        "checkpoint-step-beyond-the-budget",
        [],
        ["last.pt is inconsistent: it claims step 1000, but this run has 8 steps"],
        files=_same_ckpt(step=1000),
    ),
    Case("checkpoint-without-mixer", [], ["last.pt is inconsistent: it has no mixer"], files=_same_ckpt(drop="mixer")),
    Case(
        "checkpoint-without-scheduler",
        [],
        ["last.pt is inconsistent: it has no scheduler"],
        files=_same_ckpt(drop="scheduler"),
    ),
    # --- a damaged results.json (the run dir's, not a sub-run's: those are re-created) ---------------------------
    Case(
        "rundir-results-json-torn",
        [],
        ["results.json is damaged (JSONDecodeError", "move it away"],
        files=lambda fx: {"results.json": b"{"},
    ),
    Case(
        "rundir-results-json-empty",
        [],
        ["results.json is damaged (JSONDecodeError"],
        files=lambda fx: {"results.json": b""},
    ),
    Case(
        "rundir-results-json-a-list",
        [],
        ["results.json is damaged (a JSON list without the run's compute record)"],
        files=lambda fx: {"results.json": b"[1, 2]"},
    ),
    Case(
        "rundir-results-json-no-compute",
        [],
        ["results.json is damaged (a JSON dict without the run's compute record)"],
        files=lambda fx: {"results.json": b'{"val_loss": {}}'},
    ),
]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def base(smoke_overrides, tmp_path_factory) -> list[str]:
    """The smoke overrides with this module's own data cache, built here (so that it can be hashed cheaply)."""
    from tikmix.data.shards import prepare_data

    cache = tmp_path_factory.mktemp("bad_inputs_cache")
    ov = [o for o in smoke_overrides if not o.startswith("data.cache_dir=")] + [f"data.cache_dir={cache}"]
    prepare_data(compose(ov).data)
    return ov


@pytest.fixture(scope="module")
def fx(base, tmp_path_factory) -> dict:
    """Bad corpora, bad task folders, and the files of an unfinished run of another model (hidden_size 64)."""
    import zstandard

    data = tmp_path_factory.mktemp("bad_corpora")
    rows = [
        json.dumps({"text": f"document {i} about {d} " * 5, "domain": d}) for i in range(60) for d in ("web", "code")
    ]
    for name, lines in {
        "badjson": rows[:5] + ["{not json"] + rows[5:],
        "notext": rows[:5] + [json.dumps({"body": "x", "domain": "web"})] + rows[5:],
        "nodomain": rows[:5] + [json.dumps({"text": "x y z"})] + rows[5:],
        "surrogate": rows[:5] + ['{"text": "abc \\ud800 def", "domain": "web"}'] + rows[5:],
        "shortval": rows,
    }.items():
        (data / name / "train").mkdir(parents=True)
        (data / name / "train" / "part0.jsonl").write_text("\n".join(lines) + "\n")
    (data / "trunc" / "train").mkdir(parents=True)
    blob = zstandard.ZstdCompressor().compress(("\n".join(rows * 4) + "\n").encode())
    (data / "trunc" / "train" / "part0.jsonl.zst").write_bytes(blob[: len(blob) // 2])
    (data / "csv" / "train").mkdir(parents=True)
    (data / "csv" / "train" / "part0.csv").write_text("text,domain\nx,web\n")
    (data / "empty").mkdir()
    (data / "shortval" / "val.jsonl").write_text(
        "".join(json.dumps({"text": "tiny", "domain": d}) + "\n" for d in ("web", "code"))
    )

    tasks = tmp_path_factory.mktemp("bad_tasks")
    (tasks / "noyaml").mkdir()
    (tasks / "noyaml" / "README.txt").write_text("task files go here\n")
    (tasks / "malformed").mkdir()
    (tasks / "malformed" / "mytask.yaml").write_text("task: mytask\ndataset_path: json\n  doc_to_text: [unclosed\n")
    (tasks / "missingfile").mkdir()
    (tasks / "missingfile" / "mytask.yaml").write_text(
        "task: mytask\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    train: {tasks}/missingfile/nope_train.jsonl\n    test: {tasks}/missingfile/nope_test.jsonl\n"
        "output_type: multiple_choice\ntraining_split: train\ntest_split: test\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{options}}"\ndoc_to_target: label\n'
    )

    other = tmp_path_factory.mktemp("other_model") / "run"
    run_until_crash(compose(base + [f"run_dir={other}", "model.hidden_size=64", "trainer.ckpt_every=2"]), 4)
    other_files = {rel: (other / rel).read_bytes() for rel in ("checkpoints/last.pt", "config.yaml")}
    same = tmp_path_factory.mktemp("same_config") / "run"
    run_until_crash(compose(base + [f"run_dir={same}", "trainer.ckpt_every=2"]), 4)
    same_files = {rel: (same / rel).read_bytes() for rel in ("checkpoints/last.pt", "config.yaml")}
    return {"data": data, "tasks": tasks, "other_model": other_files, "same_config": same_files}


# ------------------------------------------------------------------------------------------------- helpers


def _snapshot(root: Path) -> dict[str, str]:
    """Every file (sha256) and folder under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _cache_dir(overrides: list[str]) -> Path:
    return Path(next(o for o in overrides if o.startswith("data.cache_dir=")).split("=", 1)[1])


def _in_process(overrides: list[str], capsys) -> tuple[int | str, str]:
    """What `python train.py <overrides>` does: Hydra composes the config (a value its schema refuses is the one
    line tikmix.cli.hydra_cli prints, exit 2), then tikmix.run.main runs it."""
    from tikmix.cli import hydra_error_line
    from tikmix.run import main

    try:
        cfg = compose(overrides)
    except Exception as e:  # noqa: BLE001 - as hydra_cli: Hydra's own errors become the line, others propagate
        line = hydra_error_line(e)
        if line is None:
            raise
        return 2, f"error: {line}\n"
    capsys.readouterr()
    try:
        main(cfg)
        code: int | str = 0
    except SystemExit as e:
        code = e.code
    except Exception:  # noqa: BLE001 - a bug: show it as the CLI would
        import traceback

        code = 1
        sys.stderr.write(traceback.format_exc())
    return code, capsys.readouterr().err


def _cli(overrides: list[str], cwd: Path) -> tuple[int, str]:
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    env.pop("HYDRA_FULL_ERROR", None)
    r = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r.returncode, r.stderr


# ---------------------------------------------------------------------------------------------------- test


def test_table_covers_every_category():
    cats = {c.id.split("-")[0] for c in CASES}
    assert cats == {"config", "weights", "data", "tasks", "checkpoint", "rundir"}
    assert len(CASES) >= 22 and len({c.id for c in CASES}) == len(CASES)
    assert all(sum(c.id.startswith(k) for c in CASES) >= 4 for k in cats)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_one_clear_line_exit_2_nothing_touched(case: Case, base, fx, tmp_path, capsys):
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "SENTINEL").write_text("a run directory that existed before the command\n")
    for rel, data in (case.files(fx) if case.files else {}).items():
        (rd / rel).parent.mkdir(parents=True, exist_ok=True)
        (rd / rel).write_bytes(data)
    extra = [o.replace("{data}", str(fx["data"])).replace("{tasks}", str(fx["tasks"])) for o in case.overrides]
    cache = _cache_dir(base)
    run_before, cache_before = _snapshot(rd), _snapshot(cache)

    if case.cli:
        code, err = _cli(base + [f"hydra.run.dir={rd}", *extra], cwd=tmp_path)
    else:
        code, err = _in_process(base + [f"run_dir={rd}", *extra], capsys)

    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-3000:]  # (a)
    assert len(lines) == 1, err[-3000:]  # (b) one line ...
    for s in case.expect:
        assert s in lines[0], f"{s!r} not in {lines[0]!r}"  # ... naming the field and the fault
    assert "Traceback" not in err  # (c)
    assert _snapshot(rd) == run_before  # (d) the run dir as it was
    cache_after = _snapshot(cache)
    assert {k: v for k, v in cache_after.items() if k in cache_before} == cache_before  # the cache as it was,
    new = set(cache_after) - set(cache_before)  # ... plus at most empty lock files
    if case.new_cache:  # ... and a complete new entry, when the data itself is valid
        entries = {k.split("/")[0] for k in new if k.endswith("/manifest.json")}
        new = {k for k in new if k.split("/")[0] not in entries}
    assert all(k.endswith(".lock") and (cache / k).stat().st_size == 0 for k in new), new
