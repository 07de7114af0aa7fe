"""Hessian spectrum (IFA B.7) against the exact Hessian of a tiny model and against dense matrices."""
import copy

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from prealign.analysis import (HessianTracker, hessian_operator, hessian_summary, hutchinson_trace, lanczos_quadrature,
                               power_iteration, spectral_density, top_eigen)
from prealign.analysis.spectrum import deflated_trace, lanczos_top_eigen


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny workloads: 1 thread is fastest on shared cores


def tiny_problem(seed=0):
    """4-3-2 tanh MLP (23 parameters), 20 samples, its exact Hessian (float64) and eigenvalues (ascending)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x, y = torch.randn(20, 4), torch.randint(0, 2, (20,))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    model64 = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    model64.load_state_dict(model.state_dict())

    def loss(theta):
        params = {n: c.view(s) for n, c, s in zip(names, torch.split(theta, sizes), shapes)}
        return F.cross_entropy(functional_call(model64, params, (x.double(),)), y)

    theta = torch.nn.utils.parameters_to_vector(model64.parameters()).detach()
    hess = torch.autograd.functional.hessian(loss, theta).numpy()
    return model, x, y, hess, np.linalg.eigvalsh(hess)


@pytest.fixture(scope="module")
def tiny():
    return tiny_problem()


def random_symmetric(n=60, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.concatenate([[5.0, 3.0, 2.5], rng.normal(0, 0.3, n - 3)])
    return (q * eig) @ q.T, np.sort(eig)


@pytest.mark.parametrize("method", ["graph", "func", "autograd"])
def test_operator_is_the_exact_hessian(tiny, method):
    model, x, y, hess, _ = tiny
    op = hessian_operator(model, None, x, y, batch_size=7, method=method)  # 3 uneven batches
    dense = op.matmat(np.eye(op.shape[0]))
    assert op.shape == hess.shape == (23, 23)
    np.testing.assert_allclose(dense, hess, atol=2e-6)
    assert op.n_products == 23 and op.method == method


def test_operator_is_symmetric_and_leaves_model_alone(tiny):
    model, x, y, _, _ = tiny
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = hessian_operator(model, None, x, y)
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal(23), rng.standard_normal(23)
    assert abs(u @ op.matvec(v) - v @ op.matvec(u)) < 1e-5
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_top_eigen_matches_eigvalsh(tiny):
    model, x, y, hess, eig = tiny
    vals, vecs = top_eigen(hessian_operator(model, None, x, y), k=3, tol=1e-8, seed=1)
    np.testing.assert_allclose(vals, eig[::-1][:3], rtol=1e-3)
    assert np.all(np.diff(vals) <= 0)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(hess @ vecs, vecs * vals, atol=1e-4)  # they are eigenvectors


def test_top_eigen_is_largest_algebraic_and_power_iteration_largest_magnitude():
    a = np.diag([-4.0, 1.0, 2.0, 3.0, 0.5])
    vals, _ = top_eigen(a, k=1, tol=1e-10)
    assert vals[0] == pytest.approx(3.0, rel=1e-8)
    value, _, _ = power_iteration(a, tol=1e-12, maxiter=2000)
    assert value == pytest.approx(-4.0, rel=1e-4)


def test_power_iteration_agrees_on_a_trained_like_spectrum():
    mat, eig = random_symmetric()
    value, vec, n = power_iteration(mat, tol=1e-10, maxiter=500)
    assert value == pytest.approx(eig[-1], rel=1e-6)
    assert n > 10  # the gap ratio 3/5 costs iterations; Lanczos needs fewer


def test_hutchinson_trace(tiny):
    model, x, y, hess, eig = tiny
    est, se = hutchinson_trace(hessian_operator(model, None, x, y), probes=600, seed=0)
    assert est == pytest.approx(np.trace(hess), rel=0.05)
    assert 0 < se < 0.05 * abs(np.trace(hess))
    # Rademacher probes are exact on a diagonal matrix, with zero spread
    assert hutchinson_trace(np.diag([1.0, -2.0, 7.0]), probes=3) == (6.0, 0.0)


def test_lanczos_quadrature_matches_moments_exactly():
    mat, _ = random_symmetric()
    v = np.random.default_rng(3).standard_normal(60)
    nodes, weights = lanczos_quadrature(mat, v, 8)
    assert len(nodes) == 8 and weights.sum() == pytest.approx(1.0, abs=1e-12)
    vh = v / np.linalg.norm(v)
    for k in range(2 * 8):  # Gauss quadrature is exact up to degree 2m-1
        assert (weights * nodes ** k).sum() == pytest.approx(vh @ np.linalg.matrix_power(mat, k) @ vh, rel=1e-8, abs=1e-10)


def test_slq_nodes_are_the_true_eigenvalues_when_the_krylov_space_is_full(tiny):
    model, x, y, _, eig = tiny
    op = hessian_operator(model, None, x, y)
    _, _, nodes, weights = spectral_density(op, n_probes=3, lanczos_steps=40, return_quadrature=True)
    heavy = nodes[weights > 1e-6]
    assert np.abs(heavy[:, None] - eig[None, :]).min(axis=1).max() < 1e-4
    assert np.nanmax(nodes, axis=1) == pytest.approx(np.full(3, eig[-1]), rel=1e-3)  # top node = λ_max


def test_spectral_density_integrates_to_one_and_sits_on_the_spectrum():
    mat, eig = random_symmetric()
    sigma = 0.1
    grid, density, nodes, weights = spectral_density(mat, n_probes=300, lanczos_steps=60, sigma=sigma, seed=0,
                                                     return_quadrature=True)
    h = grid[1] - grid[0]
    assert density.sum() * h == pytest.approx(1.0, abs=1e-8)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    assert density.min() >= 0
    # the mean of the density is exactly the mean Rayleigh quotient of the probes, ≈ tr/n
    mean = (grid * density).sum() * h
    assert mean == pytest.approx(np.nansum(nodes * weights) / 300, abs=1e-6)
    assert mean == pytest.approx(eig.mean(), abs=0.02)
    # close to the Gaussian-smoothed true spectrum in L1, mass near the outliers 5, 3, 2.5
    true = np.exp(-(grid[:, None] - eig[None, :]) ** 2 / (2 * sigma ** 2)).sum(1) / (len(eig) * sigma * np.sqrt(2 * np.pi))
    assert np.abs(density - true).sum() * h < 0.15
    near_top = np.abs(grid - 5.0) < 3 * sigma
    assert density[near_top].sum() * h == pytest.approx(1 / 60, rel=0.35)


def test_spectral_density_of_the_tiny_model(tiny):
    model, x, y, _, eig = tiny
    grid, density = spectral_density(hessian_operator(model, None, x, y), n_probes=5, lanczos_steps=30, seed=0)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    assert grid.min() < eig.min() and grid.max() > eig.max()


def test_seeded_results_repeat(tiny):
    model, x, y, _, _ = tiny
    op = hessian_operator(model, None, x, y)
    assert hutchinson_trace(op, probes=5, seed=4) == hutchinson_trace(op, probes=5, seed=4)
    a, b = spectral_density(op, 2, 5, seed=1)[1], spectral_density(op, 2, 5, seed=1)[1]
    np.testing.assert_array_equal(a, b)


def test_feedback_model_uses_true_gradients(tiny):
    """An FA model's Hessian is the Hessian of its loss, not of its feedback pathway."""
    from prealign import convert
    model, x, y, hess, eig = tiny
    fa = convert(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), "fa")
    fa.load_state_dict({**fa.state_dict(), **model.state_dict()})
    op = hessian_operator(fa, None, x, y, method="autograd")
    np.testing.assert_allclose(op.matmat(np.eye(23)), hess, atol=2e-6)
    summary = hessian_summary(fa, x, y, n_samples=None, k=2, probes=300, density_probes=2, lanczos_steps=10, tol=1e-8)
    np.testing.assert_allclose(summary["top_eigenvalues"], eig[::-1][:2], rtol=1e-3)
    assert summary["trace"] == pytest.approx(eig.sum(), rel=0.1)
    assert summary["n_params"] == 23 and summary["seconds"]["total"] > 0
    assert np.trapezoid(summary["density"], summary["density_grid"]) == pytest.approx(1.0, abs=1e-6)


def test_dfa_model_falls_back_to_double_backward(tiny):
    from prealign import convert
    model, x, y, hess, _ = tiny
    dfa = convert(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), "dfa")
    dfa.load_state_dict({**dfa.state_dict(), **model.state_dict()})
    op = hessian_operator(dfa, None, x, y, batch_size=7)  # several batches: auto tries torch.func first
    np.testing.assert_allclose(op.matmat(np.eye(23)), hess, atol=2e-6)
    assert op.method == "autograd"
    op = hessian_operator(dfa, None, x, y)  # one batch: the stored gradient graph, through the DFA hook
    np.testing.assert_allclose(op.matmat(np.eye(23)), hess, atol=2e-6)
    assert op.method == "graph"


def test_stored_graph_follows_parameter_updates(tiny):
    """The "graph" method reuses one gradient graph, but never a stale one: an in-place update rebuilds it."""
    model, x, y, hess, _ = tiny
    model = copy.deepcopy(model)
    op = hessian_operator(model, None, x, y)
    assert op.method == "graph"
    v = torch.randn(23, generator=torch.Generator().manual_seed(0))
    before = op.hvp(v)
    np.testing.assert_allclose(before.double().numpy(), hess @ v.double().numpy(), atol=2e-6)
    with torch.no_grad():
        model[0].weight.mul_(1.5)  # an optimizer step would do the same (in place)
    fresh = hessian_operator(model, None, x, y, method="func").hvp(v)
    after = op.hvp(v)
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(after, fresh, atol=2e-6, rtol=1e-5)
    op.release()
    torch.testing.assert_close(op.hvp(v), fresh, atol=2e-6, rtol=1e-5)


class _Data:
    def __init__(self, x, y):
        self.x_train, self.y_train, self.x_test, self.y_test = x, y, x, y


def test_tracker_records_every_n_epochs(tiny):
    model, x, y, hess, eig = tiny
    tracker = HessianTracker(every=2, n_samples=20, probes=300, tol=1e-8)
    records = [{} for _ in range(4)]
    for epoch, rec in enumerate(records):
        tracker.on_epoch_end(epoch, model, _Data(x, y), rec)
    assert "hessian_top_eig" not in records[1] and "hessian_trace" not in records[3]
    for rec in (records[0], records[2]):
        assert rec["hessian_top_eig"] == pytest.approx(eig[-1], rel=1e-3)
        assert rec["hessian_trace"] == pytest.approx(np.trace(hess), rel=0.1)
    assert records[0] == records[2]  # same subset and probes: same numbers for the same model


def test_tracker_survives_a_diverged_model(tiny):
    model, x, y, _, _ = tiny
    broken = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with torch.no_grad():
        broken[0].weight.fill_(float("nan"))
    rec = {}
    HessianTracker(every=1, n_samples=10, probes=2).on_epoch_end(0, broken, _Data(x, y), rec)
    assert np.isnan(rec["hessian_top_eig"]) and np.isnan(rec["hessian_trace"])


def test_bad_arguments_are_user_errors(tiny):
    from prealign.errors import PrealignError
    model, x, y, _, _ = tiny
    with pytest.raises(PrealignError):
        hessian_operator(model, None, x, y[:3])
    with pytest.raises(PrealignError):
        top_eigen(np.eye(3), k=3)
    with pytest.raises(PrealignError):
        hessian_operator(model, None, x, y, method="newton")
    assert isinstance(hessian_operator(model, None, x, y), scipy.sparse.linalg.LinearOperator)


def test_batched_products_and_batched_hutchinson_match_one_at_a_time(tiny):
    """hvp_batch = hvp per row; hutchinson_trace gives the same estimate whatever its batch size."""
    model, x, y, _, _ = tiny
    op = hessian_operator(copy.deepcopy(model).double(), None, x.double(), y)
    vs = torch.randn(5, op.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op.hvp_batch(vs), torch.stack([op.hvp(v) for v in vs]))
    one = hutchinson_trace(op, probes=40, seed=3, batch=1)
    many = hutchinson_trace(op, probes=40, seed=3, batch=16)
    assert one == pytest.approx(many, rel=1e-10)


def test_lanczos_top_eigen_meets_its_bound(tiny):
    model, x, y, _, eigs = tiny
    op = hessian_operator(copy.deepcopy(model).double(), None, x.double(), y)
    for rtol in (1e-3, 1e-6):
        top = lanczos_top_eigen(op, rtol=rtol)
        assert abs(top.value - eigs[-1]) <= max(top.bound, 1e-12) + 1e-12
        assert abs(top.value - eigs[-1]) <= rtol * abs(eigs[-1])
        assert top.products == len(top.alpha) == len(top.basis) <= len(eigs)
    mat = np.diag(np.linspace(1.0, 2.0, 200))  # a dense operator; tight cluster: maxiter runs out, bound NaN
    assert np.isnan(lanczos_top_eigen(mat, rtol=1e-12, maxiter=3).bound)


def test_deflated_trace_is_unbiased_and_exact_when_the_basis_spans(tiny):
    """With a basis spanning the whole space the deflated part is the whole trace (no probe left to
    vary); with a partial basis the estimate lies within a few standard errors of the exact trace."""
    model, x, y, hess, _ = tiny
    op = hessian_operator(copy.deepcopy(model).double(), None, x.double(), y)
    est, se, _ = deflated_trace(op, rel_stderr=1e-3, deflate=len(hess), max_probes=4)
    assert est == pytest.approx(np.trace(hess), rel=1e-8) and se == pytest.approx(0.0, abs=1e-8)
    est, se, products = deflated_trace(op, rel_stderr=0.02, deflate=5, seed=1)
    assert abs(est - np.trace(hess)) <= 4 * se and se <= 0.021 * abs(est) and products > 5


def test_bench_row_accuracy_check_compares_with_the_exact_hessian(tiny):
    """The Hessian bench row's check: exact_hessian is the true Hessian; a deliberately loose
    tolerance cannot meet the 1e-3 eigenvalue accuracy (the row refuses it), and answers off by
    more than the tolerances are listed as failures."""
    from prealign import bench
    from prealign.errors import PrealignError

    model, x, y, hess, eigs = tiny
    np.testing.assert_allclose(bench.exact_hessian(model, x, y).numpy(), hess, rtol=1e-10, atol=1e-12)
    ref = {"eig": float(eigs[-1]), "trace": float(np.trace(hess))}
    op = hessian_operator(copy.deepcopy(model).double(), None, x.double(), y)

    def solve(tol):
        return {"eig": power_iteration(op, tol=tol, maxiter=10_000)[0]}

    with pytest.raises(PrealignError, match="no stopping tolerance in \\[0.5\\] gives the top eigenvalue to 0.001"):
        bench.loosest_accurate([0.5], solve, ref, eig_rtol=1e-3)
    tol, answer = bench.loosest_accurate(bench.TOL_LADDER, solve, ref, eig_rtol=1e-3)
    assert abs(answer["eig"] - ref["eig"]) <= 1e-3 * ref["eig"]
    good = {"eig": ref["eig"] * (1 + 5e-4), "trace": ref["trace"] + 0.01, "trace_se": 0.01}
    assert bench.hessian_answer_failures(good, ref, eig_rtol=1e-3, trace_rse=0.01) == []
    for bad, what in (({"eig": ref["eig"] * (1 + 2e-3)}, "top eigenvalue"), ({"trace_se": ref["trace"]}, "standard error"),
                      ({"trace": ref["trace"] + 0.05}, "more than 4 standard errors")):
        fails = bench.hessian_answer_failures({**good, **bad}, ref, eig_rtol=1e-3, trace_rse=0.01)
        assert len(fails) == 1 and what in fails[0]
