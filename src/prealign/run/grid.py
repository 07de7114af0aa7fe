"""One grid format for every sweep: a base config plus axes of values, crossed and zipped.

``prealign sweep GRID.toml``, ``prealign compare`` (methods × seeds) and the ``reproduce``
experiments all expand their runs here. A grid file::

    [base]                       # RunConfig fields shared by every run
    dataset = "digits"
    epochs = 5
    [grid]                       # axes crossed with each other (Cartesian product, in file order)
    method = ["bp", "fa", "ifa"]
    angle = [0, 45, 90]
    seed = [0, 1]
    [zip]                        # axes of equal length varied together (one axis, crossed with [grid])
    lr = [1e-3, 3e-4]
    batch_size = [32, 64]

Keys are :class:`~prealign.run.config.RunConfig` fields or sugar: ``depth`` (number of weight
layers: ``hidden = [width] * (depth - 1)``), ``width``, ``method = "ifa@30"`` (method and angle at
once), or an inline table ``{label = "He", alpha_w = 2, alpha_b = 2}`` as one axis value that sets
several fields together (``label`` names it in tables; default ``alpha_w=2,alpha_b=2``).

Rules (each violation is a :class:`~prealign.errors.ConfigError` of one line):

- an unknown section or key, an axis that is not a non-empty list, a value listed twice on one
  axis, ``[zip]`` axes of different lengths, or one key set by two axes is an error;
- **noise keys** (``noise_samples``, ``noise_lr``, ``noise_batch_size``, ``noise_distribution``,
  ``noise_std``): every method can be warmed up on noise (``bp+noise``). In ``[base]`` they set the
  budget of the points that pretrain on noise only (``rnp``, ``X+noise``, or a point whose axis
  gives ``noise_samples > 0``); ``bp``/``fa`` points stay noise-free. Given on an axis they apply to
  that point as given (``noise_samples = [0, 100000]`` × ``method = [bp, fa]`` is a warm-up study);
- **method-specific keys** (``angle``: methods with an alignment angle, i.e. ``ifa``;
  ``kp_decay``: ``kp``; ``wm_*``: ``wm``) apply only where the point's method uses them.
  At a point whose method does not, the value (from ``[base]`` or an axis) is *dropped*, and the points that then coincide are
  one run (``method = [bp, fa, ifa]`` × ``angle = [0, 45, 90]`` × 2 seeds = 2 + 2 + 6 = 10 runs, not 18).
  :attr:`Grid.collapsed` says how many combinations were merged and ``prealign sweep --dry-run``
  prints it. An axis of such a key that applies to *no* point of the grid is an error (an angle
  axis without ifa), never silently ignored; in ``[base]`` such a key is a default for the methods
  that use it (``noise_samples`` with no rnp in the grid is fine);
- every point must be a valid RunConfig (the error names the point).

Points come out in a fixed order: the ``[grid]`` axes in file order, first axis slowest, then the
``[zip]`` index fastest.
"""
from __future__ import annotations

import collections
import dataclasses
import difflib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..errors import ConfigError, PrealignError

SECTIONS = ("base", "grid", "zip")
SUGAR = ("depth", "width")  # keys that are not RunConfig fields
# Bounds (issue 24), on the grid's size computed from the axis lengths before anything is expanded:
LARGE_SWEEP = 10_000  # a sweep (or compare) of more runs asks for --yes; a dry run of more gives only the count
MAX_POINTS = 1_000_000  # more combinations than one grid may expand (memory, time): split the grid


def _method(name: str):
    from ..methods import get_method

    return get_method(str(name))


def _uses_angle(m) -> bool:
    return m.angle is not None


def _uses_kp_decay(m) -> bool:
    from ..feedback import get_rule

    return get_rule(m.rule).learns_feedback


def _uses_mirror(m) -> bool:
    from ..feedback import get_rule

    return get_rule(m.rule).mirrors


# method-specific keys -> does method object m use it
METHOD_KEYS = {"angle": _uses_angle, "kp_decay": _uses_kp_decay,
               **{f"wm_{k}": _uses_mirror for k in ("lr", "noise_std", "decay", "steps", "batch", "noise", "every")}}


def _base_noise(fields_: dict, from_axis: dict) -> dict:
    """``fields_`` without the ``[base]`` noise keys when the point does not pretrain on noise: its
    method has no noise (``bp``, ``fa``, ``ifa@30`` …; ``rnp`` and ``X+noise`` do) or its axis sets
    ``noise_samples = 0``. An axis-given ``noise_samples > 0`` keeps them (noise warm-up)."""
    from ..methods import get_method
    from .config import NOISE_SETTINGS

    if from_axis.get("noise_samples", "[base]") != "[base]":  # the point says itself whether it pretrains on noise
        if fields_["noise_samples"]:
            return fields_
    elif get_method(fields_.get("method", "fa")).noise_samples:
        return fields_
    return {k: v for k, v in fields_.items()
            if k not in ("noise_samples", *NOISE_SETTINGS) or from_axis.get(k, "[base]") != "[base]"}


def valid_keys() -> list[str]:
    from .config import RunConfig

    return [f.name for f in dataclasses.fields(RunConfig)] + list(SUGAR)


def _check_key(key: str, where: str) -> None:
    valid = valid_keys()
    if key not in valid:
        near = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else f"; valid keys: {', '.join(valid)}"
        raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _label(value) -> Any:
    """How an axis value is named in tables: an inline table's ``label`` (or ``k=v,...``), else the value."""
    if isinstance(value, dict):
        return value.get("label", ",".join(f"{k}={v}" for k, v in value.items() if k != "label"))
    return value


def _fields(value, axis: str) -> dict:
    """The RunConfig fields an axis value sets."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "label"}
    return {axis: value}


def desugar(fields_: dict) -> dict:
    """Turn ``depth``/``width``/``method="ifa@30"`` into RunConfig fields."""
    d = dict(fields_)
    width = d.pop("width", None)
    depth = d.pop("depth", None)
    if depth is not None:
        w = width if width is not None else (d.get("hidden") or [100])[0]
        d["hidden"] = [int(w)] * (int(depth) - 1)
    elif width is not None:
        d["hidden"] = [int(width)] * max(len(d.get("hidden") or [0]), 1)
    method = d.get("method")
    if isinstance(method, str) and "@" in method:
        from ..methods import WARMUP, parse_method_name

        name, angle, warm = parse_method_name(method)
        if d.get("angle") is not None and float(d["angle"]) != float(angle):
            raise ConfigError(f"method {method!r} and angle={d['angle']} disagree; give the angle once")
        d["method"], d["angle"] = name + (WARMUP if warm else ""), angle
    return d


@dataclass
class Grid:
    """A base config and axes: ``axes`` crossed, ``zipped`` varied together (see the module docstring).

    ``name`` names the grid in error messages (a file name, ``compare``, an experiment)."""

    base: dict = field(default_factory=dict)
    axes: dict = field(default_factory=dict)
    zipped: dict = field(default_factory=dict)
    name: str = "grid"
    collapsed: int = field(default=0, init=False)  # combinations merged by the method-specific-key rule in the last points()

    def __post_init__(self):
        self.validate()

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, name: str = "grid") -> Grid:
        unknown = [s for s in data if s not in SECTIONS]
        if unknown:
            raise ConfigError(f"{name}: unknown section(s) {unknown}; a grid has [base], [grid] and [zip] (see docs/sweeps.md)")
        return cls(base=dict(data.get("base", {})), axes=dict(data.get("grid", {})), zipped=dict(data.get("zip", {})),
                   name=name)

    @classmethod
    def from_toml(cls, path: str | Path) -> Grid:
        """Read a grid file (see docs/sweeps.md); a missing or invalid file is a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise PrealignError(f"grid file {str(path)!r} not found; give the path of a TOML file (see docs/sweeps.md)")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read grid file {str(path)!r} ({err}); give a readable UTF-8 TOML file") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"grid file {str(path)!r} is not valid TOML: {err}") from None
        if not any(data.get(section) for section in SECTIONS) and not (set(data) - set(SECTIONS)):
            raise ConfigError(f"grid file {str(path)!r} sets nothing (no [base], [grid] or [zip] keys), so it would "
                              "train the default config; write the runs you mean (see docs/sweeps.md)")
        return cls.from_dict(data, path.name)

    # -- checking --------------------------------------------------------------------------
    def validate(self) -> Grid:
        """Keys, list shapes, zip lengths, one axis per key (see the module docstring)."""
        for key in self.base:
            _check_key(key, f"{self.name} [base]")
        setters: dict[str, str] = {}
        for section, axes in (("grid", self.axes), ("zip", self.zipped)):
            for axis, values in axes.items():
                where = f"{self.name} [{section}] {axis}"
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"{where}: an axis must be a non-empty list of values, e.g. {axis} = [1, 2]")
                labels = [str(_label(v)) for v in values]
                dup = next((lab for lab, n in collections.Counter(labels).items() if n > 1), None)
                if dup is not None:
                    raise ConfigError(f"{where}: value {dup} is listed twice; list each value once")
                keys = {k for v in values for k in _fields(v, axis)}
                if not any(isinstance(v, dict) for v in values):
                    _check_key(axis, where)
                for key in sorted(keys):
                    _check_key(key, where)
                    if key in setters and setters[key] != (section, axis):
                        raise ConfigError(f"{where}: key {key!r} is also set by axis [{setters[key][0]}] {setters[key][1]}; "
                                          "vary a key on one axis only")
                    setters[key] = (section, axis)
        lengths = {axis: len(v) for axis, v in self.zipped.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{self.name} [zip]: zipped axes must have the same length, got "
                              + ", ".join(f"{a}={n}" for a, n in lengths.items()))
        return self

    def size(self) -> int:
        """The number of combinations, from the axis lengths alone (nothing is expanded): the product of the
        ``[grid]`` axes' lengths times the ``[zip]`` length. :meth:`points` gives at most this many runs
        (fewer where a method-specific value does not apply and points merge)."""
        n = math.prod(len(v) for v in self.axes.values())
        return n * (len(next(iter(self.zipped.values()))) if self.zipped else 1)

    def check_size(self, yes: bool = False, limit: int = LARGE_SWEEP) -> int:
        """:meth:`size`, refused in one line above :data:`MAX_POINTS` (always) or above ``limit`` unless
        ``yes`` (the command line's ``--yes``)."""
        n = self.size()
        if n > MAX_POINTS:
            raise ConfigError(f"{self.name} has {n:,} combinations, more than the {MAX_POINTS:,} one grid may expand; "
                              "split it into several grid files or shorten its axes")
        if n > limit and not yes:
            raise ConfigError(f"{self.name} has {n:,} runs, more than the {limit:,} a sweep starts without asking; "
                              "add --yes to run them all, or shorten its axes (--dry-run shows the count)")
        return n

    def restrict(self, only: dict | None) -> Grid:
        """A copy keeping, on each axis of ``only`` (``{axis: [labels]}``), the values whose label is listed."""
        if not only:
            return self
        axes, zipped = dict(self.axes), dict(self.zipped)
        for axis, wanted in only.items():
            section = axes if axis in axes else zipped if axis in zipped else None
            if section is None:
                raise ConfigError(f"{self.name} has no grid axis {axis!r}; axes: {', '.join([*self.axes, *self.zipped])}")
            labels = [str(_label(v)) for v in section[axis]]
            keep = [i for i, lab in enumerate(labels) if lab in {str(w) for w in wanted}]
            if not keep:
                raise ConfigError(f"axis {axis!r} of {self.name} has no value {wanted}; values: {labels}")
            if section is axes:
                axes[axis] = [axes[axis][i] for i in keep]
            else:  # a zipped axis keeps its partners' values at the same positions
                zipped = {a: [v[i] for i in keep] for a, v in zipped.items()}
        return Grid(self.base, axes, zipped, self.name)

    # -- expanding -------------------------------------------------------------------------
    def points(self) -> list[dict]:
        """Every run of the grid as ``{"axes": {axis: label}, "config": RunConfig fields}``.

        ``axes`` holds the label of each ``[grid]``/``[zip]`` axis, ``None`` where a method-specific
        value was dropped. Each config is checked as a RunConfig here (a bad one names its point)."""
        from .config import RunConfig

        if self.size() > MAX_POINTS:
            self.check_size(yes=True)  # raises: too many to expand
        names = list(self.axes)
        zipped = [dict(zip(self.zipped, values)) for values in zip(*self.zipped.values())] or [{}]
        out, seen, applied, self.collapsed = [], {}, set(), 0
        for combo in itertools.product(*(self.axes[a] for a in names)):
            for zrow in zipped:
                labels, fields_, from_axis = {}, dict(self.base), {k: "[base]" for k in self.base}
                for axis, value in [*zip(names, combo), *zrow.items()]:
                    labels[axis] = _label(value)
                    for key, v in _fields(value, axis).items():
                        fields_[key], from_axis[key] = v, axis
                if "@" in str(fields_.get("method", "")) and "method" in from_axis:
                    from_axis["angle"] = from_axis["method"]  # "ifa@30": the method axis sets the angle too
                try:
                    fields_ = desugar(_base_noise(fields_, from_axis))
                except ConfigError as err:
                    raise ConfigError(f"{self.name}, point {_where(labels)}: {err}") from None
                method = _method(fields_.get("method", RunConfig.method))
                for key, uses in METHOD_KEYS.items():
                    if key in fields_ and not uses(method):
                        del fields_[key]
                        if from_axis.get(key) in labels:
                            labels[from_axis[key]] = None
                    elif key in from_axis:
                        applied.add((from_axis[key], key))
                ident = repr(sorted(fields_.items()))
                if ident in seen:
                    self.collapsed += 1
                    continue
                try:
                    RunConfig.from_dict(fields_)
                except ConfigError as err:
                    raise ConfigError(f"{self.name}, point {_where(labels)}: {err}") from None
                seen[ident] = True
                out.append({"axes": labels, "config": fields_})
        self._check_applied(applied)
        return out

    def _check_applied(self, applied: set) -> None:
        """A method-specific key on an axis that no point's method uses is an error ([base] values are
        defaults for the methods that use them: a budget may drop rnp and keep its noise budget)."""
        given = set()
        for section in (self.axes, self.zipped):
            given |= {(axis, k) for axis, values in section.items() for v in values for k in _fields(v, axis)}
        for where, key in sorted(given - applied):
            if key in METHOD_KEYS:
                users = [n for n, m in _methods().items() if METHOD_KEYS[key](m)]
                raise ConfigError(f"{self.name}: axis {where!r} sets {key!r}, which applies to none of the grid's methods; "
                                  f"it applies to {', '.join(users)} only: add one of them or remove it")

    def configs(self) -> list:
        """The points as :class:`~prealign.run.config.RunConfig` objects, in order."""
        from .config import RunConfig

        return [RunConfig.from_dict(p["config"]) for p in self.points()]

    def varying(self) -> list[str]:
        """Axis names, ``[grid]`` then ``[zip]``."""
        return [*self.axes, *self.zipped]


def _where(labels: dict) -> str:
    """A grid point in an error message: ``method=fa, lr=0.001`` (``base`` without axes)."""
    return ", ".join(f"{a}={v}" for a, v in labels.items()) or "base"


def _methods() -> dict:
    from ..methods import METHODS

    return METHODS


def group_label(point: dict) -> str:
    """How a table row names the seeds of one grid point: the method label (``ifa@45``), then every
    other axis but ``seed``/``method``/``angle`` as ``axis=label`` (``ifa@45 lr=0.001``)."""
    from .config import RunConfig

    cfg = RunConfig.from_dict(point["config"])
    extra = [f"{a}={_fmt(v)}" for a, v in point["axes"].items() if a not in ("seed", "method", "angle") and v is not None]
    return " ".join([cfg.label, *extra])


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) and math.isfinite(v) else str(v)





def sweep_grid(configs: list, store, **kwargs) -> list:
    """Train the RunConfigs of a grid (:meth:`Grid.configs`) through :func:`prealign.run.sweep.run_sweep`
    (resumable: finished runs are skipped, killed ones resume from their last epoch) and return its
    outcomes; ``kwargs`` go to ``run_sweep`` as they are. A run that failed is a PrealignError naming
    the first failure, after the others finished and were stored."""
    from .sweep import run_sweep

    outcomes = run_sweep(configs, store, **kwargs)
    failed = [o for o in outcomes if not o.done]
    if failed:
        raise PrealignError(f"{len(failed)} of {len(outcomes)} runs failed (first: {failed[0].error}); the finished "
                            f"ones are stored in {store.path}: fix the cause and run the same command again to resume")
    return outcomes


def stored_status(points: list[dict], store) -> list[tuple[str | None, str]]:
    """Per point: ``(run key, status)``, the status in ``store`` (``finished``, ``diverged``, ``running``,
    ``failed``), ``new``, ``new*`` (new, but a run of the same config is stored under an older key or
    for another network; it is not reused), or ``unchecked`` with key None for a model whose module
    is not imported yet: a dry run lists the points of someone else's grid without running their code
    (:func:`prealign.models.registry.is_loaded`)."""
    from ..models.registry import is_loaded
    from .config import RunConfig, not_reused

    out = []
    for p in points:
        cfg = RunConfig.from_dict(p["config"])
        if not is_loaded(cfg.model):
            out.append((None, "unchecked"))
            continue
        key = cfg.key()
        row = store.find(key)
        out.append((key, row["status"] if row else ("new*" if not_reused(cfg, store) else "new")))
    return out

__all__ = ["LARGE_SWEEP", "MAX_POINTS", "METHOD_KEYS", "SECTIONS", "SUGAR", "Grid", "desugar", "group_label", "stored_status", "sweep_grid", "valid_keys"]
