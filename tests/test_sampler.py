import numpy as np
import pytest

from tikmix.errors import ConfigError, DataError
from tikmix.sampler import MixtureSampler, check_budget, mixture_counts


@pytest.mark.parametrize("m,batch", [(2, 8), (7, 8), (6, 32), (26, 16), (3, 1)])
def test_counts_nonnegative_sum_to_batch_and_exact_in_expectation(m, batch):
    rng = np.random.default_rng(0)
    for trial in range(20):
        w = rng.dirichlet(np.full(m, 0.3))
        # Aioli-style smoothed one-hot with 0.75 on one group, the case its public code got wrong for m=7
        if trial % 2:
            w = np.full(m, 0.25 / (m - 1)) if m > 1 else np.ones(1)
            w[trial % m] = 0.75 if m > 1 else 1.0
        draws = np.stack([mixture_counts(w, batch, np.random.default_rng(k)) for k in range(4000)])
        assert (draws >= 0).all()
        assert (draws.sum(1) == batch).all()
        # each count is floor or ceil of batch*w
        assert (draws >= np.floor(batch * w) - 1e-9).all() and (draws <= np.ceil(batch * w) + 1e-9).all()
        mean = draws.mean(0)
        # residual sampling variance <= 1/4 per domain: 4000 draws -> std of mean <= 0.008
        np.testing.assert_allclose(mean, batch * w, atol=0.04)


def test_counts_degenerate_weights():
    w = np.array([0.0, 1.0, 0.0])
    assert mixture_counts(w, 8, np.random.default_rng(1)).tolist() == [0, 8, 0]
    with pytest.raises(ValueError):
        mixture_counts(np.array([-0.1, 1.1]), 8, np.random.default_rng(0))


def _sampler(seed=3):
    arrays = [np.arange(1000, dtype=np.uint16) + 1000 * i for i in range(3)]
    return MixtureSampler(arrays, seq_len=16, batch_size=12, seed=seed, domains=["a", "b", "c"])


def test_batches_deterministic_in_seed_and_step_and_rows_come_from_their_domain():
    s = _sampler()
    w = np.array([0.5, 0.25, 0.25])
    t1, d1 = s.batch(5, w)
    t2, d2 = _sampler().batch(5, w)
    assert np.array_equal(t1, t2) and np.array_equal(d1, d2)
    t3, _ = s.batch(6, w)
    assert not np.array_equal(t1, t3)
    assert t1.shape == (12, 17)
    assert ((t1 // 1000) == d1[:, None]).all()  # every window lies inside its domain's array
    assert (np.diff(t1, axis=1) == 1).all()  # contiguous windows


def test_sampler_rejects_domain_shorter_than_a_window():
    with pytest.raises(DataError, match="'b'"):
        MixtureSampler([np.zeros(100), np.zeros(5)], seq_len=16, batch_size=4, seed=0, domains=["a", "b"])


def test_budget_checks_name_the_field():
    with pytest.raises(ConfigError, match="budget.seq_len"):
        check_budget(10_000, 1024, 4, 4, max_pos=512)
    with pytest.raises(ConfigError, match="budget.total_tokens"):
        check_budget(100, 64, 4, 4, max_pos=512)
    with pytest.raises(ConfigError, match="budget.micro_batch"):
        check_budget(10_000, 64, 6, 4, max_pos=512)
    assert check_budget(10_000, 64, 4, 4, max_pos=512) == 10_000 // 256
