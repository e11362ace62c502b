"""``python -m rl_mtl.report DIR``: aggregate a sweep's runs into tables and plots (DESIGN §8).

    python -m rl_mtl.report sweeps/mt10              # final evaluations from each run's summary.json
    python -m rl_mtl.report sweeps/mt10 --source eval  # the re-evaluations of ``rl_mtl.evaluate --sweep``

Writes ``results.md``, ``results.csv``, ``results.json`` and, with matplotlib (the ``plots`` extra), ``curves.png``
(mean success over training with a bootstrap 95 % CI across seeds) and ``diagnostics.png`` (combiner diagnostics
over training, when logged). Per method: the final success rate (the reported score) as mean ± SEM, bootstrap CI
and IQM across seeds; the max over training, labelled as such; success per task. A run that is missing, failed,
unfinished, diverged or trained with a different config is listed with the reason and left out of every average;
a finished run that skipped updates (non-finite losses or gradients) is averaged and named in ``results.md``.
"""

from __future__ import annotations

import collections
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rl_mtl import runs, stats
from rl_mtl.cli import Parser, fail
from rl_mtl.config import TrainConfig

PROG = "python -m rl_mtl.report"
#: options that do not change what a run measures (hardware, logging, bookkeeping; the number of rollout workers
#: changes which process steps an env, never a transition). ``rollout`` is not among them: with ``async`` the update
#: made during step t samples a replay without transition t (one step stale), a different protocol from ``sync``
IGNORED = frozenset({"seed", "device", "torch_threads", "preset", "log_every", "checkpoint_every", "save_replay",
                     "vector_strategy", "diag_every", "workers"})
#: options that make a method what it is: they may differ between methods, not between seeds of one method
METHOD_FIELDS = frozenset({"method", "combiner", "combine", "weighting", "weighting_opts", "weighted"})
#: combiner diagnostics plotted over training when a run logged them (metrics.csv keys)
DIAGNOSTICS = (
    ("combiner/critic/imbalance_ratio", "critic imbalance ratio max‖g_k‖/min‖g_k‖"),
    ("combiner/critic/cos_theta", "critic cos θ (g_0 vs MGDA)"),
    ("combiner/critic/pareto_failure_rate", "critic Pareto-failure rate"),
    ("combiner/actor/pareto_failure_rate", "actor Pareto-failure rate"),
)
CONVENTIONS = {
    "score": "success rate: fraction of evaluation episodes (deterministic policy) that reached success at any "
             "step, averaged over the tasks; in % in results.md, a fraction in results.csv and results.json",
    "final": "the evaluation at the end of training (the reported score)",
    "max_over_training": "the best evaluation during training (optimistic; the published tables use it)",
    "sem": "standard error of the mean across seeds: sample standard deviation (ddof=1) / sqrt(n); undefined for n < 2 (– in results.md, null in JSON)",
    "ci": f"{stats.CONFIDENCE:.0%} percentile bootstrap CI of the mean across seeds (scipy.stats.bootstrap, "
          f"{stats.RESAMPLES} resamples, seeded); undefined for n < 2, collapsed to the score when all seeds tie",
    "iqm": "interquartile mean across seeds: scipy.stats.trim_mean(x, 0.25), floor(n/4) seeds cut at each end",
}


@dataclass
class Run:
    """One run directory as the report sees it; ``problem`` is empty when the run may be averaged."""

    label: str
    seed: int | None
    path: Path
    cfg: TrainConfig | None = None
    final: dict[str, float] = field(default_factory=dict)
    max_over_training: float = math.nan
    history: list[tuple[int, float]] = field(default_factory=list)
    skipped_updates: int = 0
    """Updates of a finished run that skipped an optimiser step for a non-finite loss or gradient (noted, averaged)."""
    problem: str = ""


# ---------------------------------------------------------------------------------------------------------------
# reading
def _label(root: Path, path: Path, cfg: TrainConfig | None) -> str:
    """The method group of a run: its parent directory under the sweep root (``<method>``), else its method."""
    parent = path.parent.relative_to(root).as_posix() if path.parent != root else ""
    return parent or (cfg.method if cfg else path.name)


def load_run(root: Path, path: Path, source: str) -> Run:
    """Read a run's config, status and scores; a run that cannot be averaged gets the reason in ``problem``."""
    cfg = runs.read_config(path)
    status = runs.read_json(path / runs.STATUS) or {}
    run = Run(_label(root, path, cfg), cfg.seed if cfg else None, path, cfg)
    failed = (f"failed (exit {status.get('returncode')}), log: {path / runs.LOG}"
              if status.get("status") == "failed" else "")
    if cfg is None:
        run.problem = f"no readable {runs.CONFIG}" + (f"; {failed}" if failed else "")
        return run
    summary = runs.read_json(path / runs.SUMMARY)
    if summary is None:
        run.problem = failed or f"unfinished (no {runs.SUMMARY}; last status: {status.get('status', 'unknown')})"
        return run
    diverged = runs.diverged_reason(summary)
    if diverged is not None:
        run.problem = diverged
        return run
    if summary.get("final_step") != cfg.steps:
        run.problem = (f"unfinished (trained to {summary.get('final_step')} of {cfg.steps} steps)"
                       + (f"; last attempt {failed}" if failed else ""))
        return run
    run.final = {k: float(v) for k, v in summary["final"].items()}
    run.max_over_training = float(summary["max_over_training"])
    run.history = [(int(e["step"]), float(e["mean"])) for e in summary.get("history", [])]
    run.skipped_updates = int(summary.get("skipped_updates") or 0)
    if source == "eval":
        evaluation = runs.read_json(path / runs.EVAL)
        if evaluation is None or evaluation.get("step") != summary["final_step"]:
            run.problem = (f"no {runs.EVAL} of its final checkpoint "
                           f"(python -m rl_mtl.evaluate --sweep {root} --seeds N)")
        else:
            run.final = {k: float(v) for k, v in evaluation["success"].items()}
    return run


def load_runs(root: Path, source: str) -> list[Run]:
    """Every run under ``root`` plus those ``sweep.json`` asked for that never started (listed as missing)."""
    found = [load_run(root, path, source) for path in runs.find_runs(root)]
    manifest = runs.read_json(root / runs.MANIFEST) or {}
    seen = {r.path for r in found}
    for entry in manifest.get("runs", []):
        path = root / entry["dir"]
        if path not in seen:
            found.append(Run(entry["method"], int(entry["seed"]), path, problem="missing (never started)"))
    return sorted(found, key=lambda r: (r.label, r.seed if r.seed is not None else -1, str(r.path)))


# ---------------------------------------------------------------------------------------------------------------
# config consistency
def _describe(values: dict[str, Any], reference: dict[str, Any]) -> str:
    """``steps=100 (others: 50)`` for the first option that differs (``rollout`` first, with why it matters)."""
    if values.get("rollout", "sync") != reference.get("rollout", "sync"):
        return (f"rollout={values.get('rollout', 'sync')} differs from the other seeds' "
                f"rollout={reference.get('rollout', 'sync')}: async updates see data one step stale, "
                "a different protocol")
    for name in sorted(set(values) | set(reference)):
        if values.get(name) != reference.get(name):
            return f"{name}={values.get(name)!r} (others: {reference.get(name)!r})"
    return ""


def config_outliers(configs: Sequence[dict[str, Any]], ignore: frozenset[str]) -> list[str]:
    """For each config, ``""`` if it matches the most common one (ignoring ``ignore``), else what differs.

    Ties go to the config seen first, so a report does not depend on set ordering.
    """
    keys = [json.dumps({k: v for k, v in c.items() if k not in ignore}, sort_keys=True, default=str)
            for c in configs]
    if not keys:
        return []
    counts = collections.Counter(keys)
    best = max(counts.values())
    reference_key = next(k for k in keys if counts[k] == best)
    reference = json.loads(reference_key)
    return ["" if key == reference_key else "different config: " + _describe(json.loads(key), reference)
            for key in keys]


def check_configs(records: Sequence[Run]) -> None:
    """Mark runs whose protocol differs from the majority, then runs whose method options differ within a method."""
    usable = [r for r in records if not r.problem and r.cfg is not None]
    reasons = config_outliers([r.cfg.to_dict() for r in usable], IGNORED | METHOD_FIELDS)  # type: ignore[union-attr]
    for run, reason in zip(usable, reasons):
        run.problem = reason
    for label in sorted({r.label for r in usable}):
        group = [r for r in usable if r.label == label and not r.problem]
        for run, reason in zip(group, config_outliers([r.cfg.to_dict() for r in group], IGNORED)):  # type: ignore
            run.problem = reason


# ---------------------------------------------------------------------------------------------------------------
# aggregation
def aggregate(records: Sequence[Run], resamples: int = stats.RESAMPLES,
              order: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Per method (in ``order``, then by name): seeds, final and max-over-training summaries, per-task summaries,
    the learning curve."""
    out: dict[str, dict[str, Any]] = {}
    labels = {r.label for r in records if not r.problem}
    for label in [m for m in dict.fromkeys(order) if m in labels] + sorted(labels - set(order)):
        group = [r for r in records if r.label == label and not r.problem]
        tasks = [k for k in group[0].final if k != "mean"]
        out[label] = {
            "seeds": [r.seed for r in group],
            "n": len(group),
            "final": stats.summarize([r.final["mean"] for r in group], resamples=resamples).to_dict(),
            "max_over_training": stats.summarize([r.max_over_training for r in group], resamples=resamples).to_dict(),
            "per_seed": {str(r.seed): {"final": r.final["mean"], "max_over_training": r.max_over_training,
                                       "skipped_updates": r.skipped_updates, "run": str(r.path)} for r in group},
            "per_task": {t: stats.summarize([r.final[t] for r in group], resamples=resamples).to_dict()
                         for t in tasks},
            "curve": stats.aggregate_curves([r.history for r in group]),
        }
    return out


# ---------------------------------------------------------------------------------------------------------------
# writing
def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}"


def _score_row(label: str, s: dict[str, float]) -> str:
    sem = f" ± {_pct(s['sem'])}" if not math.isnan(s["sem"]) else ""
    ci = f"[{_pct(s['ci_low'])}, {_pct(s['ci_high'])}]" if not math.isnan(s["ci_low"]) else "–"
    return f"| {label} | {s['n']} | {_pct(s['mean'])}{sem} | {ci} | {_pct(s['iqm'])} |"


def markdown(root: Path, source: str, methods: dict[str, dict[str, Any]], excluded: Sequence[Run],
             protocol: str, plots: Sequence[str], averaged: Sequence[Run] = ()) -> str:
    """``results.md``: headline table, max over training, per-task table, excluded runs, the averaged runs that
    skipped updates, plots, conventions."""
    head = "| method | seeds | mean ± SEM | 95 % CI | IQM |\n|---|---|---|---|---|"
    what = ("the final evaluation of each run (summary.json)" if source == "summary"
            else "the re-evaluation of each run's final checkpoint (eval.json, rl_mtl.evaluate --sweep)")
    lines = [f"# Results: {root}", "", f"Protocol: {protocol}. Scores: {what}.", "",
             "## Success rate at the end of training (%, the reported score)", "", head]
    lines += [_score_row(m, v["final"]) for m, v in methods.items()]
    lines += ["", "## Max over training (%; best evaluation during training — optimistic, as in the papers' "
              "tables)", "", head]
    lines += [_score_row(m, v["max_over_training"]) for m, v in methods.items()]
    tasks = list(next(iter(methods.values()))["per_task"]) if methods else []
    lines += ["", "## Success per task at the end of training (%, mean ± SEM over seeds)", "",
              "| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for task in tasks:
        cells = []
        for v in methods.values():
            s = v["per_task"].get(task)
            cells.append("–" if s is None else _pct(s["mean"]) + (f" ± {_pct(s['sem'])}" if s["n"] > 1 else ""))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", f"## Runs left out of the averages ({len(excluded)})", ""]
    if excluded:
        lines += ["| method | seed | run | reason |", "|---|---|---|---|"]
        lines += [f"| {r.label} | {r.seed if r.seed is not None else '?'} | {r.path} | {r.problem} |"
                  for r in excluded]
    else:
        lines.append("None: every run found is finished and has the same config.")
    skipped = [r for r in averaged if r.skipped_updates > 0]
    if skipped:
        lines += ["", "Runs with skipped updates (averaged; each such update skipped an optimiser step for a "
                  "non-finite loss or gradient): "
                  + ", ".join(f"{r.label} seed {r.seed} ({r.skipped_updates} skipped)" for r in skipped) + "."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines += ["", "## What the numbers mean", ""] + [f"- **{k}**: {v}" for k, v in CONVENTIONS.items()]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, methods: dict[str, dict[str, Any]]) -> None:
    """``results.csv``: one row per (method, score) with n, mean, SEM, CI and IQM; per-task rows ``final/<task>``."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "score", "n", "mean", "sem", "ci_low", "ci_high", "iqm"])
        for label, v in methods.items():
            rows = [("final", v["final"]), ("max_over_training", v["max_over_training"])]
            rows += [(f"final/{task}", s) for task, s in v["per_task"].items()]
            for score, s in rows:
                writer.writerow([label, score, s["n"], s["mean"], s["sem"], s["ci_low"], s["ci_high"], s["iqm"]])


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


def write_plots(out: Path, methods: dict[str, dict[str, Any]], records: Sequence[Run]) -> list[str]:
    """``curves.png`` and, when logged, ``diagnostics.png``; returns the files written (none without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e '.[plots]')")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, v in methods.items():
        c = v["curve"]
        (line,) = ax.plot(c["step"], c["mean"], label=f"{label} (n={v['n']})")
        ax.fill_between(c["step"], c["ci_low"], c["ci_high"], color=line.get_color(), alpha=0.2)
    ax.set(xlabel="loop step", ylabel="eval success (mean over tasks)", ylim=(-0.02, 1.02),
           title=f"mean across seeds, shaded {stats.CONFIDENCE:.0%} bootstrap CI")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)
    written.append(str(out / "curves.png"))

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
                    ax.plot(mean["step"], mean["mean"], label=label)
            ax.set(title=title, xlabel="loop step")
        axes[0][0].legend()
        fig.tight_layout()
        fig.savefig(out / "diagnostics.png", dpi=120)
        plt.close(fig)
        written.append(str(out / "diagnostics.png"))
    return written


def protocol_line(records: Sequence[Run]) -> str:
    """The shared protocol of the averaged runs, in one line (env, steps, evaluation episodes, episode length)."""
    cfg = next((r.cfg for r in records if not r.problem and r.cfg is not None), None)
    if cfg is None:
        return "no finished run"
    return (f"{cfg.env}, {cfg.steps} loop steps, {cfg.eval_episodes} evaluation episodes per task, "
            f"{cfg.max_episode_steps}-step episodes, preset {cfg.preset or '?'}")


def report(root: Path, out: Path, source: str = "summary", plots: bool = True,
           resamples: int = stats.RESAMPLES) -> dict[str, Any]:
    """Read, check, aggregate and write every output; returns the ``results.json`` content."""
    records = load_runs(root, source)
    check_configs(records)
    manifest = runs.read_json(root / runs.MANIFEST) or {}
    methods = aggregate(records, resamples, order=[r["method"] for r in manifest.get("runs", [])])
    excluded = [r for r in records if r.problem]
    averaged = [r for r in records if not r.problem]
    out.mkdir(parents=True, exist_ok=True)
    written = write_plots(out, methods, records) if plots and methods else []
    protocol = protocol_line(records)
    result = {
        "root": str(root), "source": source, "protocol": protocol, "conventions": CONVENTIONS, "methods": methods,
        "excluded": [{"method": r.label, "seed": r.seed, "run": str(r.path), "reason": r.problem} for r in excluded],
        "skipped_updates": [{"method": r.label, "seed": r.seed, "run": str(r.path), "skipped": r.skipped_updates}
                            for r in averaged if r.skipped_updates > 0],
    }
    (out / "results.json").write_text(json.dumps(_finite(result), indent=2))
    write_csv(out / "results.csv", methods)
    (out / "results.md").write_text(markdown(root, source, methods, excluded, protocol, written, averaged))
    return result


def _finite(value: Any) -> Any:
    """NaN (n < 2) as JSON ``null``, so the file is standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints the headline table and where the files are."""
    parser = Parser(prog=PROG, description="Tables and plots of a sweep's runs (mean ± SEM, bootstrap CI, IQM).")
    parser.add_argument("dir", help="sweep directory (python -m rl_mtl.sweep --out DIR) or any folder of runs")
    parser.add_argument("--out", help="where to write results.* and the plots (default: DIR)")
    parser.add_argument("--source", choices=("summary", "eval"), default="summary",
                        help="final scores from summary.json (default) or from eval.json (rl_mtl.evaluate --sweep)")
    parser.add_argument("--resamples", type=int, default=stats.RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    if not root.is_dir():
        fail(PROG, f"DIR: {args.dir} is not a directory")
    if args.resamples < 100:
        fail(PROG, f"--resamples: must be an integer >= 100, got {args.resamples}")
    if not runs.find_runs(root) and not (root / runs.MANIFEST).is_file():
        fail(PROG, f"DIR: no runs under {args.dir} (no config.yaml or {runs.STATUS} found)")
    out = Path(args.out).resolve() if args.out else root
    result = report(root, out, args.source, plots=not args.no_plots, resamples=args.resamples)
    for label, v in result["methods"].items():
        s = v["final"]
        print(f"{label}: final success {s['mean']:.3f} ± {s['sem']:.3f} (SEM, n={s['n']}), "
              f"95% CI [{s['ci_low']:.3f}, {s['ci_high']:.3f}], IQM {s['iqm']:.3f}")
    for entry in result["excluded"]:
        print(f"left out: {entry['method']} seed {entry['seed']}: {entry['reason']}")
    for entry in result["skipped_updates"]:
        print(f"averaged with skipped updates: {entry['method']} seed {entry['seed']} ({entry['skipped']} skipped)")
    print(f"written {out / 'results.md'}, results.csv, results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
