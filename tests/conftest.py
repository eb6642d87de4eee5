"""Shared fixtures: the real Hydra config, composed once, patched for CPU, offline and tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One torch thread per test process: on a 2-core machine two OpenMP threads per process oversubscribe the
# CPU as soon as a subprocess or another job runs beside it, and everything slows several-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Small but real synthetic corpus for tests: enough tokens for smoke budgets, built once per session.
SMOKE_DOCS = (
    "{train: {arith: 300, facts: 120, grammar: 300, copy: 300, rumors: 120, slang: 300, boiler: 300, noise: 300, "
    "spam: 300, logs: 300}, "
    "val: {arith: 40, facts: 40, grammar: 40, copy: 40, rumors: 40, slang: 40, boiler: 40, noise: 40, spam: 40, "
    "logs: 40}, "
    "test: {arith: 40, facts: 40, grammar: 40, copy: 40, rumors: 40, slang: 40, boiler: 40, noise: 40, spam: 40, "
    "logs: 40}}"
)


def compose(overrides: list[str] | None = None):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tikmix.mixer import register_configs

    register_configs()  # as train.py does: the schemas the presets name, every mixer's among them
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hcompose(config_name="config", overrides=list(overrides or []))
    GlobalHydra.instance().clear()
    return cfg


def typed_cfg(cfg):
    """A composed config (its run_dir given) as the run's typed RunConfig, as tikmix.run hands it down."""
    from omegaconf import OmegaConf

    from tikmix.run import typed_run

    return typed_run(OmegaConf.to_container(cfg, resolve=True))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def smoke_overrides(cache_dir) -> list[str]:
    return [
        "model=tiny",
        "budget=smoke",
        "logger=none",
        "eval=none",
        "trainer.progress=false",
        f"data.cache_dir={cache_dir}",
        f"data.synthetic.docs={SMOKE_DOCS}",
        "data.tokenizer.vocab_size=512",
        "data.tokenizer.train_docs_per_domain=200",
        "trainer.val_tokens=1024",
        "trainer.test_tokens=1024",
        "targets.tokens=512",
    ]


@pytest.fixture
def make_cfg(smoke_overrides, tmp_path):
    def _make(*extra: str, run_dir: Path | None = None):
        rd = run_dir or (tmp_path / "run")
        return compose(smoke_overrides + [f"run_dir={rd}", *extra])

    return _make


def run_until_crash(cfg, crash_at: int, **run_kw) -> None:
    """Run ``cfg`` and simulate a crash (KeyboardInterrupt) just before step ``crash_at`` trains."""
    from tikmix.run import run
    from tikmix.trainer import Trainer

    orig = Trainer.train_step

    def crash(self, step, w):
        if step == crash_at:
            raise KeyboardInterrupt(f"simulated crash at step {crash_at}")
        return orig(self, step, w)

    Trainer.train_step = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, **run_kw)
    finally:
        Trainer.train_step = orig
