"""Eigenvalues, trace and spectral density of any symmetric operator from matrix-vector products
(IFA paper B.7): the numerical linear algebra behind :mod:`prealign.analysis.hessian`.

Every function takes a symmetric ``(P, P)`` operator: a dense matrix, a
:class:`scipy.sparse.linalg.LinearOperator`, or a
:class:`~prealign.analysis.hessian.HessianOperator`, which multiplies torch vectors on its own
device (used natively, without a host copy per product).

- :func:`top_eigen` — top-k eigenpairs by implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``,
  ``which="LA"``: the largest *algebraic* eigenvalues, i.e. the sharpest positive curvature).
- :func:`power_iteration` — the single top eigenpair as PyHessian computes it (the paper's
  method); kept for comparison, it converges to the largest-*magnitude* eigenvalue.
- :func:`lanczos_top_eigen` — the top eigenvalue by Lanczos to a relative tolerance, keeping its basis.
- :func:`hutchinson_trace` — ``tr H ≈ mean_i vᵢᵀ H vᵢ`` over Rademacher probes, with its standard
  error; :func:`deflated_trace` — the same after projecting out a Lanczos basis (fewer probes).
- :func:`spectral_density` — the Gaussian-smoothed empirical spectral density by stochastic Lanczos
  quadrature (Ghorbani et al. 2019; PyHessian), integrating to 1 on its grid (:func:`lanczos_quadrature`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import scipy.special
import torch

from ..errors import ConfigError, PrealignError


def _native(op) -> bool:
    """Whether ``op`` multiplies torch vectors itself (``hvp``, ``hvp_batch``, ``device``,
    ``param_dtype``, as :class:`~prealign.analysis.hessian.HessianOperator` does)."""
    return all(hasattr(op, name) for name in ("hvp", "hvp_batch", "device", "param_dtype"))


def _as_operator(op) -> scipy.sparse.linalg.LinearOperator:
    op = scipy.sparse.linalg.aslinearoperator(op)
    if op.shape[0] != op.shape[1]:
        raise PrealignError(f"a Hessian must be square; got an operator of shape {op.shape}")
    return op


def top_eigen(op, k: int = 1, *, tol: float = 1e-4, maxiter: int | None = None, ncv: int | None = None,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest (algebraic) eigenvalues of a symmetric operator and their eigenvectors.

    Implicitly restarted Lanczos (ARPACK via ``scipy.sparse.linalg.eigsh(which="LA")``) from a
    seeded Gaussian start vector. ``tol`` is ARPACK's relative accuracy of the Ritz values.
    Returns ``(eigenvalues (k,), eigenvectors (P, k))``, eigenvalues descending, vectors
    orthonormal (float64). Why not power iteration (PyHessian, the paper): it needs
    ``O(λ₁/(λ₁−λ₂) · log 1/ε)`` products, stalls when the top two eigenvalues are close, finds one
    pair at a time (deflation loses accuracy for k > 1), and converges to the largest
    *magnitude* eigenvalue, which at a non-convex point can be a negative one.
    """
    op = _as_operator(op)
    n = op.shape[0]
    if not 1 <= k < n:
        raise ConfigError(f"top_eigen needs 1 <= k < number of parameters ({n}); got k={k}")
    v0 = np.random.default_rng(seed).standard_normal(n)
    if ncv is None:
        ncv = min(n, max(2 * k + 1, 20))
    vals, vecs = scipy.sparse.linalg.eigsh(op, k=k, which="LA", v0=v0, tol=tol, maxiter=maxiter, ncv=ncv)
    order = np.argsort(vals)[::-1]
    return vals[order], vecs[:, order]


def _torch_matvec(op) -> tuple[Callable[[torch.Tensor], torch.Tensor], int, torch.device, torch.dtype]:
    """``(matvec, P, device, dtype)`` for products on flat torch vectors.

    An operator with torch products of its own (:func:`_native`: a
    :class:`~prealign.analysis.hessian.HessianOperator`) multiplies on its own device in the
    parameters' dtype (no host copy per product); anything else (a dense matrix, a scipy
    ``LinearOperator``) through its float64 numpy ``matvec`` on the CPU.
    """
    if _native(op):
        return op.hvp, op.shape[0], op.device, op.param_dtype
    lin = _as_operator(op)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(lin.matvec(v.cpu().numpy()), dtype=np.float64).reshape(-1))

    return matvec, lin.shape[0], torch.device("cpu"), torch.float64


def _rademacher(n: int, gen: torch.Generator, device, dtype) -> torch.Tensor:
    """``v ∈ {−1, +1}ⁿ`` drawn on the CPU from ``gen`` (same probes on every device)."""
    return torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8).to(device=device, dtype=dtype).mul_(2).sub_(1)


def power_iteration(op, *, tol: float = 1e-4, maxiter: int = 200, seed: int = 0) -> tuple[float, np.ndarray, int]:
    """The dominant eigenpair by power iteration, as PyHessian does (for comparison with :func:`top_eigen`).

    Stops when the Rayleigh quotient changes by less than ``tol`` relatively. Returns
    ``(eigenvalue, unit eigenvector (P,) float64, number of products)``. Converges to the
    eigenvalue of largest *magnitude*.
    """
    matvec, n, device, dtype = _torch_matvec(op)
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)
    v /= torch.linalg.vector_norm(v)
    value = None
    for i in range(1, maxiter + 1):
        hv = matvec(v)
        new = float(torch.dot(v, hv))
        v = hv / torch.linalg.vector_norm(hv)
        if value is not None and abs(new - value) <= tol * (abs(value) + 1e-12):
            return new, v.cpu().double().numpy(), i
        value = new
    return value, v.cpu().double().numpy(), maxiter


def hutchinson_trace(op, probes: int = 100, *, seed: int = 0, batch: int = 32,
                     rel_stderr: float | None = None) -> tuple[float, float]:
    """Hutchinson's estimate of ``tr H`` with Rademacher probes ``v ∈ {−1, +1}ᴾ`` (IFA B.7; Avron & Toledo 2011).

    ``tr H = E[vᵀ H v]``. Returns ``(estimate, standard error)``, the standard error being the
    sample standard deviation of ``vᵢᵀ H vᵢ`` over ``√probes`` (0 for a single probe). Probes are
    drawn from ``torch.Generator().manual_seed(seed)`` in sequence, ``batch`` at a time: a
    :class:`~prealign.analysis.hessian.HessianOperator` multiplies each batch in one batched product (``hvp_batch``;
    the same probes and estimate as one at a time, up to summation order). ``rel_stderr``: stop early,
    after a whole batch, once the standard error is at most ``rel_stderr · |estimate|`` (at most
    ``probes`` probes either way); None uses all ``probes``.
    """
    if probes < 1:
        raise ConfigError(f"hutchinson_trace needs at least one probe; got {probes}")
    if batch < 1:
        raise ConfigError(f"hutchinson_trace needs batch >= 1; got {batch}")
    matvec, n, device, dtype = _torch_matvec(op)
    batched = op.hvp_batch if _native(op) else None
    gen = torch.Generator().manual_seed(seed)
    quads: list[torch.Tensor] = []
    while len(quads) < probes:
        vs = torch.stack([_rademacher(n, gen, device, dtype) for _ in range(min(batch, probes - len(quads)))])
        hv = batched(vs) if batched is not None else torch.stack([matvec(v) for v in vs])
        quads.extend((vs * hv).sum(1))
        if rel_stderr is not None and len(quads) > 1:
            samples = torch.stack(quads).double()
            if samples.std() / len(quads) ** 0.5 <= rel_stderr * samples.mean().abs():
                break
    samples = torch.stack(quads).double().cpu().numpy()  # one host sync per batch at most
    k = len(samples)
    sem = samples.std(ddof=1) / np.sqrt(k) if k > 1 else 0.0
    return float(samples.mean()), float(sem)


def lanczos(op, v0, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` Lanczos iterations from ``v0`` (numpy or torch, length ``P``) with full reorthogonalisation.

    Returns the tridiagonal matrix ``T = Vᵀ H V`` as ``(diagonal α (m,), off-diagonal β (m−1,))``,
    ``m ≤ steps`` (fewer if the Krylov space becomes invariant, e.g. ``steps ≥ P``). Each step is one
    product plus a Gram–Schmidt pass against all previous vectors (a second one only when the first
    cancelled more than half the norm: Daniel–Gragg–Kaufman–Stewart); the basis (``steps × P``) stays
    on the operator's device in its dtype (float32 for a model's Hessian).
    """
    alpha, beta, _ = _lanczos(op, v0, steps)
    return alpha, beta


def _lanczos(op, v0, steps: int, stop: Callable[[list, list, float], bool] | None = None):
    """:func:`lanczos`, also returning the orthonormal basis ``V`` ``(m, P)`` (torch, the operator's
    device/dtype); ``stop(alpha, beta, b)`` is asked after each step with the next off-diagonal ``b``
    and ends the iteration when true."""
    matvec, n, device, dtype = _torch_matvec(op)
    steps = int(min(steps, n))
    basis = torch.empty(steps, n, device=device, dtype=dtype)
    alpha, beta = [], []
    v = torch.as_tensor(np.asarray(v0) if not isinstance(v0, torch.Tensor) else v0).to(device, dtype).reshape(-1)
    v = v / torch.linalg.vector_norm(v)
    for j in range(steps):
        basis[j] = v
        w = matvec(v)
        a = float(torch.dot(v, w))
        alpha.append(a)
        if j == steps - 1:
            break
        scale = float(torch.linalg.vector_norm(w))
        w = w - a * v
        if j:
            w -= beta[-1] * basis[j - 1]
        done = basis[:j + 1]
        before = float(torch.linalg.vector_norm(w))
        w -= done.T @ (done @ w)  # full reorthogonalisation (classical Gram-Schmidt) ...
        b = float(torch.linalg.vector_norm(w))
        if b < 0.7071 * before:  # ... repeated when it cancelled much (DGKS criterion; "twice is enough")
            w -= done.T @ (done @ w)
            b = float(torch.linalg.vector_norm(w))
        if b <= (1e-10 if dtype == torch.float64 else 1e-5) * scale:
            break  # invariant subspace (to the working precision): T is exact
        if stop is not None and stop(alpha, beta, b):
            break
        beta.append(b)
        v = w / b
    return np.array(alpha), np.array(beta), basis[:len(alpha)]


class LanczosTop:
    """What :func:`lanczos_top_eigen` found: ``value`` (the top Ritz value), ``bound`` (its residual
    ``‖H V s − θ V s‖ = β_m |s_m|``: an eigenvalue of ``H`` lies within it), ``products``, and the
    Krylov ``basis`` ``(m, P)`` with ``T``'s diagonal ``alpha`` (``Σ α = tr(Vᵀ H V)``), reusable by
    :func:`deflated_trace`."""

    def __init__(self, value: float, bound: float, products: int, basis: torch.Tensor, alpha: np.ndarray):
        self.value, self.bound, self.products, self.basis, self.alpha = value, bound, products, basis, alpha


def lanczos_top_eigen(op, *, rtol: float = 1e-3, maxiter: int = 300, seed: int = 0, min_steps: int = 2) -> LanczosTop:
    """The largest (algebraic) eigenvalue by Lanczos with full reorthogonalisation, stopped as soon as
    the residual bound of the top Ritz pair is at most ``rtol · |θ|`` (at most ``maxiter`` products).

    The same Krylov method as :func:`top_eigen` (ARPACK) without restarts or the numpy round trip
    per product, and with an error bound as stopping rule: power iteration (PyHessian,
    :func:`power_iteration`) stops on the change between iterates, which says little about the
    error and takes ``O(λ₁/(λ₁−λ₂))`` products. Starts from a seeded Gaussian vector. ``bound`` is
    NaN when ``maxiter`` ran out before the bound was met.
    """
    if not 0 < rtol < 1:
        raise ConfigError(f"lanczos_top_eigen needs 0 < rtol < 1; got {rtol}")
    _, n, _, _ = _torch_matvec(op)
    v0 = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    found = {}

    def stop(alpha, beta, b):
        if len(alpha) < min_steps:
            return False
        vals, vecs = scipy.linalg.eigh_tridiagonal(np.array(alpha), np.array(beta)) if len(alpha) > 1 else (
            np.array(alpha), np.ones((1, 1)))
        found["steps"], found["bound"] = len(alpha), float(b * abs(vecs[-1, -1]))
        return found["bound"] <= rtol * abs(float(vals[-1]))

    alpha, beta, basis = _lanczos(op, v0, maxiter, stop)
    value = float((scipy.linalg.eigh_tridiagonal(alpha, beta, eigvals_only=True) if len(alpha) > 1 else alpha)[-1])
    if found.get("steps") == len(alpha):  # stopped on the bound
        bound = found["bound"]
    else:  # the Krylov space became invariant (T exact: bound 0) or maxiter ran out (bound unknown)
        bound = float("nan") if len(alpha) >= min(maxiter, n) else 0.0
    return LanczosTop(value, bound, len(alpha), basis, alpha)


def deflated_trace(op, *, rel_stderr: float = 0.01, max_probes: int = 10_000, deflate: LanczosTop | int = 30,
                   seed: int = 0, batch: int = 32) -> tuple[float, float, int]:
    """``tr H`` as ``tr(Vᵀ H V) + tr(P H P)`` with ``P = I − V Vᵀ``: the first term exact from a Lanczos
    basis ``V`` (``Σ α``), the second by Hutchinson with Rademacher probes projected by ``P``, drawn
    ``batch`` at a time until the standard error is at most ``rel_stderr · |estimate|`` (or
    ``max_probes``). Unbiased like :func:`hutchinson_trace` (``tr(VVᵀ H P) = 0``), with the variance
    of the top eigen-directions — where a Hessian's outliers put most of ``‖H‖_F``, and so most of
    Hutchinson's variance — removed (deflated Hutchinson; cf. Hutch++, Meyer et al. 2021).

    ``deflate``: a :class:`LanczosTop` (reuses its basis: no extra products) or a number of Lanczos
    steps from a seeded start. Returns ``(estimate, standard error, products)``; the standard error
    is that of the stochastic part (the deflated part is exact).
    """
    if not rel_stderr > 0 or max_probes < 2 or batch < 1:
        raise ConfigError(f"deflated_trace needs rel_stderr > 0, max_probes >= 2 and batch >= 1; "
                          f"got {rel_stderr}, {max_probes}, {batch}")
    matvec, n, device, dtype = _torch_matvec(op)
    products = 0
    if not isinstance(deflate, LanczosTop):
        v0 = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        alpha, _, basis = _lanczos(op, v0, int(deflate))
        deflate, products = LanczosTop(float("nan"), float("nan"), len(alpha), basis, alpha), len(alpha)
    basis, exact = deflate.basis, float(np.sum(deflate.alpha))
    batched = op.hvp_batch if _native(op) else None
    gen = torch.Generator().manual_seed(seed)
    quads: list[torch.Tensor] = []
    while len(quads) < max_probes:
        g = torch.stack([_rademacher(n, gen, device, dtype) for _ in range(min(batch, max_probes - len(quads)))])
        vs = g - (g @ basis.T) @ basis  # P g
        hv = batched(vs) if batched is not None else torch.stack([matvec(v) for v in vs])
        quads.extend((vs * hv).sum(1))
        products += len(vs)
        samples = torch.stack(quads).double()
        if len(quads) > 1 and samples.std() / len(quads) ** 0.5 <= rel_stderr * abs(exact + float(samples.mean())):
            break
    samples = torch.stack(quads).double().cpu().numpy()
    sem = samples.std(ddof=1) / np.sqrt(len(samples))
    return exact + float(samples.mean()), float(sem), products


def lanczos_quadrature(op, v0, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature nodes and weights of the spectral measure of ``H`` seen from ``v0``.

    From ``T = QΛQᵀ`` (``scipy.linalg.eigh_tridiagonal``): nodes ``Λ`` (Ritz values), weights
    ``Q[0, :]²`` (sum to 1). Exact for polynomials of degree ``≤ 2m − 1``:
    ``Σ_j w_j θ_jᵏ = v̂ᵀ Hᵏ v̂`` with ``v̂ = v0/‖v0‖``.
    """
    alpha, beta = lanczos(op, v0, steps)
    if len(alpha) == 1:
        return alpha, np.ones(1)
    nodes, vecs = scipy.linalg.eigh_tridiagonal(alpha, beta)
    return nodes, vecs[0] ** 2


def spectral_density(op, n_probes: int = 5, lanczos_steps: int = 30, *, sigma: float | None = None,
                     grid: np.ndarray | int = 1000, seed: int = 0,
                     return_quadrature: bool = False):
    """Gaussian-smoothed empirical spectral density of ``H`` by stochastic Lanczos quadrature (IFA B.7).

    ``φ(t) ≈ (1/n_probes) Σ_l Σ_j w_j^l g_σ(t − θ_j^l)`` with ``(θ^l, w^l)`` the quadrature of
    :func:`lanczos_quadrature` from Rademacher probe ``l``. ``E[w]`` puts mass ``1/P`` on every
    eigenvalue, so ``φ`` estimates ``(1/P) Σ_i g_σ(t − λ_i)``.

    ``sigma``: kernel width in eigenvalue units; default 1 % of the node range (at least 1e-6).
    ``grid``: the evaluation points (uniformly spaced array), or their number (default 1000,
    spanning the nodes ± 6σ). The density is reported as the mean of ``φ`` over each grid cell
    (width ``h`` around each point; from the normal CDF), so ``Σ density · h`` is exactly the
    smoothed mass inside the grid — 1 up to ~1e-9 when the grid covers the nodes ± 6σ.

    Returns ``(grid (G,), density (G,))``, plus ``(nodes (n_probes, m), weights (n_probes, m))``
    if ``return_quadrature`` (rows padded with NaN nodes / zero weights when a run ends early).
    """
    if n_probes < 1 or lanczos_steps < 1:
        raise ConfigError(f"spectral_density needs n_probes >= 1 and lanczos_steps >= 1; got {n_probes}, {lanczos_steps}")
    if not _native(op):
        op = _as_operator(op)
    gen = torch.Generator().manual_seed(seed)
    runs = []
    for _ in range(n_probes):
        v = _rademacher(op.shape[0], gen, "cpu", torch.float64)
        runs.append(lanczos_quadrature(op, v, lanczos_steps))
    m = max(len(r[0]) for r in runs)
    nodes = np.full((n_probes, m), np.nan)
    weights = np.zeros((n_probes, m))
    for i, (t, w) in enumerate(runs):
        nodes[i, :len(t)], weights[i, :len(w)] = t, w
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    if sigma is None:
        sigma = max(0.01 * (hi - lo), 1e-6)
    if sigma <= 0:
        raise ConfigError(f"spectral_density needs a positive smoothing width sigma; got {sigma}")
    if np.isscalar(grid):
        grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, int(grid))
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or len(grid) < 2 or not np.allclose(np.diff(grid), grid[1] - grid[0], rtol=1e-6, atol=0):
        raise ConfigError("spectral_density needs a uniformly spaced 1-D grid of at least 2 points")
    h = grid[1] - grid[0]
    valid = ~np.isnan(nodes)
    t, w = nodes[valid], weights[valid] / n_probes
    upper = scipy.special.ndtr((grid[:, None] + h / 2 - t[None, :]) / sigma)
    lower = scipy.special.ndtr((grid[:, None] - h / 2 - t[None, :]) / sigma)
    density = (upper - lower) @ w / h
    if return_quadrature:
        return grid, density, nodes, weights
    return grid, density
