"""Calibration measures (prealign.analysis.calibration) against closed forms and hand computations,
the per-epoch tracker (measuring never changes the training), and `prealign analyze calibration`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from prealign.analysis import calibration as cal
from prealign.cli import main as cli_main
from prealign.errors import PrealignError
from prealign.analysis.calibration import CalibrationTracker
from prealign.run.config import RunConfig, run
from prealign.run.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def probs_with_confidence(conf: np.ndarray, k: int = 10) -> np.ndarray:
    """Probabilities whose max is ``conf`` (class 0), the rest spread evenly."""
    p = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    p[:, 0] = conf
    return p


def test_perfectly_calibrated_predictor_has_ece_near_zero():
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.2, 1.0, n)
    correct = rng.uniform(size=n) < conf  # correct with probability = confidence
    labels = np.where(correct, 0, 1 + rng.integers(0, 9, n))
    assert cal.ece(probs_with_confidence(conf), labels) < 0.005
    assert cal.adaptive_ece(probs_with_confidence(conf), labels) < 0.005


@pytest.mark.parametrize("c, acc", [(0.7, 0.4), (0.35, 0.9), (0.5, 0.5)])
def test_constant_confidence_predictor_ece_is_the_gap(c, acc):
    n = 1000
    labels = np.where(np.arange(n) < acc * n, 0, 3)
    p = probs_with_confidence(np.full(n, c))
    assert cal.ece(p, labels) == pytest.approx(abs(c - acc), abs=1e-12)
    assert cal.mce(p, labels) == pytest.approx(abs(c - acc), abs=1e-12)
    assert cal.adaptive_ece(p, labels) == pytest.approx(abs(c - acc), abs=1e-12)


def test_hand_computed_example():
    # 4 samples, 2 classes; confidences 0.9, 0.8, 0.6, 0.55; correct: yes, no, yes, yes
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.45, 0.55]])
    y = np.array([0, 1, 1, 1])
    # 2 equal-width bins: (0, .5] empty, (.5, 1] all: |3/4 − 0.7125| = 0.0375
    assert cal.ece(p, y, n_bins=2) == pytest.approx(0.0375)
    # 5 bins: (.4,.6]: 0.6, 0.55 both right -> gap 1-0.575=0.425; (.6,.8]: 0.8 wrong -> 0.8; (.8,1]: 0.9 right -> 0.1
    assert cal.ece(p, y, n_bins=5) == pytest.approx((2 * 0.425 + 0.8 + 0.1) / 4)
    assert cal.mce(p, y, n_bins=5) == pytest.approx(0.8)
    # equal mass, 2 bins: {0.55, 0.6} both right -> 0.425; {0.8, 0.9} one right -> |0.5 - 0.85| = 0.35
    assert cal.adaptive_ece(p, y, n_bins=2) == pytest.approx((2 * 0.425 + 2 * 0.35) / 4)
    assert cal.nll(p, y) == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.6, 0.55])))
    assert cal.brier(p, y) == pytest.approx(np.mean([2 * 0.1**2, 2 * 0.8**2, 2 * 0.4**2, 2 * 0.45**2]))


def test_bins_use_mean_confidence_and_edges_are_right_closed():
    conf = np.array([0.0, 0.2, 0.5, 0.5000001, 1.0])
    b = cal.reliability_bins(conf, np.ones(5), n_bins=2)
    assert b["count"].tolist() == [3, 2]  # 0 and 0.5 in the first bin (lo, hi], 1.0 in the last
    assert b["confidence"][0] == pytest.approx(0.7 / 3)


def test_summary_from_logits_equals_from_probabilities_and_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    y = torch.randint(0, 10, (500,), generator=g)
    a = cal.summary(y, logits=logits)
    b = cal.summary(y, probs=torch.softmax(logits.double(), 1))
    for k in ("ece", "mce", "adaptive_ece", "nll", "brier", "mean_confidence", "accuracy"):
        assert a[k] == pytest.approx(b[k], rel=1e-9)
    assert a["nll"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits.double(), y)), rel=1e-9)
    assert a["n_bins"] == 15 and len(a["bins"]["count"]) == 15
    with pytest.raises(PrealignError, match="softmax"):
        cal.ece(logits, y)  # logits are not probabilities


def tiny(**kw):
    base = {"method": "bp", "dataset": "digits", "train_subset": 200, "hidden": [16], "epochs": 2, "batch_size": 32,
            "lr": 1e-2, "seed": 1, "device": "cpu", "val_fraction": 0.0}
    return RunConfig.from_dict({**base, **kw})


@pytest.mark.parametrize("method", ["bp", "rnp"])
def test_tracker_never_changes_the_training(method):
    cfg = tiny(method=method, noise_samples=256 if method == "rnp" else None)
    plain = run(cfg, progress=False)
    tracked = run(cfg, progress=False, callbacks=[CalibrationTracker(n_train=100)])
    drop = {"seconds", "eval_seconds"}
    for a, b in zip(plain.curves, tracked.curves):
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items()
                                                                  if k not in drop and not k.endswith(("_confidence", "_ece"))}
    assert [r["epoch"] for r in tracked.curves] == [0, 1, 2]
    for r in tracked.curves:
        assert 0.1 <= r["test_confidence"] <= 1 and 0 <= r["test_ece"] <= 1 and 0.1 <= r["train_confidence"] <= 1


def test_tracker_values_equal_the_library_on_the_trained_model(tmp_path):
    store = Store(tmp_path)
    res = run(tiny(), store, progress=False, callbacks=[CalibrationTracker(n_train=None)])
    model = store.load_model(res.run_id)
    from prealign.run.config import load_data

    data = load_data(tiny())
    s = cal.model_summary(model, data.x_test, data.y_test)
    assert res.curves[-1]["test_ece"] == pytest.approx(s["ece"], abs=1e-12)
    assert res.curves[-1]["test_confidence"] == pytest.approx(s["mean_confidence"], abs=1e-12)
    tr = cal.model_summary(model, data.x_train, data.y_train)
    assert res.curves[-1]["train_ece"] == pytest.approx(tr["ece"], abs=1e-12)


def test_cli_calibration_json(tmp_path, capsys):
    store = Store(tmp_path)
    a = run(tiny(), store, progress=False).run_id
    b = run(tiny(method="bp+noise", noise_samples=256), store, progress=False, callbacks=[CalibrationTracker()]).run_id
    code = cli_main(["analyze", "calibration", str(a), str(b), "--out", str(tmp_path), "--json",
                     "--save", str(tmp_path / "fig")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["n_bins"] == 15
    assert [r["label"] for r in out["runs"].values()] == ["bp", "bp+noise"]
    assert all(math.isfinite(r["ece"]) for r in out["runs"].values())
    assert {p.rsplit("/", 1)[-1] for p in out["figures"]} == {"reliability.png", "calibration_curves.png"}
    assert (tmp_path / "fig" / "reliability.png").stat().st_size > 10_000
    code = cli_main(["analyze", "calibration", "nope", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
