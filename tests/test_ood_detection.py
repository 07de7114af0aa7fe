"""OOD detection (prealign.analysis.ood_detection): scores, AUROC and FPR@95%TPR against closed forms
and scikit-learn, the offline OOD sets, and `prealign analyze ood-detection --json`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from prealign.analysis import ood_detection as od
from prealign.cli import main as cli_main
from prealign.data import load
from prealign.errors import PrealignError
from prealign.run.config import RunConfig, run
from prealign.run.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def test_auroc_identical_distributions_is_one_half_and_separated_is_one():
    same = np.linspace(0, 1, 101)
    assert od.auroc(same, same) == 0.5  # every pair tied
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20_000), rng.normal(size=20_000)
    assert od.auroc(a, b) == pytest.approx(0.5, abs=0.01)
    assert od.auroc(rng.uniform(1, 2, 50), rng.uniform(0, 1, 50)) == 1.0
    assert od.auroc(rng.uniform(0, 1, 50), rng.uniform(1, 2, 50)) == 0.0


def test_auroc_is_the_pairwise_probability_and_matches_sklearn():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    pairwise = np.mean((a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :]))  # Mann-Whitney U / (n m)
    assert od.auroc(a, b) == pytest.approx(pairwise, abs=1e-12)
    assert od.auroc(a, b) == roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[a, b])


def test_fpr_at_95_tpr_closed_form():
    # in-distribution scores 1..20: the 95 % TPR threshold is 2 (keeps 19 of 20); OOD scores 0.5, 1.5, ..., 9.5:
    # those >= 2 are 2.5 ... 9.5 = 8 of 10
    ins, outs = np.arange(1, 21, dtype=float), np.arange(10) + 0.5
    assert od.fpr_at_tpr(ins, outs) == pytest.approx(0.8)
    assert od.fpr_at_tpr(ins, outs, tpr=1.0) == pytest.approx(0.9)  # threshold 1: all OOD but 0.5 pass
    assert od.fpr_at_tpr(ins + 100, outs) == 0.0


def test_scores():
    z = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(od.msp_score(z), [0.5, 1 / (1 + np.exp(-10)), 1 / (1 + np.exp(-1))], rtol=1e-12)
    np.testing.assert_allclose(od.energy_score(z), np.log(np.exp(z.double().numpy()).sum(1)), rtol=1e-12)
    with pytest.raises(PrealignError, match="energy"):
        od.score(z, "entropy")


def test_ood_sets_are_offline_and_shaped_like_the_data():
    data = load("mnist5k")
    sets, skipped = od.ood_sets(data, "mnist5k", n=50, seed=0)
    assert {"digits", "gaussian", "uniform", "translated", "scaled", "rotated"} <= set(sets)
    assert "mnist5k" not in sets
    assert ("fashion-mnist" in sets) != ("fashion-mnist" in skipped)  # present, or said why not
    for name, x in sets.items():
        assert tuple(x.shape) == (50, 1, 28, 28), name
        assert 0 <= float(x.min()) and float(x.max()) <= 1, name
    again, _ = od.ood_sets(data, "mnist5k", n=50, seed=0)
    assert all(torch.equal(sets[k], again[k]) for k in sets)


def test_cli_ood_detection_json(tmp_path, capsys):
    store = Store(tmp_path)
    cfg = RunConfig(method="bp", dataset="digits", train_subset=200, hidden=(16,), epochs=2, batch_size=32, lr=1e-2,
                    device="cpu", val_fraction=0.0)
    rid = run(cfg, store, progress=False).run_id
    code = cli_main(["analyze", "ood-detection", str(rid), "--out", str(tmp_path), "--samples", "100", "--json",
                     "--save", str(tmp_path / "fig")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    r = out["runs"][str(rid)]
    assert r["label"] == "bp" and {"gaussian", "uniform", "rotated"} <= set(r["sets"])
    for e in r["sets"].values():
        assert 0 <= e["auroc_msp"] <= 1 and 0 <= e["fpr95_msp"] <= 1 and 0 <= e["auroc_energy"] <= 1
    assert (tmp_path / "fig" / "roc.png").exists() and (tmp_path / "fig" / "confidence_histograms.png").exists()
