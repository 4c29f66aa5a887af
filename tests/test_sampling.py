"""Sampler stages on explicit distributions (no model)."""
import numpy as np
import pytest

from pyllama_q.sampling import Sampler, SamplerParams


def logits_of(probs):
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def as_dict(ids, probs):
    return {int(i): float(p) for i, p in zip(ids, probs)}


def test_greedy_is_argmax_and_ignores_rng():
    x = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    for seed in range(3):
        s = Sampler(SamplerParams(temperature=0, seed=seed))
        assert s.sample(x) == 1


def test_full_distribution_is_softmax_over_temperature():
    x = np.array([1.0, 2.0, 0.5, -1.0], dtype=np.float32)
    s = Sampler(SamplerParams(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0))
    ids, probs = s.candidates(x)
    ref = np.exp(x / 0.5) / np.exp(x / 0.5).sum()
    got = np.zeros(4)
    got[ids] = probs
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    assert list(ids) == [1, 0, 2, 3]  # descending probability


def test_top_k_keeps_k_largest():
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000).astype(np.float32)
    s = Sampler(SamplerParams(temperature=1.0, top_k=7, top_p=1.0, min_p=0.0))
    ids, probs = s.candidates(x)
    assert sorted(ids.tolist()) == sorted(np.argsort(-x)[:7].tolist())
    ref = np.exp(x[ids] - x[ids].max())
    np.testing.assert_allclose(probs, ref / ref.sum(), rtol=1e-6)


def test_top_p_smallest_prefix_reaching_mass():
    # probs 0.5, 0.3, 0.15, 0.05: top_p=0.8 keeps {0,1}; top_p=0.81 keeps {0,1,2}
    x = logits_of([0.5, 0.3, 0.15, 0.05])
    s = Sampler(SamplerParams(temperature=1.0, top_k=0, top_p=0.79, min_p=0.0))
    d = as_dict(*s.candidates(x))
    assert set(d) == {0, 1}
    assert d[0] == pytest.approx(0.5 / 0.8, rel=1e-6)
    s = Sampler(SamplerParams(temperature=1.0, top_k=0, top_p=0.81, min_p=0.0))
    assert set(as_dict(*s.candidates(x))) == {0, 1, 2}


def test_min_p_relative_to_max():
    x = logits_of([0.6, 0.25, 0.1, 0.05])
    # threshold 0.2 * 0.6 = 0.12 keeps 0.6 and 0.25
    s = Sampler(SamplerParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2))
    d = as_dict(*s.candidates(x))
    assert set(d) == {0, 1}
    assert d[1] == pytest.approx(0.25 / 0.85, rel=1e-6)


def test_repetition_penalty_llama_cpp_rule():
    x = np.array([2.0, -2.0, 1.0, 0.0], dtype=np.float32)
    s = Sampler(SamplerParams(repeat_penalty=2.0, repeat_last_n=2))
    # only the last 2 history tokens count: 0 and 1 (token 2 is too old)
    y = s.adjusted_logits(x, history=[2, 0, 1])
    np.testing.assert_array_equal(y, np.array([1.0, -4.0, 1.0, 0.0], dtype=np.float32))
    np.testing.assert_array_equal(x, [2.0, -2.0, 1.0, 0.0])  # input untouched


def test_logit_bias_can_ban_and_force():
    x = np.array([5.0, 1.0, 0.0], dtype=np.float32)
    s = Sampler(SamplerParams(temperature=0, logit_bias={0: -np.inf}))
    assert s.sample(x) == 1
    s = Sampler(SamplerParams(temperature=0, logit_bias={2: 10.0}))
    assert s.sample(x) == 2


def test_same_seed_same_draws_and_frequencies_match():
    p = np.array([0.5, 0.3, 0.2])
    x = logits_of(p)
    params = SamplerParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    a = [Sampler(params).sample(x) for _ in range(1)]
    s1, s2 = Sampler(params), Sampler(params)
    draws1 = [s1.sample(x) for _ in range(4000)]
    draws2 = [s2.sample(x) for _ in range(4000)]
    assert draws1 == draws2 and a[0] == draws1[0]
    freq = np.bincount(draws1, minlength=3) / len(draws1)
    # 4000 draws: standard error <= 0.008; 4 sigma
    np.testing.assert_allclose(freq, p, atol=0.032)
    s3 = Sampler(SamplerParams(**{**params.__dict__, "seed": 99}))
    assert [s3.sample(x) for _ in range(4000)] != draws1


def test_large_vocab_top_k_path():
    rng = np.random.default_rng(1)
    x = rng.normal(size=128256).astype(np.float32)
    x[77] = 50.0
    s = Sampler(SamplerParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=0))
    assert s.sample(x) == 77


def test_bad_params_name_the_setting():
    with pytest.raises(ValueError, match="top_p"):
        Sampler(SamplerParams(top_p=0))


@pytest.mark.parametrize("k", [1, 40, 100])
def test_top_k_selection_matches_full_argsort(k):
    from pyllama_q.sampling import _top_k_ids

    rng = np.random.default_rng(k)
    cases = [rng.normal(size=128256), rng.standard_cauchy(size=49152),
             np.round(rng.normal(size=50000), 1),          # many ties
             np.sort(rng.normal(size=32000))]               # top-k all at the end
    for x in cases:
        x = x.astype(np.float32)
        got = _top_k_ids(x, k)
        assert len(got) == k and len(set(got.tolist())) == k
        # the k-th largest value is the same (ties may pick different ids)
        np.testing.assert_array_equal(np.sort(x[got]), np.sort(x)[-k:])


def _greedy_general(s, x, history=()):
    ids, _ = s.candidates(x, history)   # the general path: copy, bias, penalty, argmax
    return int(ids[0])


@pytest.mark.parametrize("seed", range(40))
def test_greedy_shortcut_matches_general_path(seed):
    """sample() takes a shortcut for greedy (no copy of the logits); it must
    pick what the general path picks, including ties (lowest id wins), a
    biased raw argmax, biases that overtake, ids out of range and NaN."""
    rng = np.random.default_rng(seed)
    n = 257
    x = rng.integers(-4, 5, n).astype(np.float32)   # small integers: many ties
    top = int(np.argmax(x))
    cases = [{}, {top: -1e30}, {top: -0.5}, {3: 100.0}, {int(np.argsort(-x)[1]): 0.0},
             {5: float(x[top] - x[5])},                # lands exactly on the max: a tie
             {n + 7: 50.0, -1: 50.0}, {7: 1e40}, {9: float("-inf")},
             {int(i): float(rng.normal()) for i in rng.integers(0, n, 12)}]
    for bias in cases:
        for pen in (1.0, 1.3):
            s = Sampler(SamplerParams(temperature=0, logit_bias=bias, repeat_penalty=pen))
            hist = [top, 3, 5]
            with np.errstate(over="ignore"):
                want = _greedy_general(s, x, hist)
                got = s.sample(x, hist)
            assert got == want, (bias, pen)
    y = x.copy()
    y[11] = np.nan   # np.argmax returns the first NaN; both paths must agree
    s = Sampler(SamplerParams(temperature=0, logit_bias={2: 1.0}))
    assert s.sample(y) == _greedy_general(s, y) == 11
    # the shortcut must not modify the caller's logits
    z = x.copy()
    Sampler(SamplerParams(temperature=0, logit_bias={1: 3.0})).sample(z)
    assert np.array_equal(z, x)
