"""The benchmark suite: its baselines compute what they claim, its ratios are what they say, and
``prealign bench --json --quick`` produces the documented structure (ratios are not asserted: timings
on a shared machine are noise)."""
import json

import pytest
import torch
import torch.nn.functional as F

import prealign as pa
from prealign import bench
from prealign.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny workloads: 1 thread is fastest on shared cores


def test_biotorch_baseline_is_feedback_alignment():
    """The usual-recipe model sends the error through B and updates W by δᵀx — the same gradients as prealign's FA."""
    g = torch.Generator().manual_seed(0)
    ref = pa.mlp([12, 7, 3], "fa", generator=g)
    usual = bench.usual_recipe_model(ref)
    x, y = torch.randn(5, 12, generator=g), torch.tensor([0, 1, 2, 1, 0])
    F.cross_entropy(ref(x), y).backward()
    F.cross_entropy(usual(x), y).backward()
    for p, q in zip([p for p in usual.parameters() if p.requires_grad], ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    # and it is not backprop
    with pa.exact_gradients(ref):
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
    assert not torch.allclose(usual[1].weight.grad, ref[1].weight.grad)


def test_torchvision_style_dataset_normalises_per_item():
    images = torch.tensor([[[0, 255], [128, 7]]], dtype=torch.uint8)
    ds = bench.TorchvisionStyleDataset(images, torch.tensor([4]))
    x, label = ds[0]
    assert x.shape == (1, 2, 2) and x.dtype == torch.float32 and label == 4
    torch.testing.assert_close(x[0], (images[0].float() / 255 - 0.1307) / 0.3081)


def test_flop_count_and_ratio_arithmetic():
    assert bench.mlp_flops_per_step([784, 512, 512, 10], 128) == 6 * 128 * (784 * 512 + 512 * 512 + 512 * 10)
    row = bench.base._row("k", "t", "<= 1.05", [2.0, 4.0, 3.0], [2.0, 2.0, 4.0])  # paired ratios 1, 2, 0.75
    assert row.ratio == pytest.approx(1.0) and row.spread == pytest.approx((0.875, 1.5)) and row.passed
    row = bench.base._row("k", "t", ">= 2", [1.0, 1.0], [3.0, 5.0], invert=True, scale=0.5)  # 1.5, 2.5
    assert row.ratio == pytest.approx(2.0) and row.passed


def test_interleaved_alternates_order():
    calls = []
    bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, torch.device("cpu"), warmup=0)
    assert calls == ["a", "b", "b", "a", "a", "b"]


def test_cli_quick_json_structure(capsys):
    assert main(["bench", "--json", "--quick", "--only", "flops", "hessian", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"machine", "quick", "rows", "seconds"} and result["quick"] is True
    assert {"cpu", "cores", "torch", "torch_threads", "device"} <= set(result["machine"])
    keys = [r["key"] for r in result["rows"]]
    assert keys == ["flops/mlp/fa", "hessian/mlp"]
    for r in result["rows"]:
        assert {"key", "title", "ratio", "target", "spread", "passed", "reps", "a_seconds", "b_seconds", "details",
                "skipped"} <= set(r)
        if r["skipped"] is None:
            assert r["ratio"] > 0 and r["spread"][0] <= r["spread"][1] and isinstance(r["passed"], bool)
    assert result["rows"][0]["details"]["flops_per_step"] == bench.mlp_flops_per_step(bench.MLP_DIMS, 128)


def test_quick_recipe_row_runs_on_a_fresh_machine(no_data_dirs, capsys):
    """No system data folder, empty cache: the recipe row (it read Fashion-MNIST) trains on the embedded MNIST-5k."""
    assert main(["bench", "--json", "--quick", "--only", "recipe", "--device", "cpu"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["key"] == "recipe/mlp" and row["skipped"] is None and row["ratio"] > 0
    assert row["details"]["dataset"].startswith("mnist5k") and row["details"]["n_train"] == 1500
