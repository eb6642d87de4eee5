"""The evaluation and the targets follow the data: synthetic tasks only with the synthetic data.

Every data preset but synthetic selects eval=none in its defaults list; eval=<preset> on the command line, or
in a sweep preset, still wins. With no task targets, targets.tasks=auto yields none and the targets are every
domain's held-out text; a run prints one line saying what its targets are (names and tokens).
"""

from __future__ import annotations

import pytest

from tests.conftest import compose
from tikmix.run import run

REAL = ["jsonl", "pile", "slimpajama", "text_dir", "hf"]


@pytest.mark.parametrize("data", REAL)
def test_real_data_presets_evaluate_nothing_unless_asked(data):
    assert compose([f"data={data}"]).eval.name == "none"
    assert compose([f"data={data}", "eval=synthetic9"]).eval.name == "synthetic9"  # the command line wins ...
    assert compose(["eval=custom", f"data={data}"]).eval.name == "custom"  # ... in either order


def test_synthetic_data_keeps_its_tasks_and_sweeps_keep_theirs():
    assert compose([]).eval.name == compose(["data=synthetic_v1"]).eval.name == "synthetic9"
    assert compose(["+sweep=regmix_table4"]).eval.name == "paper9"  # data=pile, eval=paper9 in the sweep
    assert compose(["+sweep=paper_table1"]).eval.name == "paper9"  # data=jsonl
    assert compose(["+sweep=compare_text"]).eval.name == "none"


def test_benchmark_v4_brings_its_tasks_and_its_learning_rate_schedule():
    v4 = compose(["data=synthetic_v4"])
    assert (v4.data.synthetic.benchmark, v4.eval.name, v4.trainer.schedule) == ("v4", "synthetic10", "wsd")
    assert "chain_deep" in v4.eval.in_domain and v4.data.source == "synthetic"
    assert (
        compose(["data=synthetic_v4", "trainer.schedule=cosine"]).trainer.schedule == "cosine"
    )  # the command line wins
    assert compose(["data=synthetic_v4", "eval=synthetic9"]).eval.name == "synthetic9"
    assert compose([]).trainer.schedule == "cosine"  # the other benchmarks keep theirs


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory):
    """Three domains of plain-text files (data=text_dir): 60 documents each, so every held-out split has some."""
    root = tmp_path_factory.mktemp("textdir")
    words = {
        "recipes": "flour sugar butter oven bake stir salt egg",
        "weather": "rain wind cloud sun storm cold warm fog",
        "chess": "pawn knight bishop rook queen king check mate",
    }
    for d, vocab in words.items():
        w = vocab.split()
        for i in range(60):
            (root / d).mkdir(exist_ok=True)
            (root / d / f"doc{i}.txt").write_text(" ".join(w[(i * 7 + j) % len(w)] for j in range(120)) + ".\n")
    return root


def test_text_data_trains_on_its_own_held_out_targets(text_corpus, smoke_overrides, tmp_path, capsys):
    # the tests' smoke overrides say eval=none: drop it, so the data preset's own choice is what is tested
    ov = [o for o in smoke_overrides if not o.startswith(("eval=", "data.synthetic"))]
    cfg = compose(
        ov
        + [
            "data=text_dir",
            f"data.root={text_corpus}",
            "mixer=tikmix_d",
            "trainer.save_final_model=false",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    assert cfg.eval.name == "none"
    res = run(cfg)
    doms = ["chess", "recipes", "weather"]
    assert res["domains"] == doms and "eval" not in res
    assert sorted(res["target_loss"]) == [f"val/{d}" for d in doms]  # no synthetic task among the targets
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[tikmix] targets"))
    assert "every domain's held-out text" in line and all(f"val/{d} (" in line for d in doms)
    assert res["mixer_history"][0]["targets"] == ["mean(val/chess, val/recipes, val/weather)"]  # TiKMiX averages them
