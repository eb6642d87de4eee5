"""Typed configs (tikmix/config.py) and the mixer registry (tikmix/mixer.py).

* every preset names its schema, sets only what differs from the schema's defaults, and composes;
* the run fingerprint of today's configs, sub-runs' included, is what it was before the schemas existed (the
  values below were computed by the code before them): resuming old checkpoints and cached sub-runs still works;
* a value of the wrong type or an unknown key is one line naming the field, whether Hydra composes it or a
  sub-run config made in code is checked;
* a mixer built from a plain dict gets its dataclass's defaults;
* a new method is one module and one YAML: found without editing a list, composed, trained, listed by --help.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, OmegaConf

import tikmix.mixer as mixer_mod
from tests.conftest import CONF, REPO, compose
from tests.test_help import check_mixers_listed
from tests.test_smoke_budget import check_smoke
from tikmix.cli import hydra_error_line
from tikmix.config import GROUPS, LOGGERS, RunConfig, TrainerConfig, typed, validate
from tikmix.errors import ConfigError
from tikmix.mixer import MixerContext, available, build_mixer, help_order, mixer_class

GROUP_DIRS = ("mixer", "model", "budget", "data", "eval", "logger")
# the fingerprints below hash the cache path, and were taken when v2 was the default benchmark (v3 changes the
# default's data, so a v3 run must not resume a v2 checkpoint: its fingerprint differs, as it should)
PIN = ["data.cache_dir=.cache/tikmix", "run_dir=/tmp/rd", "data.synthetic.benchmark=v2"]


def _presets(group: str) -> list[Path]:
    return sorted((CONF / group).glob("*.yaml"))


def _schema_of(group: str, preset: str) -> type:
    if group == "mixer":
        return mixer_class(compose([f"mixer={preset}", "run_dir=/tmp"]).mixer.name).config_class
    return LOGGERS[preset] if group == "logger" else GROUPS[group]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("group", GROUP_DIRS)
def test_every_preset_names_its_schema_and_composes(group):
    for p in _presets(group):
        first = OmegaConf.load(p).defaults[0]
        # a preset extends its schema, or another preset of its group that does (data/synthetic_v1: synthetic)
        assert str(first).startswith("/schema/") or (CONF / group / f"{first}.yaml").exists(), p
        schema = _schema_of(group, p.stem)
        assert isinstance(typed(schema, compose([f"{group}={p.stem}", "run_dir=/tmp"])[group]), schema), p


@pytest.mark.parametrize("group", GROUP_DIRS)
def test_presets_restate_no_default(group):
    """Each default lives in the dataclass: a preset's own keys all differ from it (model presets' trainer section
    is their published recipe, stated whole)."""
    for p in _presets(group):
        own = {k: v for k, v in yaml.safe_load(p.read_text()).items() if k != "defaults"}
        if group == "model":
            own = own["model"]
        schema = OmegaConf.to_container(OmegaConf.structured(_schema_of(group, p.stem)))
        defaults = _flat(schema)
        for key, value in _flat(own).items():
            assert key not in defaults or defaults[key] in (MISSING,) or defaults[key] != value, (p, key)


def test_mixer_presets_are_their_dataclass_defaults():
    for p in _presets("mixer"):
        c = compose([f"mixer={p.stem}", "run_dir=/tmp"]).mixer
        schema = OmegaConf.structured(mixer_class(c.name).config_class)
        assert OmegaConf.to_container(c) == OmegaConf.to_container(OmegaConf.merge(schema, {"name": c.name})), p


# computed by the code before the typed configs (git 3d51f46) with the same overrides and PIN
FINGERPRINTS = {
    (): "91ce3f20d6cdb738",
    ("budget=smoke", "mixer=tikmix_m"): "6ed89cecb0ea8de3",  # lookahead_steps 0.25, a new default: a new fingerprint
    ("budget=smoke", "mixer=tikmix_m", "mixer.lookahead_steps=1.0"): "b328a04f9996ee5a",  # the step before: as before
    ("budget=smoke", "mixer=regmix"): "7e49ee51b268f730",  # lgbm.n_trees: cv, a new default: a new fingerprint
    ("budget=smoke", "mixer=regmix", "mixer.lgbm.n_trees=holdout"): "c9382d9090652ce9",  # the rule before: as before
    ("budget=smoke", "mixer=doremi"): "bd0f99ccc76493d2",
    ("budget=smoke", "mixer=aioli"): "e229d503026a9359",
    ("mixer=dga", "mixer.rule=doge"): "fe0cafd0085dfd58",
    ("mixer=odm", "mixer.reward_update=ema"): "0c635a6a63b26567",
    ("mixer=design", "mixer.index=3"): "5340eda728186283",
    ("mixer=fixed", "mixer.weights={arith: 0.5, grammar: 0.5}"): "319fb140459da542",
    ("data=pile", "model=1b", "budget=25b", "mixer=human"): "74cd9451f3792446",
    ("eval=paper9", "model=160m"): "6cd0143a386b8166",
    ("+sweep=regmix_proxies",): "6ab79ef6b9aaa7f8",
    ("+sweep=oracle",): "525df902cb03762f",
    ("trainer.lr=1e-3", "trainer.warmup_steps=5", "seed=7", "budget=smoke", "targets.tokens=1024"): "7162b19efa86d7dc",
}
SUBRUNS = {
    "regmix-proxy": "57215acc8174f362",
    "doremi-reference": "f89944771dc37839",
    "doremi-proxy": "05f2f085ea38c699",
}


@pytest.mark.parametrize("overrides", list(FINGERPRINTS), ids=[" ".join(o) or "default" for o in FINGERPRINTS])
def test_fingerprint_of_todays_configs_is_unchanged(overrides):
    from tikmix.checkpoint import fingerprint

    cfg = compose([*overrides, *PIN])
    assert fingerprint(OmegaConf.to_container(cfg, resolve=True)) == FINGERPRINTS[overrides]


def test_sub_run_keys_are_unchanged(monkeypatch):
    """RegMix's proxies and DoReMi's reference and proxy find their cached sub-runs under the same keys (on a CPU
    without bf16 units: with them RegMix's proxy, hidden 256, trains in bf16 and is another sub-run)."""
    import tikmix.losses
    import tikmix.run as run_mod
    from tikmix.ledger import Ledger

    seen: list[str] = []
    monkeypatch.setattr(run_mod, "run", lambda cfg, **kw: seen.append(str(cfg.run_dir)) or {"compute": {"total": 0.0}})
    # a CPU without bf16 units, where trainer.dtype=auto is fp32 for every model as it was when these were taken
    # (with them RegMix's proxy trains in bf16: tests/test_trainer_perf.py::test_a_sub_run_key_follows_...)
    monkeypatch.setattr(tikmix.losses, "cpu_has_bf16", lambda: False)
    doms = ["arith", "facts", "grammar", "copy"]
    ctx = MixerContext(
        domains=doms,
        train_tokens={d: 10000 * (i + 1) for i, d in enumerate(doms)},
        total_steps=8,
        tokens_per_step=1024,
        seq_len=64,
        seed=0,
        stage_steps=[4],
    )
    w = np.array([0.1, 0.2, 0.3, 0.4])
    for name in ("regmix", "doremi"):
        parent = compose(["budget=smoke", f"mixer={name}", *PIN])
        m, sub = build_mixer(parent.mixer, doms, ctx), run_mod.make_subrun(parent, Ledger())
        if name == "regmix":
            sub(m.proxy_overrides(w), "regmix-proxy")
        else:
            sub(m.reference_overrides(w), "doremi-reference")
            sub(m.proxy_overrides("/tmp/ref"), "doremi-proxy")
    assert dict(Path(d).name.rsplit("-", 1) for d in seen) == SUBRUNS


@pytest.mark.parametrize(
    "override,line",
    [
        ("trainer.lr=abc", "config error: trainer.lr: must be a number, got 'abc'"),
        ("trainer.log_every=1.5", "config error: trainer.log_every: must be an integer, got 1.5"),
        ("trainer.progress=maybe", "config error: trainer.progress: must be true or false, got 'maybe'"),
        ("mixer.tokens_per_domain=many", "config error: mixer.tokens_per_domain: must be an integer, got 'many'"),
        ("mixer.max_epochs=abc", "config error: mixer.max_epochs: must be a number or null, got 'abc'"),
        ("seed=abc", "config error: seed: must be an integer from 0 to 4294967295, got 'abc'"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_the_field(override, line):
    with pytest.raises(Exception) as e:
        compose(["mixer=tikmix_d", override, "run_dir=/tmp"])
    assert hydra_error_line(e.value) == line


def test_sub_run_configs_made_in_code_pass_the_same_checks():
    good = OmegaConf.to_container(compose(["budget=smoke", "run_dir=/tmp"]), resolve=True)
    assert isinstance(validate(good), RunConfig) and validate(good).trainer.ckpt_every == 100
    for path, value, match in [
        (("trainer", "lr"), "abc", "trainer.lr: must be a number, got 'abc'"),
        (("trainer", "lrr"), 1, "trainer.lrr: unknown key"),
        (("budget", "warmup_frac"), 1.5, "budget.warmup_frac: must be a number >= 0 and < 1"),
        (("model", "num_layers"), "four", "model.num_layers: must be an integer, got 'four'"),
        (("logger", "name"), "tensorboard", "logger.name: unknown 'tensorboard'; allowed: wandb, none"),
        (("trainer", "final_eval"), "some", "trainer.final_eval: unknown 'some'"),
    ]:
        bad = OmegaConf.to_container(OmegaConf.create(good))
        bad[path[0]][path[1]] = value
        with pytest.raises(ConfigError, match=match):
            validate(bad)


def test_yaml_and_code_defaults_agree_where_they_once_disagreed():
    t = compose(["run_dir=/tmp"]).trainer
    assert (
        (t.ckpt_every, t.eval_every, t.log_every)
        == (100, 50, 10)
        == (TrainerConfig.ckpt_every, TrainerConfig.eval_every, TrainerConfig.log_every)
    )


def test_a_mixer_from_a_plain_dict_gets_its_dataclass_defaults():
    from tikmix.method.mixers import TiKMiXDConfig

    doms = ["a", "b"]
    ctx = MixerContext(
        domains=doms, train_tokens={"a": 10, "b": 30}, total_steps=8, tokens_per_step=64, seq_len=16, seed=0
    )
    c = build_mixer({"name": "tikmix_d", "tokens_per_domain": 512}, doms, ctx).c
    assert c == dataclasses.replace(TiKMiXDConfig(name="tikmix_d"), tokens_per_domain=512)
    with pytest.raises(
        ConfigError, match="mixer.tokens: unknown key for mixer 'tikmix_d'; known keys: name, first_stage"
    ):
        build_mixer({"name": "tikmix_d", "tokens": 512}, doms, ctx)
    with pytest.raises(ConfigError, match="mixer.alpha: must be a number, got 'x'"):
        build_mixer({"name": "tikmix_d", "alpha": "x"}, doms, ctx)


def test_the_lists_made_from_the_registry_keep_the_orders_they_had_by_hand():
    from eval.tables import MIXER_ORDER

    presets = {p.stem for p in _presets("mixer")}  # other tests register mixers of their own
    assert [n for n in MIXER_ORDER if n in presets] == [
        *("human", "natural", "stratified", "fixed", "schedule"),
        *("doremi", "odm", "dga", "aioli", "regmix", "tikmix_d", "tikmix_m"),
    ]
    assert [n for n in help_order() if n in presets] == [
        *("stratified", "natural", "fixed", "human", "schedule", "tikmix_d", "tikmix_m"),
        *("regmix", "doremi", "aioli", "odm", "dga"),
    ]


# --------------------------------------------------------------------------------------------- a new method
NEW_MODULE = '''
"""A new method in one module: each domain weighted by its token share to the power ``power``."""
from dataclasses import dataclass

import numpy as np

from tikmix.config import Number, check_number
from tikmix.mixer import Mixer, MixerConfig, register


@dataclass
class TemperedConfig(MixerConfig):
    power: Number = 0.5  # 1 = natural, 0 = uniform

    def __post_init__(self) -> None:
        check_number("mixer.power", self.power, low=0)


@register("{name}", TemperedConfig)
class Tempered(Mixer):
    family = "static"
    summary = "token shares tempered by mixer.power"
    smoke = ("mixer.power=0.5",)

    def initial_weights(self) -> np.ndarray:
        t = np.array([self.ctx.train_tokens[d] for d in self.domains], dtype=np.float64) ** self.c.power
        return t / t.sum()
'''
NEW_YAML = """# Token shares tempered by a power (a test's new method).
defaults:
  - /schema/mixer/{name}@_here_
  - _self_

name: {name}
power: 0.25
"""


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as it is, restored afterwards; discovery runs again."""
    monkeypatch.setattr(mixer_mod, "_REGISTRY", dict(mixer_mod._REGISTRY))
    monkeypatch.setattr(mixer_mod, "_discovered", False)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("baselines.tempered", "tempered_plugin")):
            del sys.modules[name]


def test_a_new_method_is_one_module_and_one_yaml(fresh_registry, smoke_overrides, tmp_path, monkeypatch):
    """A module dropped into the baselines package (here: a folder added to its path, as a checkout would hold it)
    and its preset on a config search path: found, composed with its schema, checked, trained end to end."""
    import baselines
    from tikmix.run import run

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "tempered_test.py").write_text(NEW_MODULE.replace("{name}", "tempered_test"))
    (tmp_path / "conf" / "mixer").mkdir(parents=True)
    (tmp_path / "conf" / "mixer" / "tempered_test.yaml").write_text(NEW_YAML.replace("{name}", "tempered_test"))
    monkeypatch.setattr(baselines, "__path__", [*baselines.__path__, str(tmp_path / "pkg")])
    search = [f"hydra.searchpath=[pkg://sweeps,file://{tmp_path / 'conf'}]", "mixer=tempered_test"]
    assert "tempered_test" in available()
    cfg = compose(smoke_overrides + search + [f"run_dir={tmp_path / 'run'}", "trainer.save_final_model=false"])
    assert cfg.mixer.power == 0.25
    with pytest.raises(Exception) as e:
        compose(smoke_overrides + search + ["mixer.power=strong", "run_dir=/tmp"])
    assert hydra_error_line(e.value) == "config error: mixer.power: must be a number, got 'strong'"
    res = run(cfg, quiet=True)
    t = np.array([res["train_tokens"][d] for d in res["domains"]], dtype=np.float64) ** 0.25
    assert res["mixer"] == "tempered_test"
    assert np.allclose([res["final_weights"][d] for d in res["domains"]], t / t.sum())


def test_a_new_mixer_is_in_the_help_and_passes_the_smoke_check(fresh_registry, smoke_overrides, tmp_path, monkeypatch):
    """One module + one YAML and no list edited: ``python train.py --help`` lists it with its summary (the help
    test's check), and it completes a smoke run with the overrides its class declares (the smoke test's check)."""
    import baselines
    from tikmix.run import run

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "tempered_new.py").write_text(NEW_MODULE.replace("{name}", "tempered_new"))
    (tmp_path / "conf" / "mixer").mkdir(parents=True)
    (tmp_path / "conf" / "mixer" / "tempered_new.yaml").write_text(NEW_YAML.replace("{name}", "tempered_new"))
    monkeypatch.setattr(baselines, "__path__", [*baselines.__path__, str(tmp_path / "pkg")])
    search = f"hydra.searchpath=[pkg://sweeps,file://{tmp_path / 'conf'}]"

    # python train.py --help SEARCH, in this process (a subprocess would not see the module added to the path)
    monkeypatch.setattr(sys, "argv", [str(REPO / "train.py"), "--help", search])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # train.py's hydra_cli sets it: restored afterwards
    out = io.StringIO()
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    finally:
        GlobalHydra.instance().clear()
    assert e.value.code == 0
    check_mixers_listed(out.getvalue(), [CONF, tmp_path / "conf"])
    assert "  tempered_new    token shares tempered by mixer.power" in out.getvalue().splitlines()

    smoke = list(mixer_class("tempered_new").smoke)
    cfg = compose(smoke_overrides + [search, "mixer=tempered_new", *smoke, f"run_dir={tmp_path / 'run'}"])
    res = run(cfg, quiet=True)
    check_smoke(res)
    assert res["mixer"] == "tempered_new" and cfg.mixer.power == 0.5


def test_an_installed_package_adds_a_mixer_through_its_entry_point(fresh_registry, tmp_path, monkeypatch):
    """Out of the tree: a distribution that names its module in the ``tikmix.mixers`` entry-point group."""
    (tmp_path / "tempered_plugin.py").write_text(NEW_MODULE.replace("{name}", "tempered_plugin"))
    dist = tmp_path / "tempered_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tempered-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tikmix.mixers]\ntempered_plugin = tempered_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "tempered_plugin" in available()
    ctx = MixerContext(
        domains=["a", "b"], train_tokens={"a": 10, "b": 40}, total_steps=8, tokens_per_step=64, seq_len=16, seed=0
    )
    assert np.allclose(build_mixer({"name": "tempered_plugin"}, ["a", "b"], ctx).weights(0), [1 / 3, 2 / 3])
    with pytest.raises(ConfigError, match="mixer.power: must be a number >= 0, got -1"):
        build_mixer({"name": "tempered_plugin", "power": -1}, ["a", "b"], ctx)


def test_a_subclass_registered_under_its_own_name_is_not_listed_as_its_parent(fresh_registry):
    from tikmix.mixer import register, table_order
    from tikmix.static_mixers import Stratified

    @register("sub_of_stratified")
    class Sub(Stratified):
        pass

    assert (Sub.family, Sub.summary, Sub.smoke) == ("other", "", ()) and Stratified.family == "static"
    assert "sub_of_stratified" not in table_order()
