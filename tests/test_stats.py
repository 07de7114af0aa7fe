"""The statistics every table and claim uses (prealign.stats), against exact answers and
independent brute-force enumerations over all splits / sign flips / pairings."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import ranksums

from prealign import stats


def _u(a, b) -> float:
    """Mann–Whitney U of a over b by pairwise comparison (ties count ½): an independent rank sum."""
    return sum((x > y) + 0.5 * (x == y) for x in a for y in b)


def brute_ranksum(a, b, alternative):
    """p over every C(n, k) split of the pooled values (equally likely under H0)."""
    pooled = list(a) + list(b)
    obs = _u(a, b)
    ge = le = total = 0
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        xa = [pooled[i] for i in idx]
        xb = [pooled[i] for i in range(len(pooled)) if i not in idx]
        u = _u(xa, xb)
        ge += u >= obs - 1e-9
        le += u <= obs + 1e-9
        total += 1
    g, l = ge / total, le / total
    return {"greater": g, "less": l, "two-sided": min(1.0, 2 * min(g, l))}[alternative]


def _midranks(v):
    v = np.asarray(v, float)
    return np.array([np.sum(v < x) + (np.sum(v == x) + 1) / 2 for x in v])


def brute_signed_rank(d, alternative):
    """p over all 2^n sign flips of the signed mid-ranks of |d|."""
    d = np.asarray(d, float)
    r = _midranks(np.abs(d)) * (d != 0)
    obs = float(np.sum(r * np.sign(d)))
    stats_ = [float(np.sum(r * np.array(s))) for s in itertools.product((-1, 1), repeat=d.size)]
    g = np.mean([s >= obs - 1e-9 for s in stats_])
    l = np.mean([s <= obs + 1e-9 for s in stats_])
    return {"greater": g, "less": l, "two-sided": min(1.0, 2 * min(g, l))}[alternative]


def test_three_vs_three_separated_is_exactly_one_tenth():
    a, b = [0.91, 0.92, 0.93], [0.81, 0.82, 0.83]
    assert stats.ranksum(a, b) == pytest.approx(0.1, abs=1e-12)
    assert stats.ranksum(a, b, "greater") == pytest.approx(0.05, abs=1e-12)
    assert stats.ranksum(a, b, "less") == pytest.approx(1.0, abs=1e-12)
    assert ranksums(a, b).pvalue < 0.05  # the normal approximation the old code printed
    assert stats.min_p("two-sample", 3, 3, "two-sided") == pytest.approx(0.1)
    assert stats.min_p("two-sample", 3, 3, "greater") == pytest.approx(0.05)
    assert stats.min_p("one-sample", 3, alternative="greater") == pytest.approx(0.125)


@pytest.mark.parametrize("seed", range(8))
def test_ranksum_matches_enumeration_over_all_splits(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(2, 6, size=2)
    a = np.round(rng.normal(0.3 * (seed % 3), 1, n), 1 if seed % 2 else 4)  # odd seeds: ties
    b = np.round(rng.normal(0, 1, m), 1 if seed % 2 else 4)
    for alt in ("greater", "less", "two-sided"):
        assert stats.ranksum(a, b, alt) == pytest.approx(brute_ranksum(a, b, alt), abs=1e-9), (a, b, alt)


def test_ranksum_with_heavy_ties_matches_enumeration():
    a, b = [1, 1, 2, 3], [1, 2, 2, 0]
    for alt in ("greater", "less", "two-sided"):
        assert stats.ranksum(a, b, alt) == pytest.approx(brute_ranksum(a, b, alt), abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_signed_rank_matches_enumeration_over_all_sign_flips(seed):
    rng = np.random.default_rng(100 + seed)
    d = np.round(rng.normal(0.4, 1, rng.integers(2, 9)), 1 if seed % 2 else 5)
    for alt in ("greater", "less", "two-sided"):
        assert stats.signed_rank(d, alt) == pytest.approx(brute_signed_rank(d, alt), abs=1e-9), (d, alt)


def test_trend_p_matches_enumeration_over_all_pairings():
    x = [0, 0, 30, 30, 60, 90]
    y = [0.9, 0.88, 0.87, 0.89, 0.84, 0.80]
    rho, p = stats.spearman_trend(x, y, "less")
    rx, ry = _midranks(x), _midranks(y)
    obs = np.corrcoef(rx, ry)[0, 1]
    perms = [np.corrcoef(rx, ry[list(q)])[0, 1] for q in itertools.permutations(range(6))]
    assert rho == pytest.approx(obs)
    assert p == pytest.approx(np.mean([v <= obs + 1e-9 for v in perms]), abs=1e-9)


def test_no_p_for_a_single_value_and_sample_std():
    assert math.isnan(stats.ranksum([0.9], [0.8, 0.7]))
    assert math.isnan(stats.signed_rank([0.3]))
    assert stats.fmt_p(stats.ranksum([0.9], [0.8, 0.7])) == "—"
    m, s = stats.mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3) and s == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert stats.fmt_values([0.5, 0.6, 0.7], scale=100) == "60.00 ± 10.00 (n=3)"
    assert stats.fmt_values([0.5], scale=100) == "50.00 (n=1)"
    assert stats.pooled_std([[1, 2, 3], [10, 12, 14], [7]]) == pytest.approx(math.sqrt((2 * 1 + 2 * 4) / 4))


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 1.0, 400)
    lo, hi = stats.bootstrap_ci(lambda u: u.mean(), [x])
    assert (lo, hi) == stats.bootstrap_ci(lambda u: u.mean(), [x])  # deterministic
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.2 * half) and hi == pytest.approx(x.mean() + half, abs=0.2 * half)
    assert all(math.isnan(v) for v in stats.bootstrap_ci(lambda u, v: u.mean() - v.mean(), [[1.0], [2.0, 3.0]]))


def test_compare_p_pairs_runs_by_seed_and_counts_each_seed_once():
    """A seed's methods share their initial network: p pairs them by the seed in each run's config,
    whatever order the runs come in, and seeds only one method ran are left out."""
    from prealign.reports.compare import summarize
    from prealign.run.trainer import TrainResult

    def res(acc, seed):
        return TrainResult(curves=[{"epoch": 0}], best_test_acc=acc, best_epoch=3, epochs_run=5, config={"seed": seed})

    bp = [0.90, 0.80, 0.95, 0.85, 0.70, 0.99]
    fa = [v - 0.01 * (s + 1) for s, v in enumerate(bp[:5])]  # fa below bp on every seed it ran (0-4)
    groups = {"bp": [res(v, s) for s, v in enumerate(bp)][::-1], "fa": [res(v, s) for s, v in enumerate(fa)]}
    p = next(r for r in summarize(groups) if r["method"] == "fa")["p_vs_bp"]
    assert p == pytest.approx(stats.signed_rank([-0.01 * (s + 1) for s in range(5)])) == pytest.approx(0.0625)


def test_compare_summary_uses_exact_p_sample_std_and_labels_selection():
    from types import SimpleNamespace

    from prealign.reports.compare import summarize, table
    from prealign.run.trainer import TrainResult

    def res(acc, **kw):
        return TrainResult(curves=[{"epoch": 0}], best_test_acc=acc, best_epoch=3, epochs_run=5, **kw)

    groups = {"bp": [res(0.91), res(0.92), res(0.93)], "fa": [res(0.81), res(0.82), res(0.83)],
              "ifa": [res(0.88)]}
    rows = summarize(groups)
    fa = next(r for r in rows if r["method"] == "fa")
    # exact two-sided signed-rank of the 3 seed-paired differences (all -0.1): 2/8 (the unpaired rank-sum said 0.1)
    assert fa["p_vs_bp"] == pytest.approx(0.25) and fa["best_test_acc_std"] == pytest.approx(0.01)
    assert fa["selection"] == "test"  # results stored before TrainResult.selection: the papers' protocol
    assert math.isnan(next(r for r in rows if r["method"] == "ifa")["p_vs_bp"])  # one seed: no p
    columns, cells = table(rows)
    fa_cells = dict(zip(columns, cells[1]))
    assert fa_cells["selection"] == "test" and fa_cells["test acc (%)"] == "82.00 ± 1.00 (n=3)"
    assert fa_cells["p vs bp"] == "0.250" and dict(zip(columns, cells[2]))["p vs bp"] == "—"
    val = [SimpleNamespace(**{**vars(r), "selection": "val"}) for r in groups["fa"]]
    assert summarize({"fa": val})[0]["selection"] == "val"
