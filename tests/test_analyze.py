"""``prealign analyze``: one registry entry per analysis, ``--json`` on every subcommand, and the
robustness default that trains the BP surrogate a lone FA run needs."""
from __future__ import annotations

import json

import pytest

from prealign.cli import main


@pytest.fixture(scope="module")
def lone_fa(tmp_path_factory):
    """A store holding one tiny finished FA run on UCI digits: ``(root, run id)``."""
    from prealign.run.config import RunConfig, run
    from prealign.run.store import Store

    root = tmp_path_factory.mktemp("lone_fa")
    config = RunConfig(method="fa", dataset="digits", hidden=(16,), epochs=1, train_subset=300, grad_alignment=False,
                       device="cpu")
    with Store(root) as store:
        run_id = run(config, store, progress=False).run_id
    return root, run_id


def _json_out(capsys, argv) -> dict:
    assert main(["--quiet", *argv]) == 0
    return json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else


def test_robustness_on_a_lone_fa_run_trains_and_stores_its_bp_surrogate(lone_fa, capsys, tmp_path):
    from prealign.run.store import Store

    root, run_id = lone_fa
    argv = ["analyze", "robustness", str(run_id), "--out", str(root), "--save", str(tmp_path), "--eps", "0,0.1",
            "--attacks", "fgsm", "--test-size", "50", "--json"]
    rep = _json_out(capsys, argv)
    assert rep["sources"] == ["exact", "feedback", "transfer"] and rep["skipped"] == {}
    fa = rep["results"]["fa"]["fgsm"]
    assert all(len(fa[s]) == 1 and len(fa[s][0]) == 2 for s in rep["sources"])
    assert fa["exact"][0][0] == fa["transfer"][0][0]  # ε = 0: every source leaves the inputs clean
    with Store(root, read_only=True) as store:
        bp = store.runs(label="bp")
        fa_config = store.get(run_id)["config"]
    assert len(bp) == 1 and bp[0]["status"] == "finished"  # the surrogate is stored under its own key
    assert {k: v for k, v in bp[0]["config"].items() if k not in ("method", "angle")} == \
        {k: v for k, v in fa_config.items() if k not in ("method", "angle")}  # same data, model, budget, seed
    assert _json_out(capsys, argv) == rep  # the second call reuses the stored surrogate: same numbers
    with Store(root, read_only=True) as store:
        assert len(store.runs(label="bp")) == 1


def test_robustness_skips_transfer_and_says_how_to_get_it_where_no_surrogate_can_be_trained(lone_fa, tmp_path,
                                                                                             monkeypatch):
    """Where no surrogate can be trained, the other sources run and the skipped one is named with the fix."""
    from prealign.analysis import sources
    from prealign.reports.registry import execute
    from prealign.errors import PrealignError

    def cannot(store, config):
        raise PrealignError("the disk is full")

    monkeypatch.setattr(sources, "train_or_load", cannot)
    root, run_id = lone_fa
    out = execute("robustness", {"runs": [str(run_id)], "out": str(root), "save": str(tmp_path), "eps": [0.0],
                                 "attacks": ["fgsm"], "test_size": 20, "surrogate": None})
    assert out.result["sources"] == ["exact", "feedback"]
    assert "disk is full" in out.result["skipped"]["transfer"] and "--surrogate" in out.result["skipped"]["transfer"]
    assert out.notes == [out.result["skipped"]["transfer"]]


@pytest.mark.parametrize("argv", [
    ["hessian", "{run}", "--samples", "40", "--probes", "2", "--density-probes", "1", "--lanczos-steps", "4"],
    ["landscape", "{run}", "--samples", "40", "--grid", "3"],
    ["corruption", "{run}", "--test-size", "20", "--corruptions", "gaussian_noise", "--severities", "1"],
    ["ood", "{run}", "--test-size", "20", "--no-second-source"],
    ["dimensionality", "{run}", "--probe", "20"],
    ["traffic", "{run}", "--rules", "bp", "fa"],
])
def test_every_analyze_subcommand_prints_parseable_json_and_writes_the_same_file(lone_fa, capsys, tmp_path, argv):
    from prealign.reports.registry import get

    root, run_id = lone_fa
    argv = [a.format(run=run_id) for a in argv]
    rep = _json_out(capsys, ["analyze", *argv, "--out", str(root), "--save", str(tmp_path), "--json"])
    entry = get(argv[0])
    assert json.loads((tmp_path / (entry.json_name or f"{entry.name}.json")).read_text()) == rep


def test_meta_prints_json(capsys, tmp_path):
    rep = _json_out(capsys, ["analyze", "meta", "--out", str(tmp_path), "--hidden", "8", "--noise-samples", "128",
                             "--every", "64", "--task-size", "50", "--k", "2", "--inner-steps", "1", "--json"])
    assert [len(rep["runs"]["0"]["meta_loss"])] == [3]  # before noise, after 64 and after 128 samples


def test_every_registered_command_is_an_analyze_subcommand_with_json_and_out():
    from prealign.reports.registry import commands
    from prealign.cli import build_parser

    parser = build_parser()
    analyze = next(a for a in parser._subparsers._group_actions[0].choices["analyze"]._actions
                   if hasattr(a, "choices") and isinstance(a.choices, dict))
    names = [e.name for e in commands()]
    assert set(analyze.choices) == set(names) >= {"hessian", "landscape", "robustness", "corruption", "ood",
                                                   "dimensionality", "meta", "traffic"}
    for name in names:
        opts = {o for a in analyze.choices[name]._actions for o in a.option_strings}
        assert {"--json", "--out", "--save"} <= opts, name


def test_registering_an_analysis_is_one_entry(tmp_path):
    """A new entry gets its CLI subcommand, its --json and its experiment kind from the registry alone."""
    from prealign.reports import registry
    from prealign.experiments import analyses

    entry = registry.Analysis("toy", "a toy analysis", params=(registry.Param("n", "int>=1", 3, "how many"),),
                              compute=lambda inputs, ns: {"n": ns.n}, rows=lambda ctx, p: None)
    registry.register(entry)
    try:
        from prealign.cli import main as cli_main

        assert cli_main(["analyze", "toy", "--n", "5", "--out", str(tmp_path), "--json"]) == 0
        assert json.loads((tmp_path / "analysis" / "toy" / "toy.json").read_text()) == {"n": 5}
        with pytest.raises(ValueError, match="twice"):
            registry.register(entry)
        assert analyses.callbacks_for([]) == []
    finally:
        del registry.REGISTRY["toy"]
