"""Loss landscapes: the training trajectory in its PCA plane (IFA paper B.6, Fig. 2a–d) and the
loss around a trained point along the top-2 Hessian eigenvectors (IFA paper B.8, Fig. 5a).

Parameters are handled as one flat float32 vector ``θ`` of length ``P`` (the trainable
parameters in ``model.parameters()`` order, as ``torch.nn.utils.parameters_to_vector``).

- :class:`TrajectoryRecorder` — a trainer callback that snapshots ``θ`` every epoch (and, if asked,
  every ``n`` optimizer steps), keeping at most ``max_in_memory`` snapshots in memory and
  spilling the rest to ``.npy`` files read back by memory map.
- :func:`trajectory_pca` — PCA of ``θ_t − θ_final`` (exactly sklearn's PCA, computed from the
  ``T × T`` Gram matrix streamed chunk by chunk, so a trajectory on disk is never loaded whole).
- :func:`loss_surface` — the mean loss on the grid ``center + α d₁ + β d₂``; the model is restored.
- :func:`perturbed_surface` — :func:`loss_surface` along the top-2 Hessian eigenvectors.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, PrealignError
from .hessian import LossFn, hessian_operator, trainable_parameters
from .spectrum import top_eigen


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """``θ``: the trainable parameters as one detached flat vector (model's device and dtype)."""
    return torch.nn.utils.parameters_to_vector(trainable_parameters(model)).detach()


# -- recording the trajectory ----------------------------------------------------------------------
class TrajectoryRecorder:
    """Trainer callback collecting parameter snapshots ``θ_t`` (float32, ``P`` values each) in bounded memory.

    ``on_epoch_end(epoch, model, data, record)`` snapshots after every epoch; with ``every_steps=n``
    ``on_step_end(step, model)`` also snapshots every ``n`` optimizer steps (IFA B.6 records every
    step). Call :meth:`snapshot` yourself for any other schedule (e.g. the initial point).

    At most ``max_in_memory`` snapshots live in memory; when the buffer is full it is written to
    ``spill_dir`` as one ``chunk_NNNNN.npy`` (a temporary folder, removed by :meth:`close` or at
    garbage collection, unless you name one). ``len(rec)``, ``rec[i]`` and :meth:`chunks` read
    all snapshots back in order; ``rec.labels[i]`` says where each came from (``("epoch", e)`` or
    ``("step", s)``).
    """

    def __init__(self, max_in_memory: int = 32, *, every_steps: int | None = None,
                 spill_dir: str | Path | None = None):
        if max_in_memory < 1:
            raise ConfigError(f"TrajectoryRecorder needs max_in_memory >= 1; got {max_in_memory}")
        if every_steps is not None and every_steps < 1:
            raise ConfigError(f"TrajectoryRecorder needs every_steps >= 1 or None; got {every_steps}")
        self.max_in_memory, self.every_steps = int(max_in_memory), every_steps
        self._own_dir = spill_dir is None
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._buffer: list[np.ndarray] = []
        self._files: list[tuple[Path, int]] = []
        self.labels: list[tuple[str, int]] = []
        self.size: int | None = None

    # -- callbacks
    def on_epoch_end(self, epoch: int, model: nn.Module, data=None, record: dict | None = None) -> None:
        self.snapshot(model, ("epoch", int(epoch)))

    def on_step_end(self, step: int, model: nn.Module) -> None:
        if self.every_steps is not None and step % self.every_steps == 0:
            self.snapshot(model, ("step", int(step)))

    def snapshot(self, model: nn.Module, label: tuple[str, int] = ("manual", -1)) -> None:
        """Append the current ``θ`` of ``model``."""
        theta = flat_parameters(model).to("cpu", torch.float32).numpy().copy()
        if self.size is None:
            self.size = theta.size
        elif theta.size != self.size:
            raise PrealignError(f"snapshot has {theta.size} parameters, earlier ones {self.size}: "
                                "record one model per TrajectoryRecorder")
        self._buffer.append(theta)
        self.labels.append(label)
        if len(self._buffer) >= self.max_in_memory:
            self._spill()

    def _spill(self) -> None:
        if not self._buffer:
            return
        if self._spill_dir is None:
            self._spill_dir = Path(tempfile.mkdtemp(prefix="prealign-trajectory-"))
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        path = self._spill_dir / f"chunk_{len(self._files):05d}.npy"
        np.save(path, np.stack(self._buffer))
        self._files.append((path, len(self._buffer)))
        self._buffer = []

    # -- reading back
    @property
    def in_memory(self) -> int:
        """Number of snapshots currently held in memory (never more than ``max_in_memory``)."""
        return len(self._buffer)

    @property
    def spill_dir(self) -> Path | None:
        return self._spill_dir

    def __len__(self) -> int:
        return sum(n for _, n in self._files) + len(self._buffer)

    def chunks(self) -> Iterator[np.ndarray]:
        """The snapshots in order, as ``(c, P)`` arrays: memory-mapped from disk, then the in-memory buffer."""
        for path, _ in self._files:
            yield np.load(path, mmap_mode="r")
        if self._buffer:
            yield np.stack(self._buffer)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"snapshot {i} out of range (have {n})")
        i %= n
        for path, count in self._files:
            if i < count:
                return np.array(np.load(path, mmap_mode="r")[i])
            i -= count
        return self._buffer[i].copy()

    def save(self, path: str | Path) -> Path:
        """Write all snapshots to one ``(T, P)`` float32 ``.npy`` (streamed, bounded memory); return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(self), self.size or 0))
        start = 0
        for chunk in self.chunks():
            out[start:start + len(chunk)] = chunk
            start += len(chunk)
        out.flush()
        del out
        return path

    def close(self) -> None:
        """Delete spilled files (only a temporary folder this recorder made itself)."""
        if self._own_dir and self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill_dir, self._files = None, []

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


# -- PCA of the trajectory -----------------------------------------------------------------------
def _chunks_of(snapshots) -> Iterable[np.ndarray]:
    if isinstance(snapshots, TrajectoryRecorder):
        return list(snapshots.chunks())
    if isinstance(snapshots, np.ndarray):
        return [snapshots]
    if isinstance(snapshots, torch.Tensor):
        return [snapshots.detach().cpu().numpy()]
    return [np.stack([np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s) for s in snapshots])]


def trajectory_pca(snapshots, final, *, center: bool = True, chunk_rows: int = 64) -> dict:
    """Two principal directions of the trajectory ``D = [θ_t − θ_final]_t`` (IFA B.6; Li et al. 2018).

    ``snapshots``: a :class:`TrajectoryRecorder`, a ``(T, P)`` array/tensor or a list of ``(P,)``
    vectors; ``final``: ``θ_final`` ``(P,)``. With ``center=True`` (sklearn's ``PCA``, what Li et
    al.'s code runs) the rows of ``D`` are mean-centred before the decomposition. Computed in
    float64 from the ``T × T`` Gram matrix, accumulated chunk by chunk, so memory is
    ``O(T² + chunk·P)``, never ``O(T·P)``.

    Returns a dict: ``directions`` ``(2, P)`` float64 orthonormal rows, ``explained_variance_ratio``
    ``(2,)``, ``explained_variance`` ``(2,)``, and ``coords`` ``(T, 2)``: each ``θ_t − θ_final``
    projected on the directions (the final point is the origin).
    """
    final = np.asarray(final.detach().cpu() if isinstance(final, torch.Tensor) else final, dtype=np.float64).reshape(-1)
    blocks = []
    for chunk in _chunks_of(snapshots):
        for start in range(0, len(chunk), chunk_rows):
            blocks.append((chunk, start, min(start + chunk_rows, len(chunk))))
    t = sum(b - a for _, a, b in blocks)
    if t < 3:
        raise PrealignError(f"trajectory PCA needs at least 3 snapshots; got {t}: record more epochs or steps")

    def rows(block):
        chunk, a, b = block
        d = np.asarray(chunk[a:b], dtype=np.float64) - final
        if d.shape[1] != final.size:
            raise PrealignError(f"snapshots have {d.shape[1]} parameters but the final point has {final.size}")
        return d

    gram = np.zeros((t, t))  # G = D Dᵀ, block by block
    offsets = np.cumsum([0] + [b - a for _, a, b in blocks])
    for i, bi in enumerate(blocks):
        di = rows(bi)
        for j in range(i, len(blocks)):
            dj = di if j == i else rows(blocks[j])
            g = di @ dj.T
            gram[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]] = g
            gram[offsets[j]:offsets[j + 1], offsets[i]:offsets[i + 1]] = g.T
    mean_w = np.full(t, 1.0 / t) if center else np.zeros(t)
    c = np.eye(t) - np.outer(np.ones(t), mean_w)  # rows of C D = centred rows of D
    gram_c = c @ gram @ c.T
    evals, evecs = np.linalg.eigh(gram_c)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0, None), evecs[:, order]
    if evals[1] <= 1e-10 * np.trace(gram):
        raise PrealignError("the trajectory spans fewer than two directions (parameters barely moved): "
                            "train longer or record more snapshots")
    coef = (c.T @ evecs[:, :2]) / np.sqrt(evals[:2])  # directions = (C D)ᵀ u / s = Dᵀ (Cᵀ u / s)
    directions = np.zeros((2, final.size))
    for i, block in enumerate(blocks):
        directions += coef[offsets[i]:offsets[i + 1]].T @ rows(block)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)  # guard rounding
    coords = np.concatenate([rows(b) @ directions.T for b in blocks])
    return {"directions": directions, "explained_variance": evals[:2] / (t - 1),
            "explained_variance_ratio": evals[:2] / evals.sum(), "coords": coords}


# -- loss on a plane -----------------------------------------------------------------------------
@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn: LossFn | None, x: torch.Tensor, y: torch.Tensor, *,
                  batch_size: int | None = None) -> float:
    """Mean loss of ``model`` (in ``eval()`` mode) on ``(x, y)``, batch means weighted by batch size."""
    loss_fn = loss_fn or F.cross_entropy
    n = len(x)
    batch_size = int(batch_size) if batch_size else n
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for start in range(0, n, batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            total += float(loss_fn(model(xb), yb)) * (len(xb) / n)
    finally:
        model.train(was_training)
    return total


@torch.no_grad()
def set_flat_parameters(model: nn.Module, theta: torch.Tensor) -> None:
    """Copy the flat vector ``theta`` ``(P,)`` into the trainable parameters, in place (storage kept)."""
    params = trainable_parameters(model)
    for p, chunk in zip(params, torch.split(theta.reshape(-1), [p.numel() for p in params])):
        p.copy_(chunk.view_as(p))


def _as_vector(v, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
    v = v.to(device=like.device, dtype=like.dtype).reshape(-1)
    if v.numel() != like.numel():
        raise PrealignError(f"direction has {v.numel()} values but the model has {like.numel()} trainable parameters")
    return v


@torch.no_grad()
def loss_surface(model: nn.Module, loss_fn: LossFn | None, x: torch.Tensor, y: torch.Tensor, center, d1, d2,
                 alphas: Sequence[float], betas: Sequence[float], *, batch_size: int | None = None,
                 progress: bool | None = None) -> np.ndarray:
    """Mean loss at ``center + α d₁ + β d₂`` for every ``α`` in ``alphas``, ``β`` in ``betas``.

    ``center``, ``d1``, ``d2``: flat ``(P,)`` vectors (numpy or torch; ``center=None`` means the
    model's current ``θ``). Returns ``loss[i, j]`` at ``(α=alphas[j], β=betas[i])``, shape
    ``(len(betas), len(alphas))`` — ready for ``contourf(alphas, betas, loss)``. The model's
    parameters are restored exactly afterwards (also on error). At ``α = β = 0`` the parameters
    are ``center`` bit for bit, so the value there equals :func:`evaluate_loss` at ``center``.
    """
    from ..progress import progress_bar

    original = flat_parameters(model).clone()
    c = original if center is None else _as_vector(center, original)
    u, v = _as_vector(d1, original), _as_vector(d2, original)
    out = np.empty((len(betas), len(alphas)))
    try:
        with progress_bar(len(betas) * len(alphas), "loss surface", enabled=progress) as bar:
            for i, b in enumerate(betas):
                for j, a in enumerate(alphas):
                    theta = c + float(a) * u + float(b) * v if (a or b) else c
                    set_flat_parameters(model, theta)
                    out[i, j] = evaluate_loss(model, loss_fn, x, y, batch_size=batch_size)
                    bar.advance(1)
    finally:
        set_flat_parameters(model, original)
    return out


def path_grid(coords: np.ndarray, n: int = 25, margin: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, betas)``: ``n`` points per axis covering the projected path ``coords (T, 2)`` and the
    origin, widened by ``margin`` × the extent on each side."""
    coords = np.vstack([np.asarray(coords, dtype=np.float64), np.zeros((1, 2))])
    lo, hi = coords.min(0), coords.max(0)
    span = np.maximum(hi - lo, 1e-12)
    lo, hi = lo - margin * span, hi + margin * span
    return np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)


def trajectory_surface(model: nn.Module, snapshots, x: torch.Tensor, y: torch.Tensor, *, final=None,
                       loss_fn: LossFn | None = None, n: int = 25, margin: float = 0.25,
                       batch_size: int | None = None, progress: bool | None = None) -> dict:
    """IFA B.6 end to end: PCA of the trajectory, training loss on the PC plane, projected path.

    ``final`` defaults to the model's current ``θ``. Returns the :func:`trajectory_pca` dict plus
    ``alphas``, ``betas`` and ``loss`` (``(len(betas), len(alphas))``, grid centred on ``final``).
    """
    final_t = flat_parameters(model) if final is None else _as_vector(final, flat_parameters(model))
    pca = trajectory_pca(snapshots, final_t)
    alphas, betas = path_grid(pca["coords"], n=n, margin=margin)
    loss = loss_surface(model, loss_fn, x, y, final_t, pca["directions"][0], pca["directions"][1], alphas, betas,
                        batch_size=batch_size, progress=progress)
    return {**pca, "alphas": alphas, "betas": betas, "loss": loss}


def perturbed_surface(model: nn.Module, loss_fn: LossFn | None, x: torch.Tensor, y: torch.Tensor, *,
                      hessian_x: torch.Tensor | None = None, hessian_y: torch.Tensor | None = None,
                      alphas: Sequence[float] | None = None, betas: Sequence[float] | None = None,
                      eigenvectors: np.ndarray | None = None, tol: float = 1e-3, seed: int = 0,
                      batch_size: int | None = None, progress: bool | None = None) -> dict:
    """Loss around the trained point along the top-2 Hessian eigenvectors (IFA B.8, Fig. 5a, S10).

    ``θ* + α v₁ + β v₂`` with ``v₁, v₂`` the unit eigenvectors of the two largest eigenvalues of the
    Hessian of the loss on ``(hessian_x, hessian_y)`` (default: ``(x, y)``; the paper takes the
    Hessian of the training loss and plots the *test* loss, so pass training data here and test
    data as ``x, y``), computed under :func:`prealign.exact_gradients`; or give ``eigenvectors``
    ``(P, 2)`` yourself. ``alphas``/``betas`` default to 21 points in ``[−1, 1]`` (units of
    parameter-space Euclidean distance). Returns ``alphas``, ``betas``, ``loss``
    ``(len(betas), len(alphas))``, ``eigenvalues`` (2,) (NaN if vectors were given) and
    ``directions`` ``(2, P)``. ``loss`` at ``(0, 0)`` is the loss at ``θ*``.
    """
    alphas = np.linspace(-1, 1, 21) if alphas is None else np.asarray(alphas, dtype=np.float64)
    betas = alphas.copy() if betas is None else np.asarray(betas, dtype=np.float64)
    if min(alphas.size, betas.size) < 2 or not (np.isfinite(alphas).all() and np.isfinite(betas).all()):
        raise ConfigError(f"alphas and betas need at least 2 finite values each, got {alphas.size} and {betas.size}")
    if eigenvectors is None:
        op = hessian_operator(model, loss_fn, x if hessian_x is None else hessian_x,
                              y if hessian_y is None else hessian_y, batch_size=batch_size)
        values, eigenvectors = top_eigen(op, k=2, tol=tol, seed=seed)
    else:
        values = np.full(2, np.nan)
        eigenvectors = np.asarray(eigenvectors)
        if eigenvectors.ndim != 2 or eigenvectors.shape[1] < 2:
            raise PrealignError(f"eigenvectors must have shape (P, 2); got {eigenvectors.shape}")
    directions = np.asarray(eigenvectors[:, :2].T, dtype=np.float64)
    loss = loss_surface(model, loss_fn, x, y, None, directions[0], directions[1], alphas, betas,
                        batch_size=batch_size, progress=progress)
    return {"alphas": alphas, "betas": betas, "loss": loss, "eigenvalues": np.asarray(values), "directions": directions}
