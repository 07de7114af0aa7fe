"""The papers' figures and tables as declarative experiments (``prealign reproduce``).

Each ``*.toml`` file beside this module is one figure or table of one paper. Its sections:

``[paper]``      ``paper`` (``"ifa"`` = *One-Time Soft Alignment…*, ``"rnp"`` = *Pretraining with
                 Random Noise…*, supplement, ``"rnpu"`` = its follow-up on uncertainty
                 calibration), ``ref`` (``"Fig. 3"``, ``"Table S5"``), ``title``,
                 ``caption`` (what the panel shows), ``data`` (the paper's data sets).
``[base]``       :class:`~prealign.run.config.RunConfig` fields shared by every run. The noise keys
                 (``noise_samples``, ``noise_lr`` …) here set the budget of the runs that pretrain
                 on noise (``rnp``, ``bp+noise`` …) only: ``bp``/``fa`` stay noise-free. A noise key
                 in a ``[grid]`` entry applies to its run as given (RunConfig's rules).
``[grid]``       axes of the sweep, a cartesian product; ``[zip]`` axes varied together. The one grid
                 format of :mod:`prealign.run.grid` (``prealign sweep`` reads it too): RunConfig fields,
                 ``depth``, ``width``, ``method = "ifa@30"``, inline tables ``{label = "He", alpha_w = 2}``.
``[budget.smoke|quick|paper]``
                 ``base`` / ``grid`` / ``zip`` tables overriding the above (a grid axis given here replaces
                 the whole axis), ``analysis`` (per-analysis parameter overrides), ``note``.
                 ``smoke``: seconds, tiny data (the test suite runs every experiment at it);
                 ``quick``: minutes on 2 CPU cores, offline data standing in where needed;
                 ``paper``: the paper's settings and data.
``[[analysis]]`` ``kind`` (see :data:`prealign.experiments.analyses.ANALYSES`) + parameters: what to
                 measure on the trained runs (or, with ``track``, during training).
``[[output]]``   ``kind`` = ``curves`` | ``alignment`` | ``line`` | ``heatmap`` | ``series`` | ``table``
                 | ``density``, with ``panel`` (the paper's panel letters) — figures and tables.
``[[claim]]``    ``id``, ``text`` and a declared test (``metric``, ``a``, ``b`` | ``value`` | ``x``,
                 ``test``, ``alpha``, ``min_effect``, ``margin``, ``trained``, ``learns``, ``skip``…, see
                 :mod:`prealign.experiments.claims`): one number per seed, decided only where the
                 budget's design can reach α (:mod:`prealign.experiments.design`), never on a
                 method left at chance (:mod:`prealign.experiments.health`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import ConfigError, PrealignError, UnknownNameError
from ..run.grid import desugar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUDGETS = ("smoke", "quick", "paper")
PAPERS = {
    "ifa": "One-Time Soft Alignment Enables Resilient Learning without Weight Transport",
    "rnp": "Pretraining with Random Noise for Fast and Robust Learning without Weight Transport (supplement)",
    "rnpu": "Pretraining with Random Noise for Uncertainty Calibration (Cheon & Paik, arXiv 2412.17411)",
}
SECTIONS = {"paper", "base", "grid", "zip", "budget", "analysis", "output", "claim", "reference"}


@dataclass
class Experiment:
    """One figure/table of a paper, loaded from its TOML file."""

    name: str
    paper: dict
    base: dict
    grid: dict
    budgets: dict
    analyses: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    claims: list = field(default_factory=list)
    path: str = ""
    reference: dict = field(default_factory=dict)  # the paper's own numbers: {table: {"row/…/col": "97.82 ± 0.03"}}
    zipped: dict = field(default_factory=dict)  # [zip] axes (see prealign.run.grid)

    @property
    def ref(self) -> str:
        """``"IFA Fig. 3"`` style reference."""
        return f"{self.paper['paper'].upper()} {self.paper['ref']}"

    def settings(self, budget: str) -> tuple[dict, dict]:
        """(base, grid) of ``budget``: the file's, overridden by ``[budget.<budget>]``."""
        if budget not in BUDGETS:
            raise UnknownNameError("budget", budget, BUDGETS)
        over = self.budgets.get(budget, {})
        return {**self.base, **over.get("base", {})}, {**self.grid, **over.get("grid", {})}

    def analysis_params(self, budget: str) -> list[dict]:
        """The ``[[analysis]]`` entries with the budget's ``analysis.<kind>`` overrides applied."""
        over = self.budgets.get(budget, {}).get("analysis", {})
        return [{**a, **over.get(a["kind"], {})} for a in self.analyses]

    def grid_of(self, budget: str):
        """The budget's runs as a :class:`~prealign.run.grid.Grid` (the one grid format of every sweep);
        the papers' protocol (``val_fraction = 0``: select on test) unless the file sets it."""
        from ..run.grid import Grid

        base, grid = self.settings(budget)
        zipped = {**self.zipped, **self.budgets.get(budget, {}).get("zip", {})}
        return Grid({"val_fraction": 0.0, **base}, grid, zipped, name=f"experiment {self.name} at budget {budget}")

    def points(self, budget: str, only: dict | None = None) -> list[dict]:
        """Every grid point of ``budget`` as ``{"axes": {axis: label}, "config": RunConfig dict}``
        (:meth:`prealign.run.grid.Grid.points`).

        ``only``: ``{axis: [labels]}`` keeps the points whose axis label is one of those
        (``--only dataset=fashion-mnist``); an unknown axis or label is a ConfigError."""
        return self.grid_of(budget).restrict(only).points()

    def datasets(self, budget: str) -> list[str]:
        return sorted({p["config"].get("dataset", "?") for p in self.points(budget)})

    def models(self, budget: str = "paper") -> list[str]:
        """Architectures of the budget's runs: ``mlp 512-512``, or ``mlp 100 wide, 2–5 layers`` for a depth sweep."""
        out, mlps = [], set()
        for p in self.points(budget):
            c = p["config"]
            if c.get("model", "mlp") == "mlp":
                mlps.add(tuple(c.get("hidden", [100])))
            elif c["model"] not in out:
                out.append(c["model"])
        if len(mlps) <= 2:
            out += ["mlp " + "-".join(map(str, h)) for h in sorted(mlps)]
        elif mlps:
            widths = sorted({w for h in mlps for w in h})
            depths = sorted(len(h) + 1 for h in mlps)
            out.append(f"mlp {'/'.join(map(str, widths))} wide, {depths[0]}–{depths[-1]} layers")
        return out


def method_label(config: dict) -> str:
    """``ifa@30`` for IFA at 30°, ``bp+noise`` for noise warm-up, else the method name (how tables
    and legends name a run), from a RunConfig dict."""
    from ..methods import get_method

    m = config.get("method", "?")
    try:
        method = get_method(m)
    except PrealignError:
        return m
    angle = config.get("angle") if method.angle is not None else None
    return method.with_options(angle=angle, noise_samples=config.get("noise_samples")).label


# ----------------------------------------------------------------------------------- registry
def _directory() -> Path:
    return Path(str(resources.files(__name__)))


def names() -> list[str]:
    """Names of all experiments shipped with prealign, sorted (``ifa_fig1`` … ``rnp_table_s5``)."""
    return sorted(p.stem for p in _directory().glob("*.toml"))


def parse(text: str, name: str = "<string>", path: str = "") -> Experiment:
    """An :class:`Experiment` from TOML text; unknown sections or a bad budget -> ConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"experiment {name}: invalid TOML ({exc}); fix the file {path or name}") from exc
    unknown = set(data) - SECTIONS
    if unknown:
        raise ConfigError(f"experiment {name}: unknown section(s) {sorted(unknown)}; valid: {sorted(SECTIONS)}")
    paper = data.get("paper", {})
    for key in ("paper", "ref", "title"):
        if key not in paper:
            raise ConfigError(f"experiment {name}: [paper] needs '{key}'")
    if paper["paper"] not in PAPERS:
        raise UnknownNameError("paper", paper["paper"], PAPERS)
    budgets = data.get("budget", {})
    for b in budgets:
        if b not in BUDGETS:
            raise UnknownNameError("budget", b, BUDGETS)
    for b in BUDGETS:
        if b not in budgets:
            raise ConfigError(f"experiment {name}: missing [budget.{b}] (every experiment defines smoke, quick and paper)")
    grid = data.get("grid", {})
    claims = data.get("claim", [])
    for c in claims:
        for key in ("id", "text"):
            if key not in c:
                raise ConfigError(f"experiment {name}: a [[claim]] lacks '{key}'")
        from .claims import validate as validate_claim

        validate_claim(c, f"experiment {name}: claim")
    exp = Experiment(name=name, paper=paper, base=data.get("base", {}), grid=grid, budgets=budgets,
                     analyses=data.get("analysis", []), outputs=data.get("output", []), claims=claims, path=path,
                     reference=data.get("reference", {}), zipped=data.get("zip", {}))
    for b in BUDGETS:
        exp.grid_of(b)  # keys, axis shapes and zip lengths checked when the file is read
    return exp


def load(name: str) -> Experiment:
    """The shipped experiment ``name`` (see :func:`names`), or a path to a TOML file."""
    p = Path(name)
    if p.suffix == ".toml" and p.exists():
        return parse(p.read_text(), p.stem, str(p))
    path = _directory() / f"{name}.toml"
    if not path.exists():
        raise UnknownNameError("experiment", name, names())
    return parse(path.read_text(), name, str(path))


def load_all() -> list[Experiment]:
    return [load(n) for n in names()]


def select(spec: str) -> list[Experiment]:
    """``all``, one name, a comma-separated list, or a prefix glob such as ``ifa_*``."""
    if spec == "all":
        return load_all()
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part.endswith("*"):
            matched = [n for n in names() if n.startswith(part[:-1])]
            if not matched:
                raise PrealignError(f"no experiment matches {part!r}; see `prealign reproduce --list`")
            out.extend(load(n) for n in matched)
        else:
            out.append(load(part))
    return out


__all__ = ["BUDGETS", "PAPERS", "Experiment", "desugar", "load", "load_all", "method_label", "names", "parse", "select"]
