"""Re-evaluate a finished run: ``python -m eval <run_dir> [overrides]``.

    python -m eval outputs/2026-01-01/12-00-00_stratified_s0 eval=synthetic9 eval.limit=50
    python -m eval <run_dir> eval=paper9 device=cuda
    python -m eval <run_dir> eval=custom eval.include_path=/my/tasks eval.tasks=[my_task]

Loads ``<run_dir>/final_model`` (Hugging Face format, with its tokenizer) with transformers, composes the
eval config from the repo's ``conf/`` with the given Hydra-style overrides (the run's own ``data`` config,
from ``<run_dir>/config.yaml``, fills the synthetic suite's seed and cache folder), evaluates, and appends the
result to ``results.json["rescored"]`` atomically, beside the run's own evaluation: ``results.json["eval"]``
and every other key are kept as they were (``python -m eval.tables --preset <preset>`` reports a re-scoring;
a limited one, ``eval.limit``, is marked in every table). W&B logging only with an explicit ``logger=wandb``
override: a W&B run in the original run's project and group (its sweep), job type ``rescore``, named
``<run name>-rescore``, its scores under ``rescore/``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eval.stage import evaluate
from tikmix.errors import DataError, TikmixError
from tikmix.mixer import register_configs
from tikmix.report import wandb_identity
from tikmix.runlog import RunLogger, write_json_atomic
from tikmix.trainer import resolve_device

CONF = Path(__file__).resolve().parents[1] / "conf"
USAGE = (
    "usage: python -m eval <run_dir> [eval=<preset>] [eval.limit=N] [eval.tasks=[...]] [device=cpu|cuda] [logger=wandb]"
)


def check_run_dir(run_dir: Path) -> Path:
    """The run's final_model folder, or a DataError saying which run and what is missing."""
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    fm = run_dir / "final_model"
    if not fm.is_dir():
        why = (
            "the run has not finished"
            if not (run_dir / "results.json").exists()
            else "it ran with trainer.save_final_model=false"
        )
        raise DataError(f"run {run_dir} has no final model: {fm} is missing ({why}); nothing to evaluate")
    missing = []
    if not (fm / "config.json").exists():
        missing.append("config.json")
    if not any(
        (fm / n).exists()
        for n in (
            "model.safetensors",
            "pytorch_model.bin",
            "model.safetensors.index.json",
            "pytorch_model.bin.index.json",
        )
    ):
        missing.append("model weights (model.safetensors)")
    if not any((fm / n).exists() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        missing.append("tokenizer (tokenizer.json)")
    if missing:
        raise DataError(f"run {run_dir}: the final model in {fm} is incomplete, missing {', '.join(missing)}")
    if not (run_dir / "results.json").exists():
        raise DataError(
            f"run {run_dir} has a final model but no results.json: the run did not finish; "
            f"resume it with the same command to complete it"
        )
    return fm


def compose_config(run_dir: Path, overrides: list[str]):
    """The root config for re-evaluating ``run_dir``: conf/ + overrides, with the run's data config."""
    saved = run_dir / "config.yaml"
    run_cfg = (yaml.safe_load(saved.read_text()) if saved.exists() else None) or {}
    if not any(o.split("=", 1)[0] == "eval" for o in overrides):
        # no preset named: the run's own (when it had one), else the default offline suite
        prev = (run_cfg.get("eval") or {}).get("name") if isinstance(run_cfg.get("eval"), dict) else None
        preset = prev if prev and prev != "none" and (CONF / "eval" / f"{prev}.yaml").exists() else "synthetic9"
        overrides = [f"eval={preset}", *overrides]
    register_configs()  # the schemas the presets name
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            composed = compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    root = OmegaConf.to_container(composed, resolve=False)
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    for top in ("data", "seed"):  # not device: the run may have trained on another machine
        if top in run_cfg and top not in keys:
            root[top] = run_cfg[top]
    cfg = OmegaConf.create(root)
    for k in keys:  # explicit overrides inside those groups (data.cache_dir=...) still win
        if "." in k and k.split(".")[0] == "data":
            OmegaConf.update(cfg, k, OmegaConf.select(composed, k), force_add=True)
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + (__doc__ or ""))
        return 0 if argv else 2
    run_dir = Path(argv[0]).expanduser().resolve()
    overrides = argv[1:]
    try:
        return _run(run_dir, overrides)
    except TikmixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 2


def _run(run_dir: Path, overrides: list[str]) -> int:
    fm = check_run_dir(run_dir)
    cfg = compose_config(run_dir, overrides)
    if (cfg.eval.get("name") or "none") == "none":
        print("[eval] eval=none: nothing to evaluate (choose a preset, e.g. eval=synthetic9)")
        return 0
    device = resolve_device(str(cfg.get("device", "auto")))
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(fm), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(fm), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is a problem with the run's files
        raise DataError(
            f"run {run_dir}: cannot load the final model in {fm} ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})"
        ) from e
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    results_path = run_dir / "results.json"
    res: dict[str, Any] = json.loads(results_path.read_text())
    logger = None
    if any(o.split("=", 1)[0] == "logger" for o in overrides) and cfg.logger.get("name") != "none":
        logger = _rescore_logger(cfg, run_dir, res, overrides)
    try:
        entry = evaluate(cfg.eval, model, tokenizer, run_dir, logger=logger, step=None, device=device, final=True)
    finally:
        if logger is not None:
            logger.finish()
    if entry is None:
        return 0
    res = json.loads(results_path.read_text())  # re-read: keep anything written meanwhile
    # beside the run's own evaluation, never over it: results.json["eval"] stays what the run measured
    entry = {**entry, "rescored_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "overrides": list(overrides)}
    if logger is not None and logger.inner.wandb_info:
        entry["wandb"] = logger.inner.wandb_info
    if not isinstance(res.get("rescored"), list):
        res["rescored"] = []
    res["rescored"].append(entry)
    write_json_atomic(results_path, res)
    lim = (
        f" with eval.limit={entry['limit']} (a limited evaluation, marked as such in eval.tables)"
        if entry.get("limit") is not None
        else ""
    )
    print(
        f"[eval] re-scored {entry['preset']}{lim}: written beside the original as results.json['rescored']"
        f"[{len(res['rescored']) - 1}] in {results_path}; results.json['eval'] (the run's own evaluation) is unchanged. "
        f"Tables of it: python -m eval.tables {run_dir} --preset {entry['preset']}"
    )
    return 0


class _Prefixed:
    """A RunLogger whose keys ``eval/...`` become ``rescore/...``: a re-scoring run in the sweep's W&B group never
    mixes its (possibly limited) scores into the group's ``eval/`` charts."""

    def __init__(self, inner: Any):
        self.inner = inner

    @staticmethod
    def _k(k: str) -> str:
        return "rescore/" + k[len("eval/") :] if k.startswith("eval/") else k

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.inner.log_wandb({self._k(k): v for k, v in metrics.items()}, step)

    def table(self, key: str, columns: list, rows: list, step: int | None = None) -> None:
        self.inner.table(self._k(key), columns, rows, step)

    def summary(self, values: dict) -> None:
        self.inner.summary({self._k(k): v for k, v in values.items()})

    def finish(self) -> None:
        self.inner.finish()


def _rescore_logger(cfg: Any, run_dir: Path, res: dict, overrides: list[str]) -> _Prefixed:
    """A W&B run beside the run being re-scored: the same project and group (its sweep), job_type ``rescore``, named
    after it, its W&B id in the config (``rescore_of``)."""
    orig = res.get("wandb") if isinstance(res.get("wandb"), dict) else {}
    lcfg = OmegaConf.to_container(cfg.logger, resolve=True)
    keys = {o.split("=", 1)[0] for o in overrides}
    for k in ("project", "entity"):  # the run's own project unless the command names another
        if orig.get(k) and f"logger.{k}" not in keys:
            lcfg[k] = orig[k]
    base = wandb_identity({"mixer": {"name": res.get("mixer")}, "seed": res.get("seed")}, run_dir, sweep="")
    name = f"{orig.get('name') or base['name']}-rescore"
    ident = {
        "group": orig.get("group"),
        "job_type": "rescore",
        "tags": [*(orig.get("tags") or [f"mixer:{res.get('mixer')}"]), "rescore"],
    }
    config = {
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
        "run_dir": str(run_dir),
        "mixer": res.get("mixer"),
        "seed": res.get("seed"),
        "rescore_of": {"id": orig.get("id"), "name": orig.get("name")},
    }
    return _Prefixed(RunLogger(lcfg, run_dir, config, name, write_metrics=False, identity=ident))


if __name__ == "__main__":
    sys.exit(main())
