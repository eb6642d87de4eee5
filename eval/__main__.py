"""Re-evaluate a finished run: ``python -m eval <run_dir> [overrides]``.

    python -m eval outputs/2026-01-01/12-00-00_stratified_s0 eval=synthetic9 eval.limit=50
    python -m eval <run_dir> eval=paper9 device=cuda
    python -m eval <run_dir> eval=custom eval.include_path=/my/tasks eval.tasks=[my_task]

Loads ``<run_dir>/final_model`` (Hugging Face format, with its tokenizer) with transformers, composes the
eval config from the repo's ``conf/`` with the given Hydra-style overrides (the run's own ``data`` config,
from ``<run_dir>/config.yaml``, fills the synthetic suite's seed and cache folder), evaluates, and writes
the result into ``results.json`` atomically: ``"eval"`` becomes this evaluation and ``"evals"[<preset>]``
keeps the latest evaluation of each preset; every other key is kept. W&B logging only with an explicit
``logger=wandb`` override (a new W&B run named ``<mixer>_s<seed>_eval``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tikmix.errors import DataError, TikmixError

CONF = Path(__file__).resolve().parents[1] / "conf"
USAGE = "usage: python -m eval <run_dir> [eval=<preset>] [eval.limit=N] [eval.tasks=[...]] [device=cpu|cuda] [logger=wandb]"


def check_run_dir(run_dir: Path) -> Path:
    """The run's final_model folder, or a DataError saying which run and what is missing."""
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    fm = run_dir / "final_model"
    if not fm.is_dir():
        why = "the run has not finished" if not (run_dir / "results.json").exists() else \
            "it ran with trainer.save_final_model=false"
        raise DataError(f"run {run_dir} has no final model: {fm} is missing ({why}); nothing to evaluate")
    missing = []
    if not (fm / "config.json").exists():
        missing.append("config.json")
    if not any((fm / n).exists() for n in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                                           "pytorch_model.bin.index.json")):
        missing.append("model weights (model.safetensors)")
    if not any((fm / n).exists() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        missing.append("tokenizer (tokenizer.json)")
    if missing:
        raise DataError(f"run {run_dir}: the final model in {fm} is incomplete, missing {', '.join(missing)}")
    if not (run_dir / "results.json").exists():
        raise DataError(f"run {run_dir} has a final model but no results.json: the run did not finish; "
                        f"resume it with the same command to complete it")
    return fm


def compose_config(run_dir: Path, overrides: list[str]):
    """The root config for re-evaluating ``run_dir``: conf/ + overrides, with the run's data config."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    saved = run_dir / "config.yaml"
    run_cfg = (yaml.safe_load(saved.read_text()) if saved.exists() else None) or {}
    if not any(o.split("=", 1)[0] == "eval" for o in overrides):
        # no preset named: the run's own (when it had one), else the default offline suite
        prev = (run_cfg.get("eval") or {}).get("name") if isinstance(run_cfg.get("eval"), dict) else None
        preset = prev if prev and prev != "none" and (CONF / "eval" / f"{prev}.yaml").exists() else "synthetic9"
        overrides = [f"eval={preset}", *overrides]
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
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # pragma: no cover
        HydraException = OmegaConfBaseException = ()  # type: ignore[misc,assignment]
    try:
        return _run(run_dir, overrides)
    except TikmixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as e:  # type: ignore[misc]
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 2


def _run(run_dir: Path, overrides: list[str]) -> int:
    fm = check_run_dir(run_dir)
    cfg = compose_config(run_dir, overrides)
    from omegaconf import OmegaConf

    from eval.stage import evaluate
    from tikmix.runlog import RunLogger, write_json_atomic
    from tikmix.trainer import resolve_device

    if (cfg.eval.get("name") or "none") == "none":
        print("[eval] eval=none: nothing to evaluate (choose a preset, e.g. eval=synthetic9)")
        return 0
    device = resolve_device(str(cfg.get("device", "auto")))
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(fm), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(fm), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is a problem with the run's files
        raise DataError(f"run {run_dir}: cannot load the final model in {fm} ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from e
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    results_path = run_dir / "results.json"
    res: dict[str, Any] = json.loads(results_path.read_text())
    logger = None
    if any(o.split("=", 1)[0] == "logger" for o in overrides) and cfg.logger.get("name") != "none":
        name = f"{res.get('mixer', 'run')}_s{res.get('seed', 0)}_eval"
        logger = RunLogger(cfg.logger, run_dir, {"eval": OmegaConf.to_container(cfg.eval, resolve=True), "run_dir": str(run_dir)}, name)
    try:
        entry = evaluate(cfg.eval, model, tokenizer, run_dir, logger=logger, step=None, device=device, final=True)
    finally:
        if logger is not None:
            logger.finish()
    if entry is None:
        return 0
    res = json.loads(results_path.read_text())  # re-read: keep anything written meanwhile
    res["eval"] = entry
    res.setdefault("evals", {})
    if not isinstance(res["evals"], dict):
        res["evals"] = {}
    res["evals"][entry["preset"]] = entry
    write_json_atomic(results_path, res)
    print(f"[eval] wrote results.json['eval'] ({entry['preset']}) in {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
