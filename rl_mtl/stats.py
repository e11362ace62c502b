"""Statistics of the 10-seed protocol (architecture §8): across seeds (mean ± SEM, bootstrap CI, IQM, learning curves)
and over runs × tasks (Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021, the
rliable library: IQM, mean, median, optimality gap, probability of improvement, performance profiles, each with a
stratified bootstrap CI).

Small pure functions on arrays, so each is tested against hand-computed numbers (and against rliable where it is
installed). Across seeds: SEM = sample standard deviation (ddof = 1) / √n; the confidence interval is the
**percentile** bootstrap of the mean (``scipy.stats.bootstrap``; BCa is unstable at n = 10 and undefined for tied
success rates); IQM = the 25 %-trimmed mean (``scipy.stats.trim_mean(x, 0.25)``, which cuts ``floor(0.25 n)``
scores at each end, so nothing below 4 seeds: there the IQM of seed means is NaN rather than a relabelled mean).
With fewer than two seeds SEM and CI are NaN; with identical scores the CI collapses to that score.

Over runs × tasks (``scores``: ``(N runs, M tasks)``, leading axes are bootstrap resamples): the *stratified*
bootstrap resamples runs with replacement within each task, independently per task (rliable's
``StratifiedBootstrap``, runs only), and takes the percentile interval of the resampled aggregate
(``np.percentile``, linear interpolation, as rliable's ``arch`` backend does). The generator is
``numpy.random.default_rng(seed)``, so the same scores always give the same interval.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np
from scipy import stats as sps

from rl_mtl.cli import one_line

CONFIDENCE = 0.95
RESAMPLES = 10_000
CI_METHOD = "percentile"
#: fewest seeds whose 25 %-trimmed mean trims anything (floor(0.25 n) >= 1)
IQM_MIN_SEEDS = 4
#: optimality-gap threshold γ: success rates are fractions, so a task solved in every episode has gap 0
GAMMA = 1.0
#: thresholds τ of the performance profiles (success rate as a fraction)
PROFILE_TAUS = tuple(i / 100 for i in range(101))
#: bound on the elements of one vectorised batch of resamples (memory, not results: batches share one stream)
_BATCH_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Summary:
    """Aggregate of per-seed scores: count, mean, SEM (ddof=1), bootstrap CI of the mean, IQM of the scores (NaN
    below :data:`IQM_MIN_SEEDS`, where the trimmed mean trims nothing)."""

    n: int
    mean: float
    sem: float
    ci_low: float
    ci_high: float
    iqm: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict for JSON."""
        return asdict(self)


def _scores(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-D float array; NaNs are an error (a missing run must be excluded, not averaged)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(x).any():
        raise ValueError("scores contain NaN; exclude unfinished runs before aggregating")
    return x


def mean_sem(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean, ``std(ddof=1) / sqrt(n)`` (NaN for n < 2; NaN mean for n = 0)."""
    x = _scores(values)
    if x.size == 0:
        return math.nan, math.nan
    sem = float(np.std(x, ddof=1) / math.sqrt(x.size)) if x.size >= 2 else math.nan
    return float(np.mean(x)), sem


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: ``trim_mean(x, 0.25)`` (drops ``floor(n/4)`` scores at each end; NaN for n = 0)."""
    x = _scores(values)
    return float(sps.trim_mean(x, 0.25)) if x.size else math.nan


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean; ``(nan, nan)`` for n < 2, ``(x, x)`` for tied scores.

    The resampling RNG is seeded, so the same scores always give the same interval.
    """
    x = _scores(values)
    if x.size < 2:
        return math.nan, math.nan
    if np.ptp(x) == 0.0:
        # every resample has the same mean; scipy would warn about a degenerate distribution
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    # scipy >= 1.15 names the generator ``rng``; older releases call it ``random_state``
    key = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"
    result = sps.bootstrap((x,), _mean, confidence_level=confidence, n_resamples=resamples, method=CI_METHOD,
                           vectorized=True, **{key: rng})
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _mean(sample: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(sample, axis=axis)


def summarize(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
              seed: int = 0) -> Summary:
    """All the across-seed figures of one score; the IQM only from :data:`IQM_MIN_SEEDS` seeds on (below, the
    25 %-trimmed mean is the plain mean and would be mislabelled)."""
    x = _scores(values)
    mean, sem = mean_sem(x)
    low, high = bootstrap_ci(x, confidence, resamples, seed)
    seed_iqm = iqm(x) if x.size >= IQM_MIN_SEEDS else math.nan
    return Summary(n=int(x.size), mean=mean, sem=sem, ci_low=low, ci_high=high, iqm=seed_iqm)


def common_steps(curves: Sequence[Sequence[tuple[int, float]]]) -> list[int]:
    """The steps present in every curve (seeds of one method evaluated at the same steps), sorted."""
    if not curves:
        return []
    shared = set.intersection(*(set(step for step, _ in curve) for curve in curves))
    return sorted(shared)


def aggregate_curves(
    curves: Sequence[Sequence[tuple[int, float]]],
    confidence: float = CONFIDENCE,
    resamples: int = 2_000,
) -> dict[str, list[float]]:
    """Mean and bootstrap CI across seeds at each common step: ``{"step", "mean", "ci_low", "ci_high", "n"}``.

    ``curves``: one ``[(step, value), ...]`` per seed; steps missing from some seed are dropped (not averaged over
    fewer seeds, which would bend the curve). A step evaluated twice in one seed (a resumed run) keeps the last.
    """
    steps = common_steps(curves)
    by_seed = [dict(curve) for curve in curves]
    out: dict[str, list[float]] = {"step": [], "mean": [], "ci_low": [], "ci_high": [], "n": []}
    for step in steps:
        x = np.array([seed_curve[step] for seed_curve in by_seed])
        low, high = bootstrap_ci(x, confidence, resamples)
        out["step"].append(step)
        out["mean"].append(float(x.mean()))
        out["ci_low"].append(low)
        out["ci_high"].append(high)
        out["n"].append(len(x))
    return out


# ---------------------------------------------------------------------------------------------------------------
# over runs × tasks: Agarwal et al. (NeurIPS 2021), §4.1 (stratified bootstrap CIs), §4.2 (performance
# profiles), §4.3 (IQM, optimality gap, probability of improvement)
@dataclass(frozen=True)
class Interval:
    """A point estimate and its stratified-bootstrap CI (NaN bounds with fewer than two runs to resample)."""

    point: float
    low: float
    high: float


def score_matrix(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``(N runs, M tasks)`` float array, finite, at least one of each (a missing run is excluded, never a NaN)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"scores must be a (runs, tasks) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("scores contain NaN or inf; exclude unfinished runs before aggregating")
    return x


def iqm_runs_tasks(scores: np.ndarray) -> np.ndarray:
    """IQM (§4.3): the 25 %-trimmed mean of the N·M pooled (run, task) scores; ``(..., N, M) → (...)``."""
    flat = scores.reshape(*scores.shape[:-2], -1)
    return np.asarray(sps.trim_mean(flat, 0.25, axis=-1))


def mean_runs_tasks(scores: np.ndarray) -> np.ndarray:
    """Mean over runs and tasks (§4.3; the mean over tasks of the per-task means); ``(..., N, M) → (...)``."""
    return scores.mean(axis=(-2, -1))


def median_task_means(scores: np.ndarray) -> np.ndarray:
    """Median over tasks of the per-task mean over runs (rliable's ``aggregate_median``); ``(..., N, M) → (...)``."""
    return np.median(scores.mean(axis=-2), axis=-1)


def optimality_gap(scores: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    """Optimality gap (§4.3): ``γ − mean(min(x, γ))``, how far the scores fall short of γ;
    ``(..., N, M) → (...)``."""
    return gamma - np.minimum(scores, gamma).mean(axis=(-2, -1))


#: the aggregates reported with an interval, by their results.json names
AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "iqm": iqm_runs_tasks, "mean": mean_runs_tasks, "median": median_task_means, "optimality_gap": optimality_gap}


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) (§4.3): per task, the chance that a run of X scores above a run of Y, ties counting ½ (Mann–Whitney
    U / (N·K)), averaged over the tasks; ``x: (..., N, M)``, ``y: (..., K, M)`` → ``(...)``."""
    xa, ya = x[..., :, None, :], y[..., None, :, :]
    per_task = (xa > ya).mean(axis=(-3, -2)) + 0.5 * (xa == ya).mean(axis=(-3, -2))
    return per_task.mean(axis=-1)


def run_score_profile(scores: np.ndarray, taus: Sequence[float] | np.ndarray) -> np.ndarray:
    """Run-score distribution (§4.2): the fraction of the N·M (run, task) scores above each τ;
    ``(..., N, M), (T,) → (..., T)``."""
    flat = scores.reshape(*scores.shape[:-2], -1)
    return (flat[..., :, None] > np.asarray(taus, dtype=np.float64)).mean(axis=-2)


def stratified_indices(n_runs: int, n_tasks: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(R, N, M)`` run indices: every task's N run slots drawn with replacement from that task's N runs, tasks
    independently (rliable's ``StratifiedBootstrap`` over runs; the tasks are kept, not resampled)."""
    return rng.integers(0, n_runs, size=(resamples, n_runs, n_tasks))


def _in_batches(statistic: Callable[[slice], np.ndarray], resamples: int, per_resample: int) -> np.ndarray:
    """``statistic`` over consecutive slices of the resamples, so a large comparison never fills the memory."""
    size = max(1, _BATCH_ELEMENTS // max(per_resample, 1))
    return np.concatenate([statistic(slice(i, i + size)) for i in range(0, resamples, size)])


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval along axis 0 (``np.percentile``, linear interpolation)."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return low, high


def bootstrap_interval(scores: Sequence[Sequence[float]] | np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
                       resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE,
                       indices: np.ndarray | None = None) -> Interval:
    """``statistic`` of a ``(runs, tasks)`` matrix with its stratified-bootstrap percentile CI; ``indices``
    ``(R, N, M)`` replaces the seeded draw (the tests replay rliable's own resampling stream with it)."""
    x = score_matrix(scores)
    point = float(statistic(x))
    if x.shape[0] < 2:
        return Interval(point, math.nan, math.nan)
    idx = stratified_indices(*x.shape, resamples, np.random.default_rng(seed)) if indices is None else indices
    columns = np.arange(x.shape[1])
    values = _in_batches(lambda s: statistic(x[idx[s], columns]), len(idx), x.size)
    low, high = percentile_interval(values, confidence)
    return Interval(point, float(low), float(high))


def aggregate_intervals(scores: Sequence[Sequence[float]] | np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                        confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """IQM, mean, median and optimality gap of a ``(runs, tasks)`` matrix, each with its CI (the same resamples)."""
    return {name: bootstrap_interval(scores, f, resamples, seed, confidence) for name, f in AGGREGATES.items()}


def poi_interval(x: Sequence[Sequence[float]] | np.ndarray, y: Sequence[Sequence[float]] | np.ndarray,
                 resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE,
                 indices: tuple[np.ndarray, np.ndarray] | None = None) -> Interval:
    """P(X > Y) with its CI: X's and Y's runs resampled independently, each stratified by task (rliable's
    ``StratifiedIndependentBootstrap``); NaN bounds when either has fewer than two runs. ``indices``: X's and Y's
    ``(R, N, M)``, ``(R, K, M)`` run indices instead of the seeded draw."""
    x, y = score_matrix(x), score_matrix(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"X and Y must have the same tasks, got {x.shape[1]} and {y.shape[1]}")
    point = float(probability_of_improvement(x, y))
    if min(x.shape[0], y.shape[0]) < 2:
        return Interval(point, math.nan, math.nan)
    if indices is None:
        rng = np.random.default_rng(seed)
        indices = stratified_indices(*x.shape, resamples, rng), stratified_indices(*y.shape, resamples, rng)
    ix, iy = indices
    columns = np.arange(x.shape[1])
    values = _in_batches(lambda s: probability_of_improvement(x[ix[s], columns], y[iy[s], columns]), len(ix),
                         x.shape[0] * y.shape[0] * x.shape[1])
    low, high = percentile_interval(values, confidence)
    return Interval(point, float(low), float(high))


def performance_profile(scores: Sequence[Sequence[float]] | np.ndarray, taus: Sequence[float] = PROFILE_TAUS,
                        resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE,
                        indices: np.ndarray | None = None) -> dict[str, list[float]]:
    """The run-score distribution at each τ with its pointwise CI: ``{"tau", "fraction", "ci_low", "ci_high"}``
    (the bounds are the fraction itself with fewer than two runs; ``indices`` as in :func:`bootstrap_interval`)."""
    x = score_matrix(scores)
    fraction = run_score_profile(x, taus)
    low, high = fraction, fraction
    if x.shape[0] >= 2:
        idx = stratified_indices(*x.shape, resamples, np.random.default_rng(seed)) if indices is None else indices
        columns = np.arange(x.shape[1])
        values = _in_batches(lambda s: run_score_profile(x[idx[s], columns], taus), len(idx), x.size * len(taus))
        low, high = percentile_interval(values, confidence)
    return {"tau": [float(t) for t in taus], "fraction": fraction.tolist(), "ci_low": np.asarray(low).tolist(),
            "ci_high": np.asarray(high).tolist()}


def iqm_curve(histories: Sequence[dict[int, Sequence[float]]], resamples: int = 2_000, seed: int = 0,
              confidence: float = CONFIDENCE) -> dict[str, list[float]]:
    """IQM over runs × tasks at each step all runs evaluated, with its stratified CI: ``{"step", "iqm", "ci_low",
    "ci_high", "n"}``; ``histories``: one ``{step: per-task scores (M,)}`` per run."""
    out: dict[str, list[float]] = {"step": [], "iqm": [], "ci_low": [], "ci_high": [], "n": []}
    if not histories:
        return out
    for step in sorted(set.intersection(*(set(h) for h in histories))):
        interval = bootstrap_interval([h[step] for h in histories], iqm_runs_tasks, resamples, seed, confidence)
        out["step"].append(step)
        out["iqm"].append(interval.point)
        out["ci_low"].append(interval.low)
        out["ci_high"].append(interval.high)
        out["n"].append(len(histories))
    return out


# ---------------------------------------------------------------------------------------------------------------
# the same figures from rliable itself (``--stats rliable``; the ``report`` extra)
def load_rliable() -> tuple[ModuleType, ModuleType]:
    """rliable's ``metrics`` and ``library`` modules; ``RuntimeError`` saying why when they cannot be used."""
    try:
        from rliable import library, metrics
    except Exception as exc:  # not only ImportError: arch < 8 (rliable's pin) fails with TypeError under pandas 3
        raise RuntimeError(f"rliable cannot be imported ({type(exc).__name__}: {one_line(exc)})") from exc
    return metrics, library


@contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """rliable's stratified samplers draw from NumPy's global generator (the ``random_state`` it takes never reaches
    them): seed that one for the call and restore its state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def rliable_intervals(scores: Sequence[Sequence[float]] | np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                      confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """:func:`aggregate_intervals` computed by ``rliable.library.get_interval_estimates`` and ``rliable.metrics``."""
    metrics, library = load_rliable()
    x = score_matrix(scores)
    funcs = {"iqm": metrics.aggregate_iqm, "mean": metrics.aggregate_mean, "median": metrics.aggregate_median,
             "optimality_gap": metrics.aggregate_optimality_gap}

    def aggregate(sample: np.ndarray) -> np.ndarray:
        return np.array([f(sample) for f in funcs.values()])

    if x.shape[0] < 2:
        return {name: Interval(float(v), math.nan, math.nan) for name, v in zip(funcs, aggregate(x))}
    with _global_numpy_seed(seed):
        points, cis = library.get_interval_estimates({"x": x}, aggregate, reps=resamples,
                                                     confidence_interval_size=confidence)
    return {name: Interval(float(points["x"][i]), float(cis["x"][0, i]), float(cis["x"][1, i]))
            for i, name in enumerate(funcs)}


def rliable_poi(x: Sequence[Sequence[float]] | np.ndarray, y: Sequence[Sequence[float]] | np.ndarray,
                resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> Interval:
    """:func:`poi_interval` computed by rliable (``StratifiedIndependentBootstrap``)."""
    metrics, library = load_rliable()
    x, y = score_matrix(x), score_matrix(y)
    point = float(metrics.probability_of_improvement(x, y))
    if min(x.shape[0], y.shape[0]) < 2:
        return Interval(point, math.nan, math.nan)
    with _global_numpy_seed(seed):
        _, cis = library.get_interval_estimates(
            {"xy": [x, y]}, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=resamples,
            confidence_interval_size=confidence)
    return Interval(point, float(cis["xy"][0, 0]), float(cis["xy"][1, 0]))


def rliable_profile(scores: Sequence[Sequence[float]] | np.ndarray, taus: Sequence[float] = PROFILE_TAUS,
                    resamples: int = RESAMPLES, seed: int = 0,
                    confidence: float = CONFIDENCE) -> dict[str, list[float]]:
    """:func:`performance_profile` computed by ``rliable.library.create_performance_profile``."""
    _, library = load_rliable()
    x = score_matrix(scores)
    if x.shape[0] < 2:
        return performance_profile(x, taus, resamples, seed, confidence)
    with _global_numpy_seed(seed):
        profiles, cis = library.create_performance_profile({"x": x}, np.asarray(taus), reps=resamples,
                                                           confidence_interval_size=confidence)
    return {"tau": [float(t) for t in taus], "fraction": np.asarray(profiles["x"]).tolist(),
            "ci_low": np.asarray(cis["x"][0]).tolist(), "ci_high": np.asarray(cis["x"][1]).tolist()}


#: ``--stats`` backends: our NumPy code (the default, no extra needed) or rliable's own functions
BACKENDS: dict[str, dict[str, Callable[..., Any]]] = {
    "numpy": {"intervals": aggregate_intervals, "poi": poi_interval, "profile": performance_profile},
    "rliable": {"intervals": rliable_intervals, "poi": rliable_poi, "profile": rliable_profile},
}
