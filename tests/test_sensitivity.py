"""sweeps.sensitivity on planted runs: grouping by (beta, gamma, targets), one run per seed, Eq. 10's terms at the
chosen mixture computed from the recorded influence, and the regret against a planted best static mixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from sweeps import sensitivity
from tikmix.method.solvers import influence_scale

DOMS = ["a", "b", "c"]
S = [[0.2, 0.1, -0.05], [0.0, 0.3, 0.1]]  # two targets x three domains


def _run(root: Path, name: str, beta: float, gamma: float, seed: int, bpb: float, w: list[float]) -> None:
    d = root / name
    d.mkdir(parents=True)
    rec = {
        "step": 10,
        "weights": dict(zip(DOMS, w)),
        "w_prev": dict(zip(DOMS, [1 / 3] * 3)),
        "influence": {f"t{i}": dict(zip(DOMS, row)) for i, row in enumerate(S)},
    }
    res = {
        "mixer": "tikmix_d",
        "seed": seed,
        "domains": DOMS,
        "final_weights": dict(zip(DOMS, w)),
        "mixer_history": [rec],
        "eval": {"in_domain_bpb": bpb, "in_domain_avg": 30.0 + seed},
    }
    (d / "results.json").write_text(json.dumps(res))
    (d / "config.yaml").write_text(yaml.safe_dump({"mixer": {"name": "tikmix_d", "beta": beta, "gamma": gamma}}))


def test_groups_terms_and_regret(tmp_path, capsys):
    w = [0.5, 0.3, 0.2]
    _run(tmp_path / "sens", "0", 1.0, 1.0, 0, 1.70, w)
    _run(tmp_path / "sens", "1", 1.0, 1.0, 1, 1.60, w)
    _run(tmp_path / "compare", "0", 1.0, 1.0, 0, 1.70, w)  # the same run read from a second sweep: counted once
    _run(tmp_path / "sens", "2", 5.0, 0.1, 0, 2.50, [0.9, 0.05, 0.05])
    oracle = {
        "best": {"name": "best", "per_seed": {"0": {"in_domain_bpb": 1.50}, "1": {"in_domain_bpb": 1.55}}},
        "mixtures": {"best": {"mean": 1.525}, "stratified": {"mean": 1.6}},
    }
    rows = sensitivity.summarise(sensitivity.collect([str(tmp_path / "sens"), str(tmp_path / "compare")]), oracle)
    assert "already read; skipped" in capsys.readouterr().err
    by = {(r["beta"], r["gamma"]): r for r in rows}
    default = by[(1.0, 1.0)]
    assert default["seeds"] == [0, 1] and default["targets"] == 2
    assert math.isclose(default["in_domain_bpb"][0], 1.65)
    assert math.isclose(default["regret_bpb"][0], np.mean([1.70 - 1.50, 1.60 - 1.55]))
    # Eq. 10's terms at the chosen mixture, by hand
    Sm, wv = np.array(S), np.array(w)
    ph = Sm @ wv / influence_scale(Sm)
    assert math.isclose(default["entropy"], -1.0 * float(-(wv * np.log(wv)).sum()), rel_tol=1e-9)
    assert math.isclose(default["benefit"], -1.0 * float(ph.sum()), rel_tol=1e-9)
    assert math.isclose(
        by[(5.0, 0.1)]["benefit"], -5.0 * float((Sm @ np.array([0.9, 0.05, 0.05]) / influence_scale(Sm)).sum())
    )
    md = sensitivity.markdown(rows, oracle)
    assert md.count("\n| 1 | 1 | 2 | 2 |") == 1 and "| 5 | 0.1 | 2 | 1 |" in md
    (tmp_path / "out").mkdir()
    assert sensitivity.figure(rows, tmp_path / "out", oracle).exists()
