"""Statistics over seeds (SPEC §5), the one place every table and claim takes them from.

**±** is always mean ± *sample* standard deviation (ddof = 1) with the number of seeds ``n``
stated beside it; one value has no spread (std NaN, shown without ±).

**p-values** are exact wherever the seed counts allow, because seed counts are small (3 vs 3:
the normal approximation of :func:`scipy.stats.ranksums` prints 0.05 where the exact two-sided
p is 0.10). The rule, for ``N`` = the number of equally likely arrangements under H0:

- two samples (Wilcoxon rank-sum / Mann–Whitney): ``N = C(n_a + n_b, n_a)`` splits. No ties and
  ``N ≤ EXACT_LIMIT``: :func:`scipy.stats.mannwhitneyu` (``method="exact"``); ties and
  ``N ≤ EXACT_LIMIT``: :func:`scipy.stats.permutation_test` of the rank sum (mid-ranks) over
  *all* splits; ``N > EXACT_LIMIT``: ``mannwhitneyu(method="asymptotic")`` (tie-corrected normal
  approximation, accurate at such sizes).
- one sample against 0 (Wilcoxon signed-rank, e.g. paired differences): ``N = 2^n`` sign flips,
  the same rule with :func:`scipy.stats.wilcoxon` / a sign-flip permutation of the signed ranks.
- trend (Spearman ρ): a permutation test of ρ, exact over all ``n!`` pairings when
  ``n! ≤ EXACT_LIMIT``, else ``MC_RESAMPLES`` seeded random pairings.

Two-sided p = 2 × the smaller one-sided p, capped at 1. Fewer than 2 values in a group gives
no test (NaN, printed "—"). With 3 vs 3 seeds the smallest attainable p is 0.05 one-sided and
0.10 two-sided (:func:`min_p`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EXACT_LIMIT = 100_000  # enumerate every split / sign flip / pairing up to this many
MC_RESAMPLES = 9_999  # seeded random permutations beyond it (trend test only)
BOOTSTRAP_RESAMPLES = 4_000
ALTERNATIVES = ("greater", "less", "two-sided")


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return a[np.isfinite(a)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, sample std ddof=1)`` of the finite values; ``(nan, nan)`` if none, std NaN for one value."""
    a = _finite(values)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else float("nan")


def mean_std_each(groups: Sequence[Sequence[float]], lone_std: float = float("nan")) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mean_std` of every group, as two arrays of length ``len(groups)`` (error bars per ε,
    epoch, severity …; a ``(seeds, k)`` array's columns are ``array.T``). ``lone_std``: the std of a
    group with one value — NaN by the rule above; figures pass 0.0 so it draws no bar."""
    pairs = [mean_std(g) for g in groups]
    means = np.array([m for m, _ in pairs], dtype=float)
    stds = np.array([lone_std if math.isnan(s) and not math.isnan(m) else s for m, s in pairs], dtype=float)
    return means, stds


def pooled_std(groups: Sequence[Sequence[float]]) -> float:
    """Pooled sample std ``sqrt(Σ (n_i − 1) s_i² / Σ (n_i − 1))`` over the groups with ≥ 2 values
    (the seed-to-seed spread when each group is one condition over seeds); NaN if none has 2."""
    num = den = 0.0
    for g in groups:
        a = _finite(g)
        if a.size > 1:
            num += (a.size - 1) * a.var(ddof=1)
            den += a.size - 1
    return math.sqrt(num / den) if den else float("nan")


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        from .errors import ConfigError

        raise ConfigError(f"test alternative {alternative!r} is unknown; use one of {ALTERNATIVES}")


def _two_sided(p_greater: float, p_less: float) -> float:
    return min(1.0, 2.0 * min(p_greater, p_less))


def ranksum(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
    """Exact Wilcoxon rank-sum p of ``a`` vs ``b`` (``"greater"``: a tends to exceed b); NaN when
    either group has fewer than 2 finite values; 1.0 when every value is the same. See the
    module docstring for the exact/permutation/asymptotic rule."""
    from scipy.stats import mannwhitneyu, permutation_test, rankdata

    _check_alternative(alternative)
    x, y = _finite(a), _finite(b)
    if x.size < 2 or y.size < 2:
        return float("nan")
    pooled = np.concatenate([x, y])
    if np.all(pooled == pooled[0]):
        return 1.0
    ties = np.unique(pooled).size < pooled.size
    if math.comb(pooled.size, x.size) > EXACT_LIMIT:
        return float(mannwhitneyu(x, y, alternative=alternative, method="asymptotic").pvalue)
    if not ties:
        return float(mannwhitneyu(x, y, alternative=alternative, method="exact").pvalue)
    ranks = rankdata(pooled)

    def one_sided(alt):
        return permutation_test((ranks[:x.size], ranks[x.size:]), lambda u, v, axis: u.sum(axis=axis),
                                permutation_type="independent", alternative=alt, n_resamples=np.inf,
                                vectorized=True).pvalue

    if alternative != "two-sided":
        return float(min(1.0, one_sided(alternative)))
    return _two_sided(one_sided("greater"), one_sided("less"))


def signed_rank(d: Sequence[float], alternative: str = "two-sided") -> float:
    """Exact Wilcoxon signed-rank p that ``d`` is centred on 0 (``"greater"``: above 0); NaN for
    fewer than 2 values; 1.0 when all are 0. Zeros keep their rank with sign 0 (Pratt)."""
    from scipy.stats import permutation_test, rankdata, wilcoxon

    _check_alternative(alternative)
    x = _finite(d)
    if x.size < 2:
        return float("nan")
    if np.all(x == 0):
        return 1.0
    absx = np.abs(x)
    clean = np.all(x != 0) and np.unique(absx).size == x.size
    if 2 ** x.size > EXACT_LIMIT:
        return float(wilcoxon(x, alternative=alternative, method="asymptotic", zero_method="pratt").pvalue)
    if clean:
        return float(wilcoxon(x, alternative=alternative, method="exact").pvalue)
    signed = np.sign(x) * rankdata(absx)

    def one_sided(alt):
        return permutation_test((signed,), lambda s, axis: s.sum(axis=axis), permutation_type="samples",
                                alternative=alt, n_resamples=np.inf, vectorized=True).pvalue

    if alternative != "two-sided":
        return float(min(1.0, one_sided(alternative)))
    return _two_sided(one_sided("greater"), one_sided("less"))


def paired_signed_rank(a: dict, b: dict, alternative: str = "two-sided") -> float:
    """:func:`signed_rank` of ``a[k] − b[k]`` over the keys both hold (e.g. seeds: one pair per unit);
    NaN with fewer than 2 such keys."""
    return signed_rank([a[k] - b[k] for k in a if k in b], alternative)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman ρ of paired values (NaN when either is constant or fewer than 3 pairs)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)


def spearman_trend(x: Sequence[float], y: Sequence[float], alternative: str = "two-sided") -> tuple[float, float]:
    """``(ρ, p)``: Spearman ρ of ``y`` against ``x`` and its permutation p (``"greater"``: ρ > 0);
    exact over all pairings for n! ≤ EXACT_LIMIT, else MC_RESAMPLES seeded random ones."""
    from scipy.stats import permutation_test, rankdata

    _check_alternative(alternative)
    rho = spearman(x, y)
    if not math.isfinite(rho):
        return rho, float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean()), ry - ry.mean()
    ry = ry / np.linalg.norm(ry)

    def stat(u, axis):  # Pearson of the ranks; only y's order is permuted
        return np.sum(rx * u, axis=axis)

    n_res = np.inf if math.factorial(rx.size) <= EXACT_LIMIT else MC_RESAMPLES
    res = permutation_test((ry,), stat, permutation_type="pairings", alternative=alternative,
                           n_resamples=n_res, vectorized=True, rng=np.random.default_rng(0))
    return rho, float(min(1.0, res.pvalue))


def min_p(kind: str, n: int, m: int = 0, alternative: str = "greater") -> float:
    """Smallest p the exact test can give at these sizes (no ties): ``kind`` = ``"two-sample"``
    (``n`` vs ``m``: 1 / C(n+m, n)), ``"one-sample"`` (``n`` values: 1 / 2^n) or ``"trend"``
    (``n`` pairs: 1 / n!); doubled for two-sided. With 3 vs 3: 0.05 one-sided, 0.10 two-sided."""
    count = {"two-sample": lambda: math.comb(n + m, n), "one-sample": lambda: 2 ** n,
             "trend": lambda: math.factorial(n)}[kind]()
    if kind == "trend" and count > EXACT_LIMIT:
        return 1.0 / (MC_RESAMPLES + 1)
    p = 1.0 / count
    return min(1.0, 2 * p) if alternative == "two-sided" else p


def seeds_needed(kind: str, alpha: float = 0.05, alternative: str = "greater", limit: int = 64) -> int:
    """Smallest number of units (seeds) per group whose exact test can reach ``p ≤ alpha``
    (:func:`min_p`; ``"two-sample"``: n vs n): 5 for a one-sided paired / one-sample test at
    0.05 (1/32), 6 two-sided, 3 vs 3 one-sided rank-sum, 4 vs 4 two-sided. ``limit`` if none up
    to it."""
    for n in range(2, limit + 1):
        if min_p(kind, n, n, alternative) <= alpha + 1e-12:
            return n
    return limit


def _invert(p_of_shift, breaks: np.ndarray, alpha: float) -> tuple[float, float]:
    """``(lo, hi)``: the shifts δ the one-sided tests at ``alpha`` do not reject, from a p-value
    function ``p_of_shift(δ, alternative)`` that only changes at ``breaks`` (sorted): ``lo`` =
    sup{δ : p(δ, "greater") ≤ α}, ``hi`` = inf{δ : p(δ, "less") ≤ α}; ±inf where no shift is
    rejected. The p-value is evaluated between consecutive breaks, where it is constant."""
    b = np.unique(np.asarray(breaks, float))
    span = float(b[-1] - b[0]) if b.size > 1 else max(abs(float(b[0])), 1.0)
    mids = np.concatenate([[b[0] - span - 1.0], (b[:-1] + b[1:]) / 2, [b[-1] + span + 1.0]])
    lo = -math.inf  # p(δ, greater) grows with δ: the last midpoint still rejected bounds it
    for i, m in enumerate(mids[:-1]):
        if p_of_shift(m, "greater") <= alpha:
            lo = float(b[i])
        else:
            break
    hi = math.inf
    for i in range(len(mids) - 1, 0, -1):
        if p_of_shift(mids[i], "less") <= alpha:
            hi = float(b[i - 1])
        else:
            break
    return lo, hi


def shift_interval(d: Sequence[float], alpha: float = 0.05) -> tuple[float, float]:
    """Exact interval of the centre of paired differences ``d`` from the signed-rank test
    (:func:`signed_rank`) inverted: every shift δ that neither one-sided test of ``d − δ`` at
    ``alpha`` rejects (a ``1 − 2α`` interval; its ends are Walsh averages). With 5 values at
    α = 0.05 it is [min d, max d]: the smallest p, 1/32, needs every difference on one side."""
    x = _finite(d)
    if x.size < 2:
        return float("nan"), float("nan")
    walsh = np.array([(x[i] + x[j]) / 2 for i in range(x.size) for j in range(i, x.size)])
    return _invert(lambda s, alt: signed_rank(x - s, alt), walsh, alpha)


def shift_interval_two(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> tuple[float, float]:
    """Exact interval of the shift between two independent groups (``a − b``) from the rank-sum
    test (:func:`ranksum`) inverted; its ends are pairwise differences a_i − b_j."""
    x, y = _finite(a), _finite(b)
    if x.size < 2 or y.size < 2:
        return float("nan"), float("nan")
    return _invert(lambda s, alt: ranksum(x - s, y, alt), (x[:, None] - y[None, :]).ravel(), alpha)


def bootstrap_ci(statistic, samples: Sequence[Sequence[float]], *, paired: bool = False, level: float = 0.95,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)`` (seeded numpy, deterministic).

    Independent samples are resampled separately; ``paired=True`` resamples the same indices
    for all (e.g. the x and y of a correlation). NaN if a sample has fewer than 2 values;
    resamples where the statistic is undefined (NaN) are dropped."""
    arrs = [np.asarray(s, float) for s in samples]
    if any(a.size < 2 for a in arrs):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for i in range(resamples):
        if paired:
            idx = rng.integers(0, arrs[0].size, arrs[0].size)
            stats[i] = statistic(*[a[idx] for a in arrs])
        else:
            stats[i] = statistic(*[a[rng.integers(0, a.size, a.size)] for a in arrs])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def fmt_pm(mean: float, std: float, scale: float = 1.0, digits: int = 2, n: int | None = None) -> str:
    """``"97.82 ± 0.03"`` (``scale=100`` turns fractions into percent), with ``" (n=3)"`` when ``n``
    is given; a single value (std NaN) prints without ±; ``"—"`` for NaN."""
    if mean is None or not math.isfinite(mean):
        return "—"
    text = f"{mean * scale:.{digits}f}"
    if std is not None and math.isfinite(std):
        text += f" ± {std * scale:.{digits}f}"
    return text + (f" (n={n})" if n is not None else "")


def fmt_values(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """Mean ± sample std of ``values`` with their count: ``"97.82 ± 0.03 (n=3)"``."""
    a = _finite(values)
    return fmt_pm(*mean_std(a), scale=scale, digits=digits, n=int(a.size)) if a.size else "—"


def fmt_p(p: float) -> str:
    """p-value for a table: ``"0.049"``, ``"<0.001"``, ``"—"`` for NaN (no test)."""
    if p is None or not math.isfinite(p):
        return "—"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rich_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None):
    """A :class:`rich.table.Table` with the same content (numbers right-aligned)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    return table


# ------------------------------------------------------------------------------ ROC (OOD detection)
def _floats(a) -> np.ndarray:
    """``a`` (array, list or CPU/GPU tensor) as a flat float64 array."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=float).ravel()


def _labels_scores(in_scores, out_scores) -> tuple[np.ndarray, np.ndarray]:
    a, b = _floats(in_scores), _floats(out_scores)
    if len(a) == 0 or len(b) == 0:
        from .errors import PrealignError

        raise PrealignError("OOD detection needs scores of at least one in-distribution and one OOD input")
    return np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b]


def auroc(in_scores, out_scores) -> float:
    """Area under the ROC curve separating in-distribution (positive) from OOD scores (sklearn)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(*_labels_scores(in_scores, out_scores)))


def roc(in_scores, out_scores) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the ROC curve (sklearn ``roc_curve``, every threshold kept)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(*_labels_scores(in_scores, out_scores), drop_intermediate=False)
    return fpr, tpr


def fpr_at_tpr(in_scores, out_scores, tpr: float = 0.95) -> float:
    """False-positive rate at the first ROC threshold whose true-positive rate is ≥ ``tpr``."""
    fpr, tprs = roc(in_scores, out_scores)
    return float(fpr[np.argmax(tprs >= tpr - 1e-12)])


__all__ = ["ALTERNATIVES", "paired_signed_rank", "EXACT_LIMIT", "auroc", "bootstrap_ci", "fpr_at_tpr", "roc", "fmt_p", "fmt_pm", "fmt_values", "markdown_table",
           "mean_std", "min_p", "pooled_std", "ranksum", "rich_table", "seeds_needed", "shift_interval", "shift_interval_two",
           "signed_rank", "spearman", "spearman_trend"]
