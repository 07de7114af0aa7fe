"""Measurements on trained models.

Geometry of the loss (IFA paper B.6–B.8): :mod:`.hessian` (the Hessian as an operator of
Hessian-vector products, its summary on a model, tracking callback), :mod:`.spectrum` (top-k
eigenpairs, Hutchinson trace, spectral density of any symmetric operator) and :mod:`.landscape`
(trajectory recorder, trajectory PCA, loss surfaces, perturbed surface). Their public names are
importable from here; they load lazily, so importing a light sibling module (e.g.
``prealign.analysis.calibration``) does not pull in scipy's sparse solvers.
"""
from __future__ import annotations

_EXPORTS = {
    "hessian": ("HessianOperator", "HessianTracker", "hessian_operator", "hessian_summary", "trainable_parameters"),
    "spectrum": ("hutchinson_trace", "lanczos", "lanczos_quadrature", "power_iteration", "spectral_density",
                 "top_eigen", "lanczos_top_eigen", "LanczosTop", "deflated_trace"),
    "landscape": ("TrajectoryRecorder", "evaluate_loss", "flat_parameters", "loss_surface", "path_grid",
                  "perturbed_surface", "set_flat_parameters", "trajectory_pca", "trajectory_surface"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where == "hessian":
        from . import hessian as module
    elif where == "spectrum":
        from . import spectrum as module
    elif where == "landscape":
        from . import landscape as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
