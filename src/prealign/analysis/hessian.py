"""Hessian spectrum of the true training loss from Hessian-vector products (IFA paper B.7, Fig. 2e–k, 5b–d).

Nothing here forms the Hessian. :func:`hessian_operator` wraps a model, a loss and data as a
:class:`scipy.sparse.linalg.LinearOperator` ``H`` of shape ``(P, P)`` (``P`` = number of
trainable parameters, in ``model.parameters()`` order, flattened as by
``torch.nn.utils.parameters_to_vector``) whose ``matvec`` is one Hessian-vector product of the
*mean* loss over the given data. The numerical linear algebra lives in :mod:`.spectrum` and works
on any symmetric ``LinearOperator``: top eigenpairs (:func:`~.spectrum.top_eigen`, Lanczos;
:func:`~.spectrum.power_iteration`, PyHessian's method), the trace (:func:`~.spectrum.hutchinson_trace`,
:func:`~.spectrum.deflated_trace`) and the spectral density (:func:`~.spectrum.spectral_density`).
Here, on a model: :func:`hessian_summary` and :class:`HessianTracker` — those measures under
:func:`prealign.exact_gradients`, for one call or every N epochs of training.

Units: eigenvalues and trace are in units of loss per squared parameter unit (the loss is the
mean over samples, so they do not grow with the number of samples).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.sparse.linalg
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, PrealignError
from .spectrum import hutchinson_trace, spectral_density, top_eigen

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HVP_METHODS = ("auto", "graph", "func", "autograd")


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the Hessian is taken over: ``requires_grad`` ones, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


class HessianOperator(scipy.sparse.linalg.LinearOperator):
    """``H = ∇²_θ (1/N) Σ_n loss(model(x_n), y_n)`` as a symmetric ``LinearOperator``.

    Two interfaces to the same product: :meth:`hvp` takes and returns flat torch vectors of length
    ``P`` on the parameters' device and dtype (what :func:`power_iteration`,
    :func:`hutchinson_trace` and :func:`lanczos` use: no host round trip per product), and the
    scipy ``matvec`` takes and returns float64 numpy arrays (what ``eigsh`` uses). The product is
    computed in the parameters' dtype, batch by batch (``batch_size`` samples at a time, weighted
    by batch size — ``loss_fn`` must return the batch *mean*, like ``F.cross_entropy``), with the
    model in ``eval()`` mode and, for feedback layers, exact autograd gradients. The model is left
    exactly as found.

    ``method``:

    - ``"graph"``: build each batch's gradient graph once (``create_graph=True``) and reuse it for
      every product, ``H v = ∂(gᵀv)/∂θ`` by one backward pass through the stored graph (what
      PyHessian does for a single batch). The cheapest product (no forward pass, no first-order
      backward); memory holds every batch's graph. Rebuilt automatically if the parameters change
      in place (an optimizer step, ``load_state_dict``).
    - ``"func"``: forward-over-reverse per batch and product (``torch.func.jvp`` of ``torch.func.grad``);
      memory bounded by one batch.
    - ``"autograd"``: reverse-over-reverse per batch and product (double backward); bounded memory,
      works through custom autograd Functions that ``torch.func`` cannot transform (the DFA hook).
    - ``"auto"`` (default): ``"graph"`` when the data is one batch (``batch_size`` unset or ``≥ N``),
      else ``"func"``, switching to ``"autograd"`` for models ``torch.func`` cannot transform.
      ``self.method`` tells which one runs.

    ``self.n_products`` counts the Hessian-vector products computed.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                 batch_size: int | None = None, method: str = "auto"):
        if method not in HVP_METHODS:
            raise ConfigError(f"unknown Hessian-vector product method {method!r}; valid: {', '.join(HVP_METHODS)}")
        if len(x) != len(y) or len(x) == 0:
            raise PrealignError(f"Hessian data needs as many targets as inputs and at least one sample; "
                                f"got {len(x)} inputs and {len(y)} targets: pass matching x and y")
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.batch_size = min(int(batch_size), len(x)) if batch_size else len(x)
        self.params = trainable_parameters(model)
        if not self.params:
            raise PrealignError("the model has no trainable parameters: nothing to take a Hessian over")
        self.sizes = [p.numel() for p in self.params]
        if method == "auto" and self.batch_size == len(x):
            method = "graph"
        self.method = method
        self.n_products = 0
        self._graphs: list[tuple[list[torch.Tensor], list[int], float]] | None = None
        self._versions: list[int] = []
        n = sum(self.sizes)
        super().__init__(dtype=np.float64, shape=(n, n))

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def param_dtype(self) -> torch.dtype:
        return self.params[0].dtype

    # -- Hessian-vector products ------------------------------------------------------------
    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [chunk.view_as(p) for chunk, p in zip(torch.split(v, self.sizes), self.params)]

    def _batches(self):
        n = len(self.x)
        for start in range(0, n, self.batch_size):
            xb, yb = self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
            yield xb, yb, len(xb) / n

    def _build_graphs(self) -> None:
        """Each batch's gradient ``g = ∇θ loss`` with its graph kept (``create_graph=True``)."""
        self._graphs = []
        for xb, yb, weight in self._batches():
            loss = self.loss_fn(self.model(xb), yb)
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
            live = [i for i, g in enumerate(grads) if g.requires_grad]  # a constant gradient has H v = 0
            self._graphs.append(([grads[i] for i in live], live, weight))
        self._versions = [p._version for p in self.params]

    def _hvp_graph(self, vs, total) -> None:
        if self._graphs is None or self._versions != [p._version for p in self.params]:
            self._build_graphs()  # first product, or the parameters changed since the graph was built
        for grads, live, weight in self._graphs:
            if not grads:
                continue
            parts = torch.autograd.grad(grads, self.params, [vs[i] for i in live], retain_graph=True,
                                        allow_unused=True, materialize_grads=True)
            for t, h in zip(total, parts):
                t.add_(h, alpha=weight)

    def _hvp_autograd(self, xb, yb, vs):
        loss = self.loss_fn(self.model(xb), yb)
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vs))
        return torch.autograd.grad(dot, self.params, allow_unused=True, materialize_grads=True)

    def _hvp_func(self, xb, yb, vs):
        from torch.func import functional_call, grad, jvp

        names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        fixed = {name: p.detach() for name, p in self.model.named_parameters() if not p.requires_grad}
        primals = {name: p.detach() for name, p in zip(names, self.params)}
        tangents = dict(zip(names, vs))

        def loss_of(theta):
            return self.loss_fn(functional_call(self.model, {**fixed, **theta}, (xb,)), yb)

        out = jvp(grad(loss_of), (primals,), (tangents,))[1]
        return [out[name] for name in names]

    def _batch_hvp(self, xb, yb, vs):
        if self.method == "autograd":
            return self._hvp_autograd(xb, yb, vs)
        if self.method == "func":
            return self._hvp_func(xb, yb, vs)
        try:  # auto over several batches: the fast path, unless torch.func cannot transform this forward
            out = self._hvp_func(xb, yb, vs)
            self.method = "func"
            return out
        except RuntimeError as err:
            if "autograd.Function" not in str(err) and "functorch" not in str(err):
                raise
            self.method = "autograd"
            return self._hvp_autograd(xb, yb, vs)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat torch vector ``v`` (length ``P``, any dtype/device); returns the params' dtype/device."""
        from ..feedback import exact_gradients

        vs = self._split(v.to(device=self.device, dtype=self.param_dtype).reshape(-1))
        total = [torch.zeros_like(p) for p in self.params]
        was_training = self.model.training
        self.model.eval()
        try:
            with exact_gradients(self.model), torch.enable_grad():
                if self.method == "graph":
                    self._hvp_graph(vs, total)
                else:
                    for xb, yb, weight in self._batches():
                        for t, h in zip(total, self._batch_hvp(xb, yb, vs)):
                            t.add_(h, alpha=weight)
        finally:
            self.model.train(was_training)
        self.n_products += 1
        return torch.cat([t.reshape(-1) for t in total])

    def hvp_batch(self, vs: torch.Tensor) -> torch.Tensor:
        """``H vᵢ`` for the rows of ``vs`` ``(k, P)`` at once: with the ``"graph"`` method one batched
        backward pass through the stored graph (``is_grads_batched``: the k products share every
        kernel launch), else :meth:`hvp` row by row. Returns ``(k, P)`` in the parameters' dtype/device;
        equal to :meth:`hvp` per row up to floating-point summation order."""
        from ..feedback import exact_gradients

        vs = vs.to(device=self.device, dtype=self.param_dtype).reshape(len(vs), -1)
        if self.method != "graph" or len(vs) == 1:
            return torch.stack([self.hvp(v) for v in vs])
        parts = [chunk.view(len(vs), *p.shape) for chunk, p in zip(torch.split(vs, self.sizes, dim=1), self.params)]
        total = [torch.zeros(len(vs), *p.shape, device=self.device, dtype=self.param_dtype) for p in self.params]
        was_training = self.model.training
        self.model.eval()
        try:
            with exact_gradients(self.model), torch.enable_grad():
                if self._graphs is None or self._versions != [p._version for p in self.params]:
                    self._build_graphs()
                for grads, live, weight in self._graphs:
                    if not grads:
                        continue
                    hs = torch.autograd.grad(grads, self.params, [parts[i] for i in live], retain_graph=True,
                                             allow_unused=True, materialize_grads=True, is_grads_batched=True)
                    for t, h in zip(total, hs):
                        t.add_(h, alpha=weight)
        finally:
            self.model.train(was_training)
        self.n_products += len(vs)
        return torch.cat([t.reshape(len(vs), -1) for t in total], dim=1)

    def release(self) -> None:
        """Free the stored gradient graphs (``"graph"`` method); the next product rebuilds them."""
        self._graphs = None

    def _matvec(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        return self.hvp(torch.from_numpy(v)).detach().to("cpu", torch.float64).numpy()

    def _rmatvec(self, v: np.ndarray) -> np.ndarray:  # symmetric
        return self._matvec(v)

    def _adjoint(self):
        return self


def hessian_operator(model: nn.Module, loss_fn: LossFn | None = None, x: torch.Tensor | None = None,
                     y: torch.Tensor | None = None, *, batch_size: int | None = None,
                     method: str = "auto") -> HessianOperator:
    """The Hessian of the mean loss of ``model`` on ``(x, y)`` w.r.t. its trainable parameters, as a
    ``LinearOperator`` of shape ``(P, P)`` (see :class:`HessianOperator`). ``loss_fn`` defaults to
    ``F.cross_entropy`` (logits ``(N, C)``, integer targets ``(N,)``)."""
    if x is None or y is None:
        raise PrealignError("hessian_operator needs data: pass inputs x and targets y")
    return HessianOperator(model, loss_fn or F.cross_entropy, x, y, batch_size=batch_size, method=method)


# -- on a model ----------------------------------------------------------------------------------
def hessian_summary(model: nn.Module, data_x: torch.Tensor, data_y: torch.Tensor, *, n_samples: int | None = 1000,
                    k: int = 1, probes: int = 50, density_probes: int = 5, lanczos_steps: int = 30,
                    sigma: float | None = None, grid: int = 1000, loss_fn: LossFn | None = None,
                    batch_size: int | None = None, tol: float = 1e-3, seed: int = 0,
                    density: bool = True, eigenvectors: bool = False) -> dict:
    """Top-``k`` eigenvalues, Hutchinson trace and SLQ spectral density of the true training loss.

    Uses the first ``n_samples`` of ``(data_x, data_y)`` (all if ``None``; pass a shuffled
    subset yourself for another choice), under :func:`prealign.exact_gradients`. Returns a
    JSON-ready dict: ``top_eigenvalues`` (list, descending), ``trace``, ``trace_stderr``,
    ``density_grid``/``density`` (lists; absent if ``density=False``), ``n_samples``,
    ``n_params``, ``hvp_method``, ``n_products``, ``seconds`` (per part and ``total``), and
    ``eigenvectors`` (numpy ``(P, k)``, not JSON) if asked.
    """
    if n_samples is not None and n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1 (or None for all), got {n_samples}")
    x = data_x if n_samples is None else data_x[:n_samples]
    y = data_y if n_samples is None else data_y[:n_samples]
    op = hessian_operator(model, loss_fn, x, y, batch_size=batch_size)
    seconds = {}
    start = time.perf_counter()
    vals, vecs = top_eigen(op, k=k, tol=tol, seed=seed)
    seconds["top_eigen"] = time.perf_counter() - start
    t0 = time.perf_counter()
    trace, stderr = hutchinson_trace(op, probes=probes, seed=seed)
    seconds["trace"] = time.perf_counter() - t0
    out = {"top_eigenvalues": [float(v) for v in vals], "trace": trace, "trace_stderr": stderr,
           "n_samples": len(x), "n_params": op.shape[0]}
    if density:
        t0 = time.perf_counter()
        g, d = spectral_density(op, density_probes, lanczos_steps, sigma=sigma, grid=grid, seed=seed)
        seconds["density"] = time.perf_counter() - t0
        out["density_grid"], out["density"] = g.tolist(), d.tolist()
    seconds["total"] = time.perf_counter() - start
    out.update(hvp_method=op.method, n_products=op.n_products, seconds=seconds)
    if eigenvectors:
        out["eigenvectors"] = vecs
    return out


class HessianTracker:
    """Trainer callback: Hessian top eigenvalue and trace every ``every`` epochs (IFA Fig. 2f–k).

    On ``epoch % every == 0`` it adds ``record["hessian_top_eig"]``, ``record["hessian_trace"]``
    (and ``record["hessian_trace_stderr"]``) computed on a fixed subset of the training data: the
    same ``n_samples`` indices at every epoch (drawn once from ``seed``), the same probes, so the
    curve shows the change of the landscape, not of the sample. A diverged model (non-finite
    loss) records NaN instead of failing the run.
    """

    def __init__(self, every: int = 1, n_samples: int = 1000, probes: int = 30, *, tol: float = 1e-3,
                 loss_fn: LossFn | None = None, batch_size: int | None = None, seed: int = 0):
        if every < 1 or n_samples < 1 or probes < 1:
            raise ConfigError(f"HessianTracker needs every, n_samples and probes >= 1; got {every}, {n_samples}, {probes}")
        self.every, self.n_samples, self.probes, self.tol = every, n_samples, probes, tol
        self.loss_fn, self.batch_size, self.seed = loss_fn, batch_size, seed
        self._index = None

    def on_epoch_end(self, epoch: int, model: nn.Module, data, record: dict) -> None:
        if epoch % self.every:
            return
        x, y = data.x_train, data.y_train
        if self._index is None or len(self._index) > len(x):
            gen = torch.Generator().manual_seed(self.seed)
            self._index = torch.randperm(len(x), generator=gen)[:self.n_samples].to(x.device)
        xs, ys = x[self._index], y[self._index]
        op = hessian_operator(model, self.loss_fn, xs, ys, batch_size=self.batch_size)
        try:
            top = float(top_eigen(op, k=1, tol=self.tol, seed=self.seed)[0][0])
            trace, stderr = hutchinson_trace(op, probes=self.probes, seed=self.seed)
        except (scipy.sparse.linalg.ArpackError, ValueError, FloatingPointError):
            top = trace = stderr = float("nan")
        if not (np.isfinite(top) and np.isfinite(trace)):
            top = trace = stderr = float("nan")
        record["hessian_top_eig"] = top
        record["hessian_trace"] = trace
        record["hessian_trace_stderr"] = stderr
