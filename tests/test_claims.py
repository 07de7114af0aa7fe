"""Claim verdicts: held / not held / inconclusive from a declared test, a minimum effect and a
bootstrap interval (prealign.experiments.claims), on synthetic result rows with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from prealign import stats
from prealign.errors import ConfigError
from prealign.experiments import load, parse
from prealign.experiments.claims import check_claim, checklist_markdown


def rows_of(groups: dict, metric="acc") -> list[dict]:
    return [{"method": m, "seed": s, metric: v} for m, vals in groups.items() for s, v in enumerate(vals)]


def claim(**kw):
    return {"id": "c", "text": "t", "metric": "acc", "a": {"method": "ifa"}, "b": {"method": "fa"}, **kw}


def num(v, name):
    return dict(v.numbers)[name]


def test_clear_directional_difference_is_held_with_its_numbers():
    rows = rows_of({"ifa": [0.89, 0.90, 0.88], "fa": [0.80, 0.82, 0.81]})
    v = check_claim(claim(test="greater"), rows, axes=["method", "seed"])
    assert v.status == "held", v.reason
    assert num(v, "p") == pytest.approx(0.05)  # exact one-sided 3 vs 3
    assert num(v, "effect") == pytest.approx(0.89 - 0.81)
    assert num(v, "min effect") == pytest.approx(stats.pooled_std([[0.89, 0.90, 0.88], [0.80, 0.82, 0.81]]))
    lo, hi = num(v, "95% CI")
    assert lo <= num(v, "effect") <= hi and lo > 0
    assert num(v, "n") == "3 vs 3"


def test_a_bare_difference_of_means_is_not_held():
    """0.791 vs 0.788 with overlapping seeds: the old mean comparison said held."""
    rows = rows_of({"ifa": [0.800, 0.780, 0.793], "fa": [0.790, 0.785, 0.789]})
    v = check_claim(claim(test="greater"), rows)
    assert np.mean([0.800, 0.780, 0.793]) > np.mean([0.790, 0.785, 0.789])
    assert v.status == "inconclusive" and "not significant" in v.reason


def test_tiny_but_consistent_shift_below_the_minimum_effect_is_not_held():
    """An angle that moved 0.001° in every seed: significant, but the interval excludes 1°."""
    rows = rows_of({"ifa": [10.001, 10.002, 10.003], "fa": [10.000, 10.001, 10.0015]}, "angle")
    v = check_claim(claim(metric="angle", test="greater", min_effect=1.0), rows)
    assert v.status == "not held" and "below the minimum effect" in v.reason
    assert num(v, "min effect") == 1.0


def test_significant_in_the_opposite_direction_is_not_held():
    rows = rows_of({"ifa": [0.70, 0.71, 0.72], "fa": [0.80, 0.82, 0.81]})
    v = check_claim(claim(test="greater"), rows)
    assert v.status == "not held" and "opposite" in v.reason


def test_two_sided_at_three_seeds_can_never_hold():
    rows = rows_of({"ifa": [0.89, 0.90, 0.88], "fa": [0.80, 0.82, 0.81]})
    v = check_claim(claim(test="two-sided"), rows)
    assert v.status == "inconclusive" and "can never reach" in v.reason and "0.1" in v.reason
    assert num(v, "p") == pytest.approx(0.1)


def test_one_seed_gives_no_p():
    rows = rows_of({"ifa": [0.9], "fa": [0.80, 0.82, 0.81]})
    v = check_claim(claim(), rows)
    assert v.status == "inconclusive" and math.isnan(num(v, "p")) and "no test" in v.reason
    assert "p = —" in v.numbers_text()


def test_margin_makes_a_non_inferiority_test():
    rows = rows_of({"ifa": [0.895, 0.90, 0.897], "bp": [0.90, 0.902, 0.901]})
    c = claim(b={"method": "bp"}, margin=-0.05)
    v = check_claim(c, rows)
    assert v.status == "held" and num(v, "effect") == pytest.approx(np.mean([0.895, 0.90, 0.897]) - 0.901 + 0.05)


def test_one_group_against_a_value_needs_five_seeds():
    v3 = check_claim({"id": "x", "text": "", "metric": "angle", "a": {}, "value": 45.0, "test": "less"},
                     rows_of({"ifa": [10.0, 11.0, 12.0]}, "angle"))
    assert v3.status == "inconclusive" and "0.125" in v3.reason
    v5 = check_claim({"id": "x", "text": "", "metric": "angle", "a": {}, "value": 45.0, "test": "less"},
                     rows_of({"ifa": [10.0, 11.0, 12.0, 13.0, 10.5]}, "angle"))
    assert v5.status == "held" and num(v5, "p") == pytest.approx(1 / 32)


def test_minus_pairs_each_run_with_its_partner():
    rows = [{"dataset": d, "method": m, "seed": s, "acc": base + gain * (m == "rnp") + 0.01 * s}
            for d, base in (("mnist", 0.95), ("fashion", 0.85)) for m in ("fa", "rnp")
            for s, gain in enumerate((0.02, 0.03, 0.025))]
    c = {"id": "g", "text": "", "metric": "acc", "a": {"method": "rnp", "minus": {"method": "fa"}}, "value": 0.0}
    v = check_claim(c, rows, axes=["dataset", "method", "seed"])
    d = [0.02, 0.03, 0.025, 0.02, 0.03, 0.025]
    assert num(v, "mean") == pytest.approx(np.mean(d)) and num(v, "n") == "6"
    assert num(v, "p") == pytest.approx(stats.signed_rank(d, "greater")) and num(v, "p") == pytest.approx(1 / 64)
    # the seed spread is taken within each data set's cell: the std of (0.02, 0.03, 0.025)
    assert num(v, "min effect") == pytest.approx(np.std([0.02, 0.03, 0.025], ddof=1))
    assert v.status == "held"
    # a paired difference of two metrics of the same run
    rows = [{"seed": s, "final": 30.0 + s, "init": 1.0} for s in range(6)]
    v = check_claim({"id": "r", "text": "", "metric": "final", "a": {"minus": {"metric": "init"}}, "value": 0.0},
                    rows, axes=["seed"])
    assert num(v, "mean") == pytest.approx(np.mean([29.0 + s for s in range(6)])) and v.status == "held"


def test_trend_and_at_max_selection():
    rows = [{"method": m, "angle": a, "seed": s, "acc": 0.9 - a / 1000 + 0.001 * s}
            for m, a in (("fa", 90.0), ("ifa@60", 60.0), ("ifa@30", 30.0), ("ifa", 0.0)) for s in range(3)]
    v = check_claim({"id": "t", "text": "", "metric": "acc", "x": "angle", "test": "less"}, rows)
    assert v.status == "held" and num(v, "rho") < -0.8 and num(v, "p") < 0.01
    v = check_claim({"id": "m", "text": "", "metric": "acc", "a": {"angle": "@max"}, "b": {"angle": "@min"},
                     "test": "less"}, rows)
    assert num(v, "mean a") == pytest.approx(0.9 - 0.09 + 0.001) and v.status == "held"


def test_exact_claims_need_identical_values():
    rows = rows_of({"bp": [6, 6, 6], "fa": [0, 0, 0]}, "w_reads")
    c = {"id": "e", "text": "", "test": "exact", "check": "mean('w_reads', method='bp') > 0 and mean('w_reads', method='fa') == 0"}
    assert check_claim(c, rows).status == "held"
    rows = rows_of({"bp": [6, 5, 6], "fa": [0, 0, 0]}, "w_reads")
    assert check_claim(c, rows).status == "inconclusive"
    with pytest.raises(ConfigError):
        check_claim({**c, "test": "greater"}, rows)  # an expression is not a statistical test
    with pytest.raises(ConfigError):
        check_claim({**c, "check": "__import__('os').system('true')"}, rows)


def test_all_and_any_combine_three_valued():
    rows = rows_of({"ifa": [0.89, 0.90, 0.88], "fa": [0.80, 0.82, 0.81], "bp": [0.70, 0.71, 0.72]})
    good = {"a": {"method": "ifa"}, "b": {"method": "fa"}}
    bad = {"a": {"method": "bp"}, "b": {"method": "fa"}}
    unsure = {"a": {"method": "ifa"}, "b": {"method": "fa"}, "test": "two-sided"}
    base = {"id": "k", "text": "", "metric": "acc"}
    assert check_claim({**base, "all": [good, good]}, rows).status == "held"
    assert check_claim({**base, "all": [good, bad]}, rows).status == "not held"
    assert check_claim({**base, "all": [good, unsure]}, rows).status == "inconclusive"
    assert check_claim({**base, "any": [bad, good]}, rows).status == "held"
    assert check_claim({**base, "any": [bad, unsure]}, rows).status == "inconclusive"
    missing = {"a": {"method": "rnp"}, "b": {"method": "fa"}}
    assert check_claim({**base, "all": [good, missing]}, rows).status == "not run"


def test_declarations_are_validated_when_the_experiment_is_parsed():
    head = '[paper]\npaper = "ifa"\nref = "x"\ntitle = "t"\n[budget.smoke]\n[budget.quick]\n[budget.paper]\n'
    with pytest.raises(ConfigError, match="exact"):
        parse(head + '[[claim]]\nid = "a"\ntext = "t"\ncheck = "mean(\'acc\') > 0"\n')
    with pytest.raises(ConfigError, match="declares no test"):
        parse(head + '[[claim]]\nid = "a"\ntext = "t"\nmetric = "acc"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        parse(head + '[[claim]]\nid = "a"\ntext = "t"\nmetric = "acc"\nvalue = 1\nalfa = 0.1\n')
    with pytest.raises(ConfigError, match="test"):
        parse(head + '[[claim]]\nid = "a"\ntext = "t"\nmetric = "acc"\nvalue = 1\ntest = "bigger"\n')


def test_stand_in_data_is_named_in_the_claim_row():
    from prealign.experiments.runner import stand_in_text

    exp = load("ifa_fig4")
    assert stand_in_text(exp, "quick", []) == "mnist5k in place of the paper's cifar10"
    assert stand_in_text(exp, "paper", []) == ""
    note = "second digit source: uci-digits (8x8 resized to 28x28, USPS stand-in)"
    assert note in stand_in_text(load("rnp_fig_s17"), "paper", ["meta-loss tasks: mnist", note])
    rows = rows_of({"ifa": [0.89, 0.90, 0.88], "fa": [0.80, 0.82, 0.81]})
    v = check_claim(claim(), rows, "ifa_fig4", stand_in="mnist5k in place of the paper's cifar10")
    md = checklist_markdown([v])
    assert "stand-in: mnist5k in place of the paper's cifar10" in md and "✅ held" in md and "0 inconclusive" in md
