"""TiKMiX-D's weak-signal warning (tikmix/method/solvers.py entropy_pull, weak_signal; the mixer's
_warn_weak_signal): a stage whose mixture is mostly the entropy term's, or held by the Pareto constraint, says so on
stderr and in the history (solver.warnings), whatever the Pareto room's absolute size.

The case the warning was written for: eval=none, where the targets are the domains' held-out texts combined into
one, every domain helps it about equally, and the mixture drifts towards uniform while the influence measurement
is paid for. A smoke run of that kind had Pareto room 0.014 and printed nothing (the old rule was room <= 1e-9).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.probes import StubProbe
from tikmix.method.solvers import WEAK_SIGNAL_FRACTION, tikmix_d_solve, weak_signal
from tikmix.mixer import MixerContext, build_mixer

DOMAINS = [f"d{i}" for i in range(10)]
# one combined target that every domain helps within 3% of the best: room ~0.013 from the natural mixture below
WEAK = np.array([[1.0, 0.99, 0.985, 0.98, 0.975, 0.99, 0.97, 0.995, 0.98, 0.99]])
# three targets, domain 0 clearly best for each of them
STRONG = np.array([[1.0] + [0.2] * 9, [1.0] + [0.1, 0.3] * 4 + [0.1], [1.0] + [0.15] * 9])
TOKENS = np.array([30, 5, 8, 12, 20, 4, 6, 9, 3, 3], dtype=float) * 1e6  # natural mixture, far from uniform
NATURAL = TOKENS / TOKENS.sum()


def _solve(S, w_prev=NATURAL, **kw):
    w, info = tikmix_d_solve(np.asarray(S, dtype=float), np.asarray(w_prev, dtype=float), **kw)
    return w, info, info["diagnosis"]


def test_small_but_nonzero_room_with_a_weak_signal_is_flagged():
    w, info, d = _solve(WEAK)
    assert 1e-3 < info["pareto_room"] < 0.05  # the old rule (room <= 1e-9) is silent here
    assert d["influence_share"] < WEAK_SIGNAL_FRACTION
    assert weak_signal(d) == "entropy"
    # the mixture moved, but towards uniform: the influence did not choose it
    assert d["move_l1"] > 0.3 and d["l1_from_uniform"] < 0.25


def test_strong_signal_is_not_flagged():
    w, info, d = _solve(STRONG, w_prev=np.full(10, 0.1))
    assert w[0] > 0.5 and d["influence_share"] > 0.5
    assert weak_signal(d) is None


def test_the_criterion_is_not_distance_from_uniform():
    """A harmful domain removed, the rest equally useful: the mixture is close to uniform (L1 ~0.2) and that is
    the influence signal's answer, not the entropy's: no warning. An L1-from-uniform rule would flag it."""
    S = np.array([[1.0] * 9 + [-3.0]])
    w, _, d = _solve(S)
    assert w[-1] < 0.01 and d["l1_from_uniform"] < 0.25
    assert d["influence_share"] > 0.9 and weak_signal(d) is None


def test_pareto_pinned_mixture_is_flagged_as_pareto():
    S = np.array([[5.0, 0.5, 0.1], [0.3, 4.0, 0.2], [0.1, 0.4, 3.0]])  # every domain is also a target
    w, info, d = _solve(S, w_prev=[0.6, 0.3, 0.1])
    assert d["move_share"] < 0.01 < d["free_move_l1"]
    assert weak_signal(d) == "pareto"
    assert weak_signal(d, 0.0) is None  # warn_fraction=0 turns it off


# --- through the mixer: the stderr line and the history record ---------------------------------------------------
class _Result:
    def __init__(self, S):
        self.S = S
        self.info = dict.fromkeys(
            ("tokens", "norms", "n_params", "hessian", "projection_dim", "kfac_skipped", "kfac_diag", "block_share")
        )

    def as_dict(self):
        return {f"t{v}": dict(zip(DOMAINS, map(float, row))) for v, row in enumerate(self.S)}


class _PlantedInfluence:
    """Stands in for GroupInfluence: returns the planted S."""

    wall_s = 0.0

    def __init__(self, S):
        self.S = S

    def set_targets(self, targets):
        pass

    def matrix(self, domain_batches, keep_directions=False):
        return _Result(self.S)

    def total_flops(self):
        return 1.18e12

    def release(self):
        pass


class _Probe(StubProbe):
    step = 100
    stage_tokens = 1_000_000
    targets: dict = {}

    def charge(self, flops, what):
        pass


def _run_boundary(S, targets_auto=True, **cfg):
    ctx = MixerContext(
        domains=DOMAINS,
        train_tokens=dict(zip(DOMAINS, TOKENS.astype(int).tolist())),
        total_steps=400,
        tokens_per_step=4096,
        seq_len=64,
        seed=0,
        stage_steps=[100],
        targets_auto=targets_auto,
    )
    mixer = build_mixer({"name": "tikmix_d", **cfg}, DOMAINS, ctx)
    names = (
        ["mean(" + ", ".join(f"val/{d}" for d in DOMAINS) + ")"] if len(S) == 1 else [f"t{v}" for v in range(len(S))]
    )
    mixer._influence = lambda probe, w_prev, seed: _PlantedInfluence(S)
    mixer._targets = lambda probe: dict.fromkeys(names)
    mixer.on_probe(_Probe())
    return mixer.history[-1]


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[tikmix] warning:")]


def test_mixer_warns_once_and_records_it_for_a_weak_signal(capsys):
    rec = _run_boundary(WEAK)
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 1
    line = lines[0]
    assert "step 100: TiKMiX-D's mixture is mostly the entropy term's" in line
    assert "eval=none" in line and "combined into one" in line and "1.18e+12 FLOPs" in line
    assert rec["solver"]["warnings"] == [line.removeprefix("[tikmix] warning: ")]
    d = rec["solver"]["diagnosis"]
    assert 1e-3 < rec["solver"]["pareto_room"] < 0.05 and d["influence_share"] < WEAK_SIGNAL_FRACTION


def test_mixer_is_silent_on_a_strong_signal(capsys):
    rec = _run_boundary(STRONG, targets_auto=False, first_stage="uniform")
    assert _warnings(capsys.readouterr().err) == []
    assert rec["solver"]["warnings"] == []
    assert rec["weights"]["d0"] > 0.5


def test_mixer_pareto_warning_and_the_switch(capsys):
    S = np.eye(10) * 4 + 0.2  # every domain is also a target: the Pareto constraint pins the natural mixture
    rec = _run_boundary(S, targets_auto=False)
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 1 and "the Pareto constraint S·w >= S·w_prev holds the mixture" in lines[0]
    assert rec["solver"]["warnings"] and rec["solver"]["pareto_room"] < 1e-6
    rec = _run_boundary(WEAK, warn_fraction=0)
    assert _warnings(capsys.readouterr().err) == [] and rec["solver"]["warnings"] == []


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_warn_fraction_is_checked(bad):
    from tikmix.errors import ConfigError
    from tikmix.method.mixers import TiKMiXDConfig

    with pytest.raises(ConfigError, match="warn_fraction"):
        TiKMiXDConfig(name="tikmix_d", warn_fraction=bad)
