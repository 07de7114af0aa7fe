"""``prealign analyze ...``: measurements on stored runs.

The geometry commands (``hessian``, ``landscape``) and the robustness/generalization commands
(``robustness``, ``corruption``, ``ood``, ``dimensionality``, ``meta``) live in their own
modules; each exposes ``register_analyze(subparsers)``.
"""
from __future__ import annotations

import importlib
from pathlib import Path

PARTS = ("prealign.cli.analyze_geometry", "prealign.cli.analyze_robustness", "prealign.cli.analyze_uncertainty")


def register(sub) -> None:
    parser = sub.add_parser("analyze", help="measure stored runs: Hessian, landscape, robustness, OOD, ...")
    analyze_sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    for module in PARTS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        mod.register_analyze(analyze_sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def save_folder(save: str | None, root: Path, command: str) -> Path:
    """``--save`` (default ``<root>/analysis/<command>``), created; one clear error where it cannot be."""
    from ..errors import PrealignError

    path = Path(save) if save else Path(root) / "analysis" / command
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrealignError(f"cannot create the output folder {str(path)!r} ({err.strerror or err}); "
                            "choose another one with --save") from None
    return path
