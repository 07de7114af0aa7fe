"""Trajectory PCA landscape (IFA B.6) and perturbed landscape (IFA B.8)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from torch import nn

from prealign.analysis import (TrajectoryRecorder, evaluate_loss, flat_parameters, hessian_operator, loss_surface,
                               path_grid, perturbed_surface, top_eigen, trajectory_pca, trajectory_surface)
from prealign.errors import PrealignError


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny workloads: 1 thread is fastest on shared cores


def trained_tiny(steps=40, recorder=None, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x, y = torch.randn(20, 4), torch.randint(0, 2, (20,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if recorder is not None:
            recorder.on_epoch_end(step, model, None, {})
    return model, x, y


def test_recorder_memory_is_bounded_and_everything_comes_back(tmp_path):
    rec = TrajectoryRecorder(max_in_memory=4, spill_dir=tmp_path / "spill")
    model = nn.Linear(5, 2)
    truth = []
    for epoch in range(11):
        with torch.no_grad():
            model.weight.add_(1.0)
        rec.on_epoch_end(epoch, model, None, {})
        truth.append(flat_parameters(model).numpy().copy())
        assert rec.in_memory < 4  # spilled as soon as the buffer fills
    assert len(rec) == 11 and rec.labels[3] == ("epoch", 3)
    assert len(list((tmp_path / "spill").glob("chunk_*.npy"))) == 2
    for i in (0, 5, 10, -1):
        np.testing.assert_array_equal(rec[i], truth[i])
    np.testing.assert_array_equal(np.concatenate(list(rec.chunks())), np.stack(truth))
    saved = np.load(rec.save(tmp_path / "all.npy"))
    np.testing.assert_array_equal(saved, np.stack(truth))
    rec.close()  # a named folder is the user's: kept
    assert (tmp_path / "spill").exists()


def test_recorder_steps_and_temporary_folder():
    rec = TrajectoryRecorder(max_in_memory=2, every_steps=3)
    model = nn.Linear(2, 1)
    for step in range(1, 10):
        rec.on_step_end(step, model)
    assert [s for _, s in rec.labels] == [3, 6, 9]
    folder = rec.spill_dir
    assert folder is not None and folder.exists()
    rec.close()
    assert not folder.exists()


def test_pca_matches_sklearn_and_is_orthonormal():
    rec = TrajectoryRecorder(max_in_memory=7)
    model, _, _ = trained_tiny(steps=30, recorder=rec)
    final = flat_parameters(model)
    out = trajectory_pca(rec, final, chunk_rows=5)  # chunks from disk and memory, several blocks
    d = np.stack([rec[i] for i in range(len(rec))]).astype(np.float64) - final.numpy()
    ref = PCA(n_components=2).fit(d)
    np.testing.assert_allclose(out["directions"] @ out["directions"].T, np.eye(2), atol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(out["directions"] * ref.components_, axis=1)), 1.0, atol=1e-8)
    np.testing.assert_allclose(out["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(out["explained_variance"], ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(out["coords"], d @ out["directions"].T, atol=1e-10)
    assert out["coords"].shape == (30, 2)
    np.testing.assert_allclose(out["coords"][-1], 0.0, atol=1e-6)  # the last snapshot is the final point
    rec.close()


def test_uncentred_pca_is_the_svd_of_the_differences():
    rng = np.random.default_rng(0)
    snaps = rng.standard_normal((12, 40))
    final = snaps[-1]
    out = trajectory_pca(list(snaps), final, center=False)
    _, s, vt = np.linalg.svd(snaps - final, full_matrices=False)
    np.testing.assert_allclose(np.abs(np.sum(out["directions"] * vt[:2], axis=1)), 1.0, atol=1e-8)
    np.testing.assert_allclose(out["explained_variance_ratio"], s[:2] ** 2 / (s ** 2).sum(), rtol=1e-8)


def test_pca_needs_a_real_trajectory():
    with pytest.raises(PrealignError):
        trajectory_pca(np.zeros((2, 5)), np.zeros(5))
    with pytest.raises(PrealignError):
        trajectory_pca(np.ones((5, 5)), np.zeros(5))  # one direction only


def test_loss_surface_origin_is_the_trained_loss_and_model_is_restored():
    model, x, y = trained_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    storage = [p.data_ptr() for p in model.parameters()]
    with torch.no_grad():
        direct = float(F.cross_entropy(model(x), y))
    rng = np.random.default_rng(0)
    d1, d2 = rng.standard_normal(23), rng.standard_normal(23)
    alphas, betas = np.linspace(-1, 1, 5), np.linspace(-0.5, 0.5, 3)
    surf = loss_surface(model, None, x, y, flat_parameters(model), d1, d2, alphas, betas)
    assert surf.shape == (3, 5)
    assert surf[1, 2] == direct == evaluate_loss(model, None, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.data_ptr() for p in model.parameters()] == storage
    # every grid point is the loss at center + a d1 + b d2
    probe = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    theta = flat_parameters(model) + float(alphas[4]) * torch.tensor(d1, dtype=torch.float32) \
        + float(betas[0]) * torch.tensor(d2, dtype=torch.float32)
    torch.nn.utils.vector_to_parameters(theta, probe.parameters())
    with torch.no_grad():
        assert surf[0, 4] == pytest.approx(float(F.cross_entropy(probe(x), y)), rel=1e-6)


def test_loss_surface_restores_the_model_on_error():
    model, x, y = trained_tiny(steps=2)
    before = flat_parameters(model).clone()

    def bad_loss(out, target):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        loss_surface(model, bad_loss, x, y, None, np.ones(23), np.ones(23), [1.0], [1.0])
    assert torch.equal(flat_parameters(model), before)


def test_trajectory_surface_end_to_end():
    rec = TrajectoryRecorder(max_in_memory=100)
    model, x, y = trained_tiny(steps=20, recorder=rec)
    out = trajectory_surface(model, rec, x, y, n=7)
    assert out["loss"].shape == (7, 7)
    a, b = out["alphas"], out["betas"]
    assert a.min() <= out["coords"][:, 0].min() and a.max() >= out["coords"][:, 0].max()
    assert b.min() <= out["coords"][:, 1].min() and b.max() >= out["coords"][:, 1].max()
    assert np.isfinite(out["loss"]).all()


def test_path_grid_covers_the_path_and_origin():
    alphas, betas = path_grid(np.array([[1.0, 2.0], [3.0, 4.0]]), n=11, margin=0.1)
    assert alphas[0] < 0 < 3 < alphas[-1] and betas[0] < 0 < 4 < betas[-1] and len(alphas) == 11


def test_perturbed_surface_along_top_hessian_eigenvectors():
    model, x, y = trained_tiny()
    trained = evaluate_loss(model, None, x, y)
    out = perturbed_surface(model, None, x, y, alphas=np.linspace(-0.2, 0.2, 5), betas=np.linspace(-0.2, 0.2, 5),
                            tol=1e-8)
    assert out["loss"][2, 2] == trained  # (0, 0) is the trained point, exactly
    vals, vecs = top_eigen(hessian_operator(model, None, x, y), k=2, tol=1e-8)
    np.testing.assert_allclose(out["eigenvalues"], vals, rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(out["directions"] * vecs.T, axis=1)), 1.0, atol=1e-5)
    # near a minimum the loss along v1 is ≈ L + ½ λ1 α² (quadratic model), curvature λ1 ≥ λ2
    a = 0.05
    surf = loss_surface(model, None, x, y, None, out["directions"][0], out["directions"][1], [-a, 0.0, a], [0.0])
    curvature = (surf[0, 0] - 2 * surf[0, 1] + surf[0, 2]) / a ** 2
    assert curvature == pytest.approx(vals[0], rel=0.05)


def test_cli_hessian_and_landscape_on_a_stored_run(tmp_path, capsys):
    import json

    from prealign.cli import main
    from prealign.run.config import RunConfig, run
    from prealign.run.store import Store

    config = RunConfig(method="fa", dataset="mnist5k", hidden=(8,), epochs=2, train_subset=200, grad_alignment=False,
                       device="cpu")
    with Store(tmp_path) as store:
        run_id = run(config, store, progress=False).run_id
    common = ["--quiet", "analyze"]
    assert main(common + ["hessian", str(run_id), "--out", str(tmp_path), "--samples", "100", "--probes", "3",
                          "--density-probes", "1", "--lanczos-steps", "5"]) == 0
    h = json.loads((tmp_path / "analysis" / "hessian" / "hessian.json").read_text())[str(run_id)]
    assert h["n_samples"] == 100 and h["top_eigenvalues"][0] > 0
    assert main(common + ["landscape", str(run_id), "--out", str(tmp_path), "--samples", "100", "--grid", "3",
                          "--trajectory"]) == 0
    folder = tmp_path / "analysis" / "landscape"
    assert (folder / f"perturbed_{run_id}.png").exists() and (folder / f"trajectory_{run_id}.png").exists()
    entry = json.loads((folder / "landscape.json").read_text())[str(run_id)]
    assert len(entry["trajectory"]["coords"]) == 3  # epochs 0, 1, 2
