"""The plots of ``rl_mtl.report``: learning curves (mean and IQM with their CIs), performance profiles, aggregate
intervals and combiner diagnostics over training (matplotlib, imported only when plotting)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rl_mtl import stats
from rl_mtl.cli import install_hint

if TYPE_CHECKING:
    from rl_mtl.report_runs import Run

#: ``results.json``'s names of the aggregates over runs × tasks, and how results.md titles them
AGGREGATE_TITLES = {"iqm": "IQM", "mean": "mean", "median": "median", "optimality_gap": "optimality gap"}
#: combiner diagnostics plotted over training when a run logged them (metrics.csv keys)
DIAGNOSTICS = (
    ("combiner/critic/imbalance_ratio", "critic imbalance ratio max‖g_k‖/min‖g_k‖"),
    ("combiner/critic/cos_theta", "critic cos θ (g_0 vs MGDA)"),
    ("combiner/critic/pareto_failure_rate", "critic Pareto-failure rate"),
    ("combiner/actor/pareto_failure_rate", "actor Pareto-failure rate"),
)


def read_metrics(path: Path, keys: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """``key -> [(step, value), ...]`` of the asked-for keys in a run's ``metrics.csv`` (last value of a step)."""
    series: dict[str, dict[int, float]] = {key: {} for key in keys}
    csv_path = path / "metrics.csv"
    if csv_path.is_file():
        with open(csv_path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row["key"] in series:
                    series[row["key"]][int(row["step"])] = float(row["value"])
    return {key: sorted(values.items()) for key, values in series.items()}


def _line(ax: Any, x: Sequence[float], y: Sequence[float], label: str) -> Any:
    """A labelled line; a single point is drawn as a dot (a one-point line draws nothing: a tiny sweep's curves)."""
    (line,) = ax.plot(x, y, label=label, marker="o" if len(x) == 1 else None)
    return line


def _band(ax: Any, x: Sequence[float], y: Sequence[float], low: Sequence[float | None],
          high: Sequence[float | None], label: str) -> None:
    """A line with its shaded interval (undefined bounds, one run, shade nothing)."""
    line = _line(ax, x, y, label)
    lo = [v if v is not None and not math.isnan(v) else m for v, m in zip(low, y)]
    hi = [v if v is not None and not math.isnan(v) else m for v, m in zip(high, y)]
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)


def write_plots(out: Path, methods: dict[str, dict[str, Any]], records: Sequence[Run],
                baseline: str | None = None) -> list[str]:
    """``curves.png``, ``profiles.png``, ``intervals.png`` and, when logged, ``diagnostics.png``; returns the files
    written (none without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plots ({install_hint('plots')})")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for label, v in methods.items():
        c, q = v["curve"], v["iqm_curve"]
        _band(left, c["step"], c["mean"], c["ci_low"], c["ci_high"], f"{label} (n={v['n']})")
        _band(right, q["step"], q["iqm"], q["ci_low"], q["ci_high"], f"{label} (n={v['n']})")
    left.set(xlabel="loop step", ylabel="eval success", ylim=(-0.02, 1.02),
             title=f"mean over tasks, mean across seeds ({stats.CONFIDENCE:.0%} bootstrap CI)")
    right.set(xlabel="loop step", title=f"IQM over runs × tasks ({stats.CONFIDENCE:.0%} stratified bootstrap CI)")
    left.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)
    written.append(str(out / "curves.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, v in methods.items():
        p = v["profile"]
        _band(ax, p["tau"], p["fraction"], p["ci_low"], p["ci_high"], f"{label} (n={v['n']})")
    ax.set(xlabel="final success rate τ", ylabel="fraction of runs × tasks with success > τ", xlim=(0, 1),
           ylim=(-0.02, 1.02), title=f"performance profiles ({stats.CONFIDENCE:.0%} stratified bootstrap CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "profiles.png", dpi=120)
    plt.close(fig)
    written.append(str(out / "profiles.png"))

    panels = dict(AGGREGATE_TITLES)
    if baseline is not None:
        panels["poi"] = f"P(X > {baseline})"
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.5 * len(methods) + 1.6),
                             sharey=True, squeeze=False)
    names = list(methods)
    for ax, (name, title) in zip(axes[0], panels.items()):
        for row, label in enumerate(names):
            b = methods[label]["rliable"]
            point, (low, high) = b[name], b[f"{name}_ci"]
            if point is None:
                continue
            if low is not None and not math.isnan(low):
                ax.plot([low, high], [row, row], linewidth=6, alpha=0.4, color=f"C{row}")
            ax.plot([point], [row], marker="|", markersize=14, color=f"C{row}")
        ax.set(title=title, yticks=range(len(names)), yticklabels=names, ylim=(len(names) - 0.3, -0.7))
    fig.tight_layout()
    fig.savefig(out / "intervals.png", dpi=120)
    plt.close(fig)
    written.append(str(out / "intervals.png"))

    usable = [r for r in records if not r.problem]
    logged = {r.path: read_metrics(r.path, [key for key, _ in DIAGNOSTICS]) for r in usable}
    panels = {key: title for key, title in DIAGNOSTICS if any(series[key] for series in logged.values())}
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
        for ax, (key, title) in zip(axes[0], panels.items()):
            for label in methods:
                curves = [logged[r.path][key] for r in usable if r.label == label and logged[r.path][key]]
                if curves:
                    mean = stats.aggregate_curves(curves, resamples=200)
                    _line(ax, mean["step"], mean["mean"], label)
            ax.set(title=title, xlabel="loop step")
        axes[0][0].legend()
        fig.tight_layout()
        fig.savefig(out / "diagnostics.png", dpi=120)
        plt.close(fig)
        written.append(str(out / "diagnostics.png"))
    return written
