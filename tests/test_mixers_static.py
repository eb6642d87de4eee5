import numpy as np
import pytest

from tikmix.errors import ConfigError
from tikmix.mixer import MixerContext, available, build_mixer

DOMS = ["a", "b", "c"]


def ctx(**kw):
    base = dict(
        domains=DOMS,
        train_tokens={"a": 100, "b": 300, "c": 600},
        total_steps=10,
        tokens_per_step=64,
        seq_len=16,
        seed=0,
    )
    base.update(kw)
    return MixerContext(**base)


def test_registry_lists_static_mixers():
    assert {"stratified", "natural", "fixed", "human"} <= set(available())


def test_stratified_and_natural():
    assert np.allclose(build_mixer({"name": "stratified"}, DOMS, ctx()).weights(0), 1 / 3)
    assert np.allclose(build_mixer({"name": "natural"}, DOMS, ctx()).weights(5), [0.1, 0.3, 0.6])


def test_fixed_by_name_missing_domains_get_zero():
    m = build_mixer({"name": "fixed", "weights": {"a": 0.7, "c": 0.3}}, DOMS, ctx())
    assert m.weights(0).tolist() == [0.7, 0.0, 0.3]
    assert m.weights_dict(0) == {"a": 0.7, "b": 0.0, "c": 0.3}


def test_fixed_from_file(tmp_path):
    p = tmp_path / "w.yaml"
    p.write_text("a: 0.5\nb: 0.5\n")
    m = build_mixer({"name": "fixed", "weights": None, "weights_file": str(p)}, DOMS, ctx())
    assert m.weights(0).tolist() == [0.5, 0.5, 0.0]


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"name": "fixed", "weights": {"zz": 1.0}}, r"mixer.weights: unknown domain\(s\) \['zz'\]"),
        ({"name": "fixed", "weights": {"a": -0.5, "b": 1.5}}, r"mixer.weights.a: weight must be finite and >= 0"),
        ({"name": "fixed", "weights": {"a": 0.5, "b": 0.4}}, r"sum to 0.9.*renormalize=true"),
        ({"name": "fixed", "weights": None}, r"mixer.weights"),
        (
            {"name": "fixed", "weights": None, "weights_file": "/nonexistent.yaml"},
            r"mixer.weights_file: file not found",
        ),
        ({"name": "nope"}, r"unknown mixer 'nope'; available: .*stratified"),
        ({"name": "human"}, r"data.human_weights"),
    ],
)
def test_bad_mixer_configs_name_the_field(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_mixer(cfg, DOMS, ctx())


def test_fixed_renormalize_is_explicit():
    m = build_mixer({"name": "fixed", "weights": {"a": 1, "b": 1}, "renormalize": True}, DOMS, ctx())
    assert m.weights(0).tolist() == [0.5, 0.5, 0.0]


def test_human_uses_published_proportions_over_present_domains():
    m = build_mixer({"name": "human"}, DOMS, ctx(human_weights={"a": 0.2, "b": 0.2, "c": 0.4, "gone": 0.2}))
    assert np.allclose(m.weights(0), [0.25, 0.25, 0.5])
