"""Compare training runs side by side: evaluation success and the combiner diagnostics over training.

    python scripts/plot_runs.py runs/mt10_mtsac_seed0 runs/mt10_imgrad_seed0 --out compare.png

Reads each run's ``evals.jsonl`` and ``metrics.csv``; prints a table of final / max-over-training success and
interval means of the diagnostics, and draws one panel per quantity (a run is labelled by its method).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

PANELS = [
    ("eval/success/mean", "eval success (mean over tasks)"),
    ("train/success/mean", "train success (mean over tasks)"),
    ("combiner/critic/imbalance_ratio", "critic imbalance ratio max‖g_k‖/min‖g_k‖"),
    ("combiner/critic/pareto_failure_rate", "critic Pareto-failure rate"),
    ("combiner/critic/cos_theta", "critic cos θ (g_0 vs MGDA)"),
    ("combiner/actor/pareto_failure_rate", "actor Pareto-failure rate"),
]


def read_series(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged scalar of a run as ``key -> [(step, value), ...]``, evaluations included."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(run / "metrics.csv") as handle:
        for row in csv.DictReader(handle):
            series[row["key"]].append((int(row["step"]), float(row["value"])))
    return series


def label(run: Path) -> str:
    """``method`` (from the run's saved config), or the directory name."""
    config = run / "config.yaml"
    return yaml.safe_load(config.read_text()).get("method", run.name) if config.exists() else run.name


def summary_row(run: Path, series: dict[str, list[tuple[int, float]]]) -> str:
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()] if (
        run / "evals.jsonl").exists() else []
    final = evals[-1]["mean"] if evals else float("nan")
    best = max((e["mean"] for e in evals), default=float("nan"))

    def mean_of(key: str) -> float:
        values = [v for _, v in series.get(key, [])]
        return float(np.mean(values)) if values else float("nan")

    return (f"| {label(run)} | {evals[-1]['step'] if evals else '-'} | {final:.2f} | {best:.2f} | "
            f"{mean_of('combiner/critic/imbalance_ratio'):.2f} | {mean_of('combiner/critic/cos_theta'):.3f} | "
            f"{mean_of('combiner/critic/pareto_failure_rate'):.3f} | {mean_of('combiner/actor/pareto_failure_rate'):.3f} |"
            f" {mean_of('perf/update_ms'):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("compare.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("| method | steps | final eval success | max over training | critic imbalance r | critic cos θ | "
          "critic Pareto-failure rate | actor Pareto-failure rate | ms/update |")
    print("|---|---|---|---|---|---|---|---|---|")
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for run in args.runs:
        series = read_series(run)
        print(summary_row(run, series))
        for ax, (key, title) in zip(axes.flat, PANELS):
            points = series.get(key, [])
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=label(run), marker="o" if key.startswith("eval") else None)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("loop step")
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
