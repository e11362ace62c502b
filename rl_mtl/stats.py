"""Statistics across seeds for the 10-seed protocol (DESIGN §8): mean ± SEM, bootstrap CI, IQM, learning curves.

Small pure functions on 1-D arrays of per-seed scores, so each is tested against hand-computed numbers.
Conventions (also written into every report): SEM = sample standard deviation (ddof = 1) / √n; the confidence
interval is the **percentile** bootstrap of the mean (``scipy.stats.bootstrap``; BCa is unstable at n = 10 and
undefined for tied success rates); IQM = the 25 %-trimmed mean (``scipy.stats.trim_mean(x, 0.25)``, which cuts
``floor(0.25 n)`` scores at each end). With fewer than two seeds SEM and CI are NaN; with identical scores the
CI collapses to that score.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
RESAMPLES = 10_000
CI_METHOD = "percentile"


@dataclass(frozen=True)
class Summary:
    """Aggregate of per-seed scores: count, mean, SEM (ddof=1), bootstrap CI of the mean, IQM."""

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
    """All the across-seed figures of one score."""
    x = _scores(values)
    mean, sem = mean_sem(x)
    low, high = bootstrap_ci(x, confidence, resamples, seed)
    return Summary(n=int(x.size), mean=mean, sem=sem, ci_low=low, ci_high=high, iqm=iqm(x))


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
