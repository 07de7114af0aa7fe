"""Weight trajectory across noise and data training, and order dependence (SPEC §5).

:class:`WeightTrajectory` records one layer's forward weights ``W`` (the first layer by default)
and ``‖W − B‖`` per feedback layer, as a ``pretrain_noise`` callback (phase ``"noise"``) and as
a trainer callback (phase ``"data"``). :func:`pca_trajectories` projects the snapshots of
several runs onto one shared pair of principal axes (scikit-learn PCA on the centred snapshots),
so the runs can be drawn on the same plane. :func:`order_dependence` trains one initial
network twice — noise then data, and data then noise — and reports where each ends.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..feedback import feedback_layers


def _w_minus_b(model: nn.Module) -> dict[str, float]:
    return {name: float((layer.weight - layer.feedback).detach().norm()) for name, layer in feedback_layers(model)}


class WeightTrajectory:
    """Snapshots of one layer's ``W`` (flattened, float32, CPU) with phase labels and ``‖W − B‖``.

    ``layer``: the qualified name of a feedback layer (default: the first). As a trainer callback
    it also adds ``w_minus_b/<layer>`` (Frobenius norm) for every feedback layer to the record.
    """

    def __init__(self, layer: str | None = None):
        self.layer = layer
        self.snapshots: list[torch.Tensor] = []
        self.phases: list[str] = []
        self.positions: list[int] = []  # noise samples seen, or data epoch
        self.w_minus_b: list[dict[str, float]] = []

    def _layer(self, model: nn.Module):
        layers = dict(feedback_layers(model))
        if not layers:
            raise ConfigError("weight trajectory needs a model with feedback layers")
        name = self.layer or next(iter(layers))
        if name not in layers:
            raise ConfigError(f"no feedback layer {name!r}; valid: {', '.join(layers)}")
        self.layer = name
        return layers[name]

    @torch.no_grad()
    def _snap(self, model: nn.Module, phase: str, position: int) -> dict[str, float]:
        w = self._layer(model).weight
        self.snapshots.append(w.detach().flatten().float().cpu().clone())
        self.phases.append(phase)
        self.positions.append(int(position))
        dist = _w_minus_b(model)
        self.w_minus_b.append(dist)
        return dist

    def __call__(self, step: int, seen: int, model: nn.Module) -> None:
        self._snap(model, "noise", seen)

    def on_epoch_end(self, epoch: int, model: nn.Module, data, record: dict) -> None:
        dist = self._snap(model, "data", epoch)
        record.update({f"w_minus_b/{n}": v for n, v in dist.items()})


def pca_trajectories(runs: Mapping[str, WeightTrajectory], n_components: int = 2) -> dict:
    """Project every run's snapshots onto the top principal axes of all snapshots together.

    Returns ``{"explained_variance": [fraction per PC], "runs": {label: {"pcs": [[pc1, pc2]…],
    "phases": […], "positions": […], "w_minus_b": [‖W−B‖ of the tracked layer…]}}}``.
    """
    from sklearn.decomposition import PCA

    mats = {k: torch.stack(t.snapshots).numpy().astype(np.float64) for k, t in runs.items() if t.snapshots}
    if not mats:
        raise ConfigError("no snapshots recorded: pass the WeightTrajectory as a callback first")
    everything = np.concatenate(list(mats.values()))
    k = min(n_components, *everything.shape)
    pca = PCA(n_components=k).fit(everything)
    out = {"explained_variance": pca.explained_variance_ratio_.tolist(), "runs": {}}
    for label, traj in runs.items():
        if label not in mats:
            continue
        pcs = pca.transform(mats[label])
        if pcs.shape[1] < 2:
            pcs = np.pad(pcs, ((0, 0), (0, 2 - pcs.shape[1])))
        out["runs"][label] = {"pcs": pcs.tolist(), "phases": list(traj.phases), "positions": list(traj.positions),
                              "w_minus_b": [d[traj.layer] for d in traj.w_minus_b]}
    return out


def order_dependence(data, *, hidden=(100,), noise_samples: int = 100_000, epochs: int = 10, seed: int = 0,
                     lr: float = 1e-4, batch_size: int = 64, noise_every: int | None = None,
                     device: str = "auto") -> dict:
    """Noise → data versus data → noise from the same initial FA network (SPEC §5).

    Both orders use ``noise_samples`` Gaussian noise inputs (fresh Adam, ``lr``) and ``epochs``
    of data (fresh Adam, ``lr``). Returns the PCA of the first layer's trajectories (shared
    axes), and per order: final test accuracy (fraction), alignment angles (degrees), ‖W − B‖ per
    layer, and the distance between the two final first-layer weights.
    """
    from ..init import alignment_angles
    from ..models import mlp
    from ..pretrain import pretrain_noise
    from ..run.trainer import train
    from .robustness import accuracy

    n_in = math.prod(data.x_train.shape[1:])
    gen = torch.Generator().manual_seed(seed)
    base = mlp([n_in, *hidden, data.num_classes], rule="fa", input_shape=data.x_train.shape[1:], generator=gen)
    every = max(1, (noise_every or max(noise_samples // 10, batch_size)) // batch_size)
    runs, finals = {}, {}
    for order in ("noise→data", "data→noise"):
        model = copy.deepcopy(base)
        traj = WeightTrajectory()
        noise_gen = torch.Generator().manual_seed(seed + 1)
        if order == "noise→data":
            traj(0, 0, model)
            pretrain_noise(model, noise_samples, batch_size=batch_size, lr=lr, generator=noise_gen, callback=traj,
                           callback_every=every, progress=False)
            train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                  callbacks=[traj], progress=False, grad_alignment=False)
        else:
            train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                  callbacks=[traj], progress=False, grad_alignment=False)
            model.to("cpu")
            pretrain_noise(model, noise_samples, batch_size=batch_size, lr=lr, generator=noise_gen, callback=traj,
                           callback_every=every, progress=False)
        model.to("cpu")
        runs[order] = traj
        finals[order] = {"test_acc": accuracy(model, data.x_test.cpu(), data.y_test.cpu()),
                         "angles": alignment_angles(model), "w_minus_b": _w_minus_b(model),
                         "w1": next(iter(feedback_layers(model)))[1].weight.detach().clone()}
    distance = float((finals["noise→data"]["w1"] - finals["data→noise"]["w1"]).norm())
    for f in finals.values():
        del f["w1"]
    return {"pca": pca_trajectories(runs), "final": finals, "final_w1_distance": distance,
            "noise_samples": noise_samples, "epochs": epochs, "seed": seed}
