"""Claim verdicts (prealign.experiments.claims and its modules) on synthetic result rows with known
answers: the seed is the unit, designs that cannot decide say so, budget artefacts give no
verdict, "not held" needs the same evidence as "held", one test is one row; and the audit."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from prealign import stats
from prealign.errors import ConfigError
from prealign.experiments import parse
from prealign.experiments.audit import audit
from prealign.experiments.claims import check_claim, checklist_markdown

AXES = ["method", "seed"]


def rows_of(groups: dict, metric="acc", **extra) -> list[dict]:
    """One row per (method, seed): ``groups = {method: [value per seed]}``."""
    return [{"method": m, "seed": s, metric: v, **extra} for m, vals in groups.items() for s, v in enumerate(vals)]


def claim(**kw):
    return {"id": "c", "text": "t", "metric": "acc", "a": {"method": "ifa"}, "b": {"method": "fa"}, **kw}


def num(v, name):
    return dict(v.numbers)[name]


# ------------------------------------------------------------------------------ unit = seed
def test_paired_per_seed_and_its_exact_numbers():
    ifa, fa = [0.89, 0.90, 0.88, 0.91, 0.87], [0.80, 0.82, 0.81, 0.79, 0.83]
    v = check_claim(claim(), rows_of({"ifa": ifa, "fa": fa}), axes=AXES)
    d = np.subtract(ifa, fa)
    assert v.status == "held", v.reason
    assert num(v, "n") == "5 seeds" and v.parts[0]["n"] == 5
    assert num(v, "p") == pytest.approx(stats.signed_rank(d, "greater")) == pytest.approx(1 / 32)
    assert num(v, "per seed") == pytest.approx(tuple(d))
    lo, hi = num(v, "90% CI")  # the exact interval of the same test: [min, max] of 5 differences
    assert (lo, hi) == pytest.approx((d.min(), d.max()))


def test_pooled_levels_are_averaged_within_the_seed():
    """Two data sets × 5 seeds are 5 units, not 10: the audit's 'more replicates than seeds'."""
    rows = [{"dataset": ds, "method": m, "seed": s, "acc": base + (0.02 + 0.001 * s) * (m == "rnp")}
            for ds, base in (("mnist", 0.9), ("fashion", 0.8)) for m in ("fa", "rnp") for s in range(5)]
    c = {"id": "g", "text": "", "metric": "acc", "a": {"method": "rnp", "minus": {"method": "fa"}}, "value": 0.0}
    v = check_claim(c, rows, axes=["dataset", "method", "seed"])
    assert num(v, "n") == "5 seeds" and num(v, "p") == pytest.approx(1 / 32) and v.status == "held"
    # one seed pooling 16 cells is one unit: the design cannot decide (ifa-3a's old n = 16)
    rows = [{"alpha_b": a, "method": m, "seed": 0, "acc": 0.5 + 0.1 * (m == "ifa")}
            for a in range(16) for m in ("fa", "ifa")]
    v = check_claim({**c, "a": {"method": "ifa", "minus": {"method": "fa"}}}, rows, axes=["alpha_b", "method", "seed"])
    assert v.status == "undecidable" and "needs ≥ 5 seeds" in v.reason and num(v, "n") == "1 seed"


def test_identical_runs_are_counted_once():
    """σ = 0 under Gaussian and uniform noise trains the same network: kept once per seed. A seed
    value copied onto 4 runs is one number (rnp-6a's old n = 8 from 2 values)."""
    rows = []
    for s in range(5):
        for dist in ("gaussian", "uniform"):
            rows.append({"seed": s, "noise_distribution": dist, "noise_std": 0.0, "angle": 89.0 + 0.1 * s,
                         "fingerprint": f"zero-{s}"})  # the same recorded curves
            rows.append({"seed": s, "noise_distribution": dist, "noise_std": 1.0, "angle": 60.0 + s + (dist == "uniform"),
                         "fingerprint": f"{dist}-{s}"})
    c = {"id": "a1", "text": "", "metric": "angle", "a": {"noise_std": 1.0}, "b": {"noise_std": 0.0}, "test": "less",
         "min_effect": 10.0}
    v = check_claim(c, rows, axes=["noise_distribution", "noise_std", "seed"])
    assert v.status == "held" and num(v, "n") == "5 seeds"
    assert num(v, "effect") == pytest.approx(np.mean([89.0 + 0.1 * s - (60.5 + s) for s in range(5)]))
    two_seeds = [r for r in rows if r["seed"] < 2]
    v = check_claim(c, two_seeds, axes=["noise_distribution", "noise_std", "seed"])
    assert v.status == "undecidable" and num(v, "n") == "2 seeds"  # not "4 vs 4"


def test_disjoint_seeds_or_independent_networks_are_compared_unpaired():
    rows = [{"method": "ifa", "seed": s, "acc": 0.9 + 0.001 * s} for s in range(3)]
    rows += [{"method": "fa", "seed": 10 + s, "acc": 0.8 + 0.001 * s} for s in range(3)]
    v = check_claim(claim(), rows, axes=AXES)
    assert num(v, "n") == "3 vs 3 seeds (independent)" and num(v, "p") == pytest.approx(0.05)
    assert v.status == "held"
    rows = rows_of({"ifa": [0.9, 0.91, 0.92], "fa": [0.8, 0.81, 0.82]}, same_init=False)
    assert num(check_claim(claim(), rows, axes=AXES), "n") == "3 vs 3 seeds (independent)"


def test_trend_is_one_rho_per_seed():
    rows = [{"method": m, "angle": a, "seed": s, "acc": 0.9 - a / 1000 + 0.01 * ((s + k) % 2)}
            for k, (m, a) in enumerate((("fa", 90.0), ("ifa@60", 60.0), ("ifa@30", 30.0), ("ifa", 0.0))) for s in range(5)]
    v = check_claim({"id": "t", "text": "", "metric": "acc", "x": "angle", "test": "less"}, rows)
    rho = [stats.spearman([90, 60, 30, 0], [r["acc"] for r in rows if r["seed"] == s]) for s in range(5)]
    assert num(v, "n") == "5 seeds" and num(v, "effect") == pytest.approx(-np.mean(rho))
    assert v.status == "held" and num(v, "p") == pytest.approx(1 / 32)


# ------------------------------------------------------------------------------ decidable by design
@pytest.mark.parametrize("n, status", [(3, "undecidable"), (4, "undecidable"), (5, "held")])
def test_a_design_that_cannot_reach_alpha_is_undecidable_not_a_verdict(n, status):
    v = check_claim(claim(), rows_of({"ifa": [0.9 + 0.01 * i for i in range(n)], "fa": [0.5] * n}), axes=AXES)
    assert v.status == status
    if status == "undecidable":
        assert f"needs ≥ 5 seeds" in v.reason and num(v, "smallest p") == pytest.approx(2.0 ** -n)
    # the opposite data cannot make it "not held" either: the same design cannot decide that
    w = check_claim(claim(), rows_of({"ifa": [0.5] * n, "fa": [0.9 + 0.01 * i for i in range(n)]}), axes=AXES)
    assert w.status == ("not held" if status == "held" else "undecidable")


def test_two_sided_needs_six_seeds():
    v = check_claim(claim(test="two-sided"), rows_of({"ifa": [0.9] * 5, "fa": [0.8] * 5}), axes=AXES)
    assert v.status == "undecidable" and "needs ≥ 6 seeds" in v.reason


# ------------------------------------------------------------------------------ symmetric rule
def test_not_held_needs_a_test_the_other_way_and_says_which():
    # RNP 87.96° vs FA 89.21°: the claimed way, but far from the claimed 10°: not "opposite direction"
    rows = rows_of({"rnp": [87.9, 88.0, 87.95, 88.1, 87.85], "fa": [89.2, 89.3, 89.1, 89.25, 89.2]}, "angle")
    c = {"id": "s4", "text": "", "metric": "angle", "a": {"method": "rnp"}, "b": {"method": "fa"}, "test": "less",
         "margin": -10.0, "trained": False}
    v = check_claim(c, rows, axes=AXES)
    assert v.status == "not held" and "opposite" not in v.reason and "smaller than the claimed margin" in v.reason
    # significantly opposite: says so
    v = check_claim(claim(), rows_of({"ifa": [0.70, 0.71, 0.72, 0.73, 0.69], "fa": [0.80, 0.82, 0.81, 0.8, 0.83]}),
                    axes=AXES)
    assert v.status == "not held" and "opposite direction" in v.reason
    # a bare difference of means with mixed signs is neither
    v = check_claim(claim(), rows_of({"ifa": [0.80, 0.78, 0.793, 0.80, 0.79], "fa": [0.79, 0.785, 0.789, 0.81, 0.78]}),
                    axes=AXES)
    assert v.status == "inconclusive" and "significant neither way" in v.reason


def test_margin_makes_a_non_inferiority_test():
    ifa, bp = [0.895, 0.90, 0.897, 0.899, 0.896], [0.90, 0.902, 0.901, 0.903, 0.90]
    v = check_claim(claim(b={"method": "bp"}, margin=-0.02), rows_of({"ifa": ifa, "bp": bp}), axes=AXES)
    assert v.status == "held" and num(v, "effect") == pytest.approx(np.mean(np.subtract(ifa, bp)) + 0.02)


def test_significant_but_below_the_seed_spread_is_inconclusive():
    fa = [0.60, 0.70, 0.80, 0.90, 0.75]
    v = check_claim(claim(), rows_of({"ifa": [x + 0.01 for x in fa], "fa": fa}), axes=AXES)
    assert v.status == "inconclusive" and "seed-to-seed spread" in v.reason


# ------------------------------------------------------------------------------ run health
def trained(groups: dict, **row) -> list[dict]:
    return [{**r, "chance_acc": 0.1, "epochs_run": 20, "late_gain": 0.0, "stopped_early": False, "best_epoch": 15,
             "best_test_acc": r["acc"], **row} for r in rows_of(groups)]


def test_a_method_at_chance_makes_the_claim_budget_limited():
    rows = trained({"ifa": [0.60, 0.62, 0.61, 0.63, 0.64], "fa": [0.10, 0.11, 0.10, 0.12, 0.09]})
    v = check_claim(claim(), rows, axes=AXES)
    assert v.status == "inconclusive" and v.reason.startswith("budget-limited: fa at chance")
    assert num(v, "p") == pytest.approx(1 / 32)  # the test still shows what it found
    assert check_claim(claim(trained=False), rows, axes=AXES).status == "held"  # a pre-training quantity


def test_still_improving_and_patience_at_the_first_epoch_are_budget_limited():
    rows = trained({"ifa": [0.90, 0.91, 0.92, 0.93, 0.94], "fa": [0.60, 0.61, 0.62, 0.63, 0.64]})
    for r in rows:
        if r["method"] == "fa":
            r["late_gain"] = 0.05
    v = check_claim(claim(), rows, axes=AXES)
    assert v.status == "inconclusive" and "fa still improving at its last epoch" in v.reason
    rows = trained({"ifa": [0.90, 0.91, 0.92, 0.93, 0.94], "fa": [0.60, 0.61, 0.62, 0.63, 0.64]})
    rows[-1].update(stopped_early=True, best_epoch=0, epochs_run=4)
    v = check_claim(claim(), rows, axes=AXES)
    assert v.status == "inconclusive" and "stopped by patience with best epoch ≤ 1" in v.reason


def test_learns_somewhere_allows_untrainable_cells_but_not_an_untrained_method():
    rows = []
    for cell, fa in (("easy", 0.8), ("hard", 0.1)):
        for s in range(5):
            for m, acc in (("fa", fa), ("ifa", 0.85)):
                rows.append({"cell": cell, "method": m, "seed": s, "acc": acc + 0.001 * s, "best_test_acc": acc,
                             "chance_acc": 0.1, "epochs_run": 20, "late_gain": 0.0, "best_epoch": 10})
    c = claim(a={"method": "ifa", "cell": "hard"}, b={"method": "fa", "cell": "hard"})
    axes = ["cell", "method", "seed"]
    assert check_claim(c, rows, axes=axes).status == "inconclusive"  # "each": fa at chance in the hard cell
    assert check_claim({**c, "learns": "somewhere"}, rows, axes=axes).status == "held"
    for r in rows:
        r["best_test_acc"] = 0.1 if r["method"] == "fa" else r["best_test_acc"]
    assert "at chance in 2 of 2" in check_claim({**c, "learns": "somewhere"}, rows, axes=axes).reason


# ------------------------------------------------------------------------------ compound, exact, declarations
def test_all_and_any_combine_and_undecidable_parts_block_both_verdicts():
    rows = rows_of({"ifa": [0.89, 0.90, 0.88, 0.87, 0.91], "fa": [0.80, 0.82, 0.81, 0.8, 0.79],
                    "bp": [0.70, 0.71, 0.72, 0.69, 0.7]})
    good, bad = {"a": {"method": "ifa"}, "b": {"method": "fa"}}, {"a": {"method": "bp"}, "b": {"method": "fa"}}
    base = {"id": "k", "text": "", "metric": "acc"}
    assert check_claim({**base, "all": [good, good]}, rows, axes=AXES).status == "held"
    assert check_claim({**base, "all": [good, bad]}, rows, axes=AXES).status == "not held"
    assert check_claim({**base, "any": [bad, good]}, rows, axes=AXES).status == "held"
    unsure = {**good, "test": "two-sided"}  # 5 seeds cannot decide a two-sided test
    assert check_claim({**base, "all": [bad, unsure]}, rows, axes=AXES).status == "undecidable"
    missing = {"a": {"method": "rnp"}, "b": {"method": "fa"}}
    assert check_claim({**base, "all": [good, missing]}, rows, axes=AXES).status == "not run"


def test_exact_claims_need_identical_values():
    c = {"id": "e", "text": "", "test": "exact", "check": "mean('w_reads', method='bp') > 0 and mean('w_reads', method='fa') == 0"}
    assert check_claim(c, rows_of({"bp": [6, 6, 6], "fa": [0, 0, 0]}, "w_reads")).status == "held"
    assert check_claim(c, rows_of({"bp": [6, 5, 6], "fa": [0, 0, 0]}, "w_reads")).status == "inconclusive"
    with pytest.raises(ConfigError):
        check_claim({**c, "test": "greater"}, [])
    with pytest.raises(ConfigError):
        check_claim({**c, "check": "__import__('os').system('true')"}, [])


def test_declarations_are_validated_when_the_experiment_is_parsed():
    head = '[paper]\npaper = "ifa"\nref = "x"\ntitle = "t"\n[budget.smoke]\n[budget.quick]\n[budget.paper]\n'
    for body, match in (('check = "mean(\'acc\') > 0"\n', "exact"), ('metric = "acc"\n', "declares no test"),
                        ('metric = "acc"\nvalue = 1\nalfa = 0.1\n', "unknown key"),
                        ('metric = "acc"\nvalue = 1\ntest = "bigger"\n', "test"),
                        ('metric = "acc"\nvalue = 1\nlearns = "always"\n', "learns"),
                        ('metric = "acc"\nvalue = 1\nskip = { quick = "" }\n', "skip")):
        with pytest.raises(ConfigError, match=match):
            parse(head + '[[claim]]\nid = "a"\ntext = "t"\n' + body)


def test_a_budget_can_skip_a_claim_with_its_reason():
    c = claim(skip={"quick": "LeNet under FA needs > 60 epochs"})
    v = check_claim(c, rows_of({"ifa": [0.9] * 5, "fa": [0.8] * 5}), axes=AXES, budget="quick")
    assert v.status == "not run" and "LeNet under FA" in v.reason


def test_stand_in_and_repeats_in_the_checklist():
    rows = rows_of({"ifa": [0.89, 0.90, 0.88, 0.87, 0.91], "fa": [0.80, 0.82, 0.81, 0.8, 0.79]})
    v = check_claim(claim(), rows, "ifa_fig4", axes=AXES, stand_in="mnist5k in place of the paper's cifar10")
    w = check_claim({**claim(), "id": "d"}, rows, "ifa_fig9", axes=AXES, same_as="c (ifa_fig4)")
    md = checklist_markdown([v, w])
    assert "stand-in: mnist5k in place of the paper's cifar10" in md and "✅ held" in md
    assert "↪ see **c (ifa_fig4)**" in md and "1 held" in md and "(of 1 claims; 1 row(s) repeat" in md


# ------------------------------------------------------------------------------ the audit
def test_the_audit_finds_each_violation_from_the_recorded_numbers():
    rows = trained({"ifa": [0.89, 0.90, 0.88, 0.87, 0.91], "fa": [0.80, 0.82, 0.81, 0.8, 0.79]}, run_key="k")
    v = check_claim(claim(), rows, "e", axes=AXES)
    assert v.status == "held" and audit([v]) == []
    d = v.to_dict()
    bad_units = {**d, "parts": [{**d["parts"][0], "n": 10}]}
    assert "tests 10 units but its runs hold 5 distinct seed(s)" in audit([bad_units])[0]
    bad_design = {**d, "parts": [{**d["parts"][0], "smallest_p": 0.125}]}
    assert "smallest p 0.125 exceeds" in audit([bad_design])[0]
    twin = {**d, "id": "other"}
    assert "share a test on the same numbers" in audit([d, twin])[0]
    assert audit([d, {**twin, "same_as": "c (e)"}]) == []  # a pointer row is not a second test
    chance = {**d, "parts": [{**d["parts"][0], "methods": [{**m, "cells": [{**m["cells"][0], "acc": 0.11}]}
                                                          for m in d["parts"][0]["methods"]]}]}
    assert any("which is at chance" in p for p in audit([chance]))
    assert audit([{**chance, "status": "inconclusive"}]) == []  # no verdict, nothing to object to


# ------------------------------------------------------------------------------ the statistics behind it
def _walsh_bounds(d, alpha):
    """The interval by brute force: every shift neither one-sided signed-rank test rejects."""
    grid = np.linspace(min(d) - 1, max(d) + 1, 4001)
    keep = [s for s in grid if stats.signed_rank(np.asarray(d) - s, "greater") > alpha
            and stats.signed_rank(np.asarray(d) - s, "less") > alpha]
    return min(keep), max(keep)


@pytest.mark.parametrize("d", [[0.3, 1.1, 2.0, 2.4, 3.9], [0.5, -0.2, 1.4, 0.9, 2.2, 1.7, 0.1]])
def test_shift_interval_inverts_the_exact_test(d):
    lo, hi = stats.shift_interval(d, 0.05)
    blo, bhi = _walsh_bounds(d, 0.05)
    assert lo == pytest.approx(blo, abs=2e-3) and hi == pytest.approx(bhi, abs=2e-3)  # the grid step
    assert stats.seeds_needed("one-sample") == 5 and stats.seeds_needed("two-sample") == 3


def test_signed_rank_p_of_per_seed_effects_matches_sign_flip_enumeration():
    d = np.array([0.4, -0.1, 0.9, 0.3, 0.7])
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    obs = np.sum(ranks[d > 0])
    flips = [np.sum(ranks[np.array(s) > 0]) for s in itertools.product([-1, 1], repeat=5)]
    assert stats.signed_rank(d, "greater") == pytest.approx(np.mean([f >= obs for f in flips]))
