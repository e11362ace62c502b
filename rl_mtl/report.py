"""``python -m rl_mtl.report DIR``: aggregate a sweep's runs into tables and plots (architecture §8).

    python -m rl_mtl.report sweeps/mt10              # final evaluations from each run's summary.json
    python -m rl_mtl.report sweeps/mt10 --source eval  # the re-evaluations of ``rl_mtl.evaluate --sweep``

Writes ``results.md``, ``results.csv``, ``results.json`` and, with matplotlib (the ``plots``/``report`` extras),
``curves.png`` (mean success over training with a bootstrap 95 % CI across seeds, beside the IQM over runs × tasks
with its stratified CI), ``profiles.png`` (performance profiles), ``intervals.png`` (the aggregates over runs × tasks
with their CIs) and ``diagnostics.png`` (combiner diagnostics over training, when logged). Per method: the final
success rate (the reported score) as mean ± SEM, bootstrap CI across seeds; over the (runs × tasks) matrix of final
success, the statistics of Agarwal et al. (NeurIPS 2021, rliable): IQM, mean, median and optimality gap with
stratified bootstrap CIs and the probability of improvement over ``--baseline``; the max over training, labelled as
such; success per task. ``stl`` (single-task SAC, ``<DIR>/stl/seed<k>/<task>/``) is scored per seed as one multi-task
run. A run that is missing, failed, unfinished, diverged or trained with a different config is listed with the
reason and left out of every average; a finished run that skipped updates (non-finite losses or gradients) is
averaged and named in ``results.md``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rl_mtl import runs, stats
from rl_mtl.cli import Parser, fail, install_hint, program_name
from rl_mtl.config import ConfigError
from rl_mtl.report_plots import AGGREGATE_TITLES, write_plots
from rl_mtl.report_runs import STL, Run, check_configs, load_runs

PROG = program_name("rl_mtl.report")  # rl-mtl-report when run by that console script
#: the method P(X > Y) is taken against when ``--baseline`` is not given (when it has averaged runs)
DEFAULT_BASELINE = "mtsac"


def conventions(resamples: int = stats.RESAMPLES, backend: str = "numpy",
                baseline: str | None = None) -> dict[str, str]:
    """What every number means, written into results.md and results.json."""
    ci = f"{stats.CONFIDENCE:.0%} percentile"
    engine = ("rliable's metrics and library (--stats rliable)" if backend == "rliable"
              else "rl_mtl.stats (NumPy; rliable's definitions, cross-checked against rliable in the tests)")
    return {
        "score": "success rate: fraction of evaluation episodes (deterministic policy) that reached success at any "
                 "step, averaged over the tasks; in % in results.md, a fraction in results.csv and results.json",
        "final": "the evaluation at the end of training (the reported score)",
        "max_over_training": "the best evaluation during training (optimistic; the published tables use it)",
        "sem": "standard error of the mean across seeds: sample standard deviation (ddof=1) / sqrt(n); undefined "
               "for n < 2 (– in results.md, null in JSON)",
        "ci": f"{ci} bootstrap CI of the mean across seeds (scipy.stats.bootstrap, {resamples} resamples, seeded); "
              "undefined for n < 2, collapsed to the score when all seeds tie",
        "iqm": f"IQM of the seed means (seed-level tables): scipy.stats.trim_mean(x, 0.25), floor(n/4) seeds cut at "
               f"each end; undefined below {stats.IQM_MIN_SEEDS} seeds, where it would cut nothing and be the mean",
        "rliable": "over the (runs × tasks) matrix of final success per method (Agarwal et al., NeurIPS 2021): iqm = "
                   "25%-trimmed mean of the N·M pooled scores; mean; median = median over tasks of the per-task mean "
                   "over runs; optimality_gap = 1 − mean(min(x, 1)); each with a "
                   f"{ci} CI of the stratified bootstrap (runs resampled with replacement within each task, tasks "
                   f"kept; {resamples} resamples, seed 0), undefined for one run; computed by {engine}",
        "poi": f"probability of improvement P(X > {baseline or 'baseline'}) (--baseline): per task the probability "
               "that a run of X scores above a run of the baseline, ties counting 1/2 (Mann–Whitney U / (N·K)), "
               "averaged over the tasks; CI: both methods' runs resampled independently, stratified by task; null "
               "for the baseline itself and without a baseline",
        "profile": "performance profile (profiles.png): the fraction of (run, task) final scores above τ, with its "
                   "pointwise stratified-bootstrap CI",
        "iqm_curve": "IQM over runs × tasks at each evaluation step every run of the method shares (curves.png, "
                     "right), stratified-bootstrap CI of 2000 resamples",
        STL: "single-task SAC: for each seed one mt1:<task> run per task of the benchmark (<sweep>/stl/seed<k>/"
             "<task>/), scored together as one multi-task run (task k's success from task k's run, the mean over "
             "the tasks); a seed with any task run missing, failed, unfinished, diverged or of another config is "
             "left out whole, with every reason",
    }


CONVENTIONS = conventions()


# ---------------------------------------------------------------------------------------------------------------
# aggregation
def score_matrix(group: Sequence[Run], tasks: Sequence[str]) -> np.ndarray:
    """``(runs, tasks)`` final success of a method's runs."""
    return np.array([[r.final[t] for t in tasks] for r in group], dtype=np.float64)


def _interval(value: stats.Interval, name: str) -> dict[str, Any]:
    return {name: value.point, f"{name}_ci": [value.low, value.high]}


def runs_x_tasks(matrices: dict[str, tuple[list[str], np.ndarray]], baseline: str | None, resamples: int,
                 backend: str = "numpy") -> dict[str, dict[str, Any]]:
    """Per method the ``rliable`` block (aggregates with CIs, P(X > baseline) with its CI) and the profile."""
    engine = stats.BACKENDS[backend]
    out: dict[str, dict[str, Any]] = {}
    for label, (tasks, x) in matrices.items():
        block: dict[str, Any] = {"runs": int(x.shape[0]), "tasks": len(tasks)}
        for name, value in engine["intervals"](x, resamples).items():
            block.update(_interval(value, name))
        block.update(baseline=baseline, poi=None, poi_ci=[None, None])
        if baseline is not None and label != baseline:
            base_tasks, y = matrices[baseline]
            if set(base_tasks) == set(tasks):
                y = y[:, [base_tasks.index(t) for t in tasks]]
                block.update(_interval(engine["poi"](x, y, resamples), "poi"))
        out[label] = {"rliable": block, "profile": engine["profile"](x, resamples=resamples)}
    return out


def aggregate(records: Sequence[Run], resamples: int = stats.RESAMPLES, order: Sequence[str] = (),
              baseline: str | None = None, backend: str = "numpy") -> dict[str, dict[str, Any]]:
    """Per method (in ``order``, then by name): seeds, final and max-over-training summaries, per-task summaries,
    the learning curves, and the statistics over runs × tasks."""
    out: dict[str, dict[str, Any]] = {}
    matrices: dict[str, tuple[list[str], np.ndarray]] = {}
    labels = {r.label for r in records if not r.problem}
    for label in [m for m in dict.fromkeys(order) if m in labels] + sorted(labels - set(order)):
        group = [r for r in records if r.label == label and not r.problem]
        tasks = group[0].tasks
        matrices[label] = (tasks, score_matrix(group, tasks))
        out[label] = {
            "seeds": [r.seed for r in group],
            "n": len(group),
            "final": stats.summarize([r.final["mean"] for r in group], resamples=resamples).to_dict(),
            "max_over_training": stats.summarize([r.max_over_training for r in group], resamples=resamples).to_dict(),
            "per_seed": {str(r.seed): {"final": r.final["mean"], "max_over_training": r.max_over_training,
                                       "skipped_updates": r.skipped_updates, "run": str(r.path),
                                       **({"parts": [str(p) for p in r.parts]} if r.parts else {})}
                         for r in group},
            "per_task": {t: stats.summarize([r.final[t] for r in group], resamples=resamples).to_dict()
                         for t in tasks},
            "curve": stats.aggregate_curves([r.history for r in group]),
            "iqm_curve": stats.iqm_curve([{s: [row[t] for t in tasks] for s, row in r.task_history.items()}
                                          for r in group]),
        }
    for label, extra in runs_x_tasks(matrices, baseline, resamples, backend).items():
        out[label].update(extra)
    return out


def choose_baseline(methods: Sequence[str], asked: str | None) -> str | None:
    """``--baseline`` when given (it must have averaged runs), else ``mtsac`` when present, else none."""
    if asked is None:
        return DEFAULT_BASELINE if DEFAULT_BASELINE in methods else None
    if asked not in methods:
        raise ConfigError("--baseline", f"no averaged runs of '{asked}' (methods: {', '.join(methods) or 'none'})")
    return asked


# ---------------------------------------------------------------------------------------------------------------
# writing
def _pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _score_row(label: str, s: dict[str, float]) -> str:
    sem = f" ± {_pct(s['sem'])}" if not math.isnan(s["sem"]) else ""
    ci = f"[{_pct(s['ci_low'])}, {_pct(s['ci_high'])}]" if not math.isnan(s["ci_low"]) else "–"
    return f"| {label} | {s['n']} | {_pct(s['mean'])}{sem} | {ci} | {_pct(s['iqm'])} |"


def _with_ci(point: float | None, ci: Sequence[float | None], fmt: Any = _pct) -> str:
    """``45.0 [40.1, 50.2]``, or the point alone when the interval is undefined."""
    low, high = ci
    if point is None:
        return "–"
    if low is None or high is None or math.isnan(low):
        return fmt(point)
    return f"{fmt(point)} [{fmt(low)}, {fmt(high)}]"


def _prob(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.2f}"


def rliable_lines(methods: dict[str, dict[str, Any]], baseline: str | None) -> list[str]:
    """The results.md section of the aggregates over runs × tasks."""
    versus = f"P(> {baseline})" if baseline else "P(improvement)"
    lines = ["## Over runs × tasks (final success, %; Agarwal et al. 2021: stratified bootstrap 95 % CI)", "",
             "| method | runs × tasks | " + " | ".join(AGGREGATE_TITLES.values()) + f" | {versus} |",
             "|---|---|" + "---|" * (len(AGGREGATE_TITLES) + 1)]
    for label, v in methods.items():
        b = v["rliable"]
        cells = [_with_ci(b[name], b[f"{name}_ci"]) for name in AGGREGATE_TITLES]
        poi = "baseline" if label == baseline else _with_ci(b["poi"], b["poi_ci"], _prob)
        lines.append(f"| {label} | {b['runs']} × {b['tasks']} | " + " | ".join(cells) + f" | {poi} |")
    if baseline is None:
        lines += ["", f"No probability of improvement: no averaged runs of {DEFAULT_BASELINE} (--baseline METHOD)."]
    return lines


def markdown(root: Path, source: str, methods: dict[str, dict[str, Any]], excluded: Sequence[Run],
             protocol: str, plots: Sequence[str], averaged: Sequence[Run] = (), baseline: str | None = None,
             notes: dict[str, str] | None = None) -> str:
    """``results.md``: headline table, the aggregates over runs × tasks, max over training, per-task table, excluded
    runs, the averaged runs that skipped updates, plots, conventions."""
    head = ("| method | seeds | mean ± SEM | 95 % CI | IQM of seed means |\n|---|---|---|---|---|")
    what = ("the final evaluation of each run (summary.json)" if source == "summary"
            else "the re-evaluation of each run's final checkpoint (eval.json, rl_mtl.evaluate --sweep)")
    lines = [f"# Results: {root}", "", f"Protocol: {protocol}. Scores: {what}.", "",
             "## Success rate at the end of training (%, the reported score; across seed means)", "", head]
    lines += [_score_row(m, v["final"]) for m, v in methods.items()]
    if methods:
        lines += [""] + rliable_lines(methods, baseline)
    lines += ["", "## Max over training (%; best evaluation during training — optimistic, as in the papers' "
              "tables)", "", head]
    lines += [_score_row(m, v["max_over_training"]) for m, v in methods.items()]
    tasks = list(dict.fromkeys(t for v in methods.values() for t in v["per_task"]))
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
    lines += ["", "## What the numbers mean", ""] + [f"- **{k}**: {v}" for k, v in (notes or CONVENTIONS).items()]
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


def protocol_line(records: Sequence[Run]) -> str:
    """The shared protocol of the averaged runs, in one line (env, steps, evaluation episodes, episode length)."""
    run = next((r for r in records if not r.problem and r.cfg is not None), None)
    if run is None or run.cfg is None:
        return "no finished run"
    cfg = run.cfg
    return (f"{run.env or cfg.env}, {cfg.steps} loop steps, {cfg.eval_episodes} evaluation episodes per task, "
            f"{cfg.max_episode_steps}-step episodes, preset {cfg.preset or '?'}")


def report(root: Path, out: Path, source: str = "summary", plots: bool = True,
           resamples: int = stats.RESAMPLES, baseline: str | None = None, backend: str = "numpy") -> dict[str, Any]:
    """Read, check, aggregate and write every output; returns the ``results.json`` content.

    Raises :class:`ConfigError` for a ``--baseline`` without averaged runs.
    """
    records = load_runs(root, source)
    check_configs(records)
    manifest = runs.read_json(root / runs.MANIFEST) or {}
    base = choose_baseline(sorted({r.label for r in records if not r.problem}), baseline)
    methods = aggregate(records, resamples, order=[r["method"] for r in manifest.get("runs", [])], baseline=base,
                        backend=backend)
    excluded = [r for r in records if r.problem]
    averaged = [r for r in records if not r.problem]
    out.mkdir(parents=True, exist_ok=True)
    written = write_plots(out, methods, records, base) if plots and methods else []
    protocol = protocol_line(records)
    notes = conventions(resamples, backend, base)
    result = {
        "root": str(root), "source": source, "protocol": protocol, "conventions": notes,
        "aggregates": {"backend": backend, "resamples": resamples, "seed": 0, "confidence": stats.CONFIDENCE,
                       "baseline": base},
        "methods": methods,
        "excluded": [{"method": r.label, "seed": r.seed, "run": str(r.path), "reason": r.problem} for r in excluded],
        "skipped_updates": [{"method": r.label, "seed": r.seed, "run": str(r.path), "skipped": r.skipped_updates}
                            for r in averaged if r.skipped_updates > 0],
    }
    (out / "results.json").write_text(json.dumps(_finite(result), indent=2))
    write_csv(out / "results.csv", methods)
    (out / "results.md").write_text(markdown(root, source, methods, excluded, protocol, written, averaged, base,
                                             notes))
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


def _fmt(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints the headline table and where the files are."""
    parser = Parser(prog=PROG, description="Tables and plots of a sweep's runs: mean ± SEM and bootstrap CI across "
                    "seeds; IQM, mean, median, optimality gap and probability of improvement over runs × tasks "
                    "with stratified bootstrap CIs (Agarwal et al. 2021); performance profiles.")
    parser.add_argument("dir", help="sweep directory (python -m rl_mtl.sweep --out DIR), any folder of runs or one "
                        "run directory")
    parser.add_argument("--out", help="where to write results.* and the plots (default: DIR)")
    parser.add_argument("--source", choices=("summary", "eval"), default="summary",
                        help="final scores from summary.json (default) or from eval.json (rl_mtl.evaluate --sweep)")
    parser.add_argument("--resamples", type=int, default=stats.RESAMPLES, help="bootstrap resamples (every CI)")
    parser.add_argument("--baseline", help=f"method the probability of improvement of every other method is taken "
                        f"against (default: {DEFAULT_BASELINE} when it has averaged runs)")
    parser.add_argument("--stats", choices=tuple(stats.BACKENDS), default="numpy",
                        help="who computes the statistics over runs × tasks: rl_mtl.stats (numpy, default) or "
                             f"rliable itself ({install_hint('report')})")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    if not root.is_dir():
        fail(PROG, f"DIR: {args.dir} is not a directory")
    if args.resamples < 100:
        fail(PROG, f"--resamples: must be an integer >= 100, got {args.resamples}")
    if args.stats == "rliable":
        try:
            stats.load_rliable()
        except RuntimeError as exc:
            fail(PROG, f"--stats: {exc}; {install_hint('report')}")
    if not runs.find_runs(root) and not (root / runs.MANIFEST).is_file():
        fail(PROG, f"DIR: no runs under {args.dir} (no config.yaml or {runs.STATUS} found)")
    out = Path(args.out).resolve() if args.out else root
    try:
        result = report(root, out, args.source, plots=not args.no_plots, resamples=args.resamples,
                        baseline=args.baseline, backend=args.stats)
    except ConfigError as exc:
        fail(PROG, str(exc))
    for label, v in result["methods"].items():
        s, b = v["final"], v["rliable"]
        poi = (f"; P(> {b['baseline']}) {_fmt(b['poi'])} [{_fmt(b['poi_ci'][0])}, {_fmt(b['poi_ci'][1])}]"
               if b["poi"] is not None else "")
        print(f"{label}: final success {s['mean']:.3f} ± {_fmt(s['sem'])} (SEM, n={s['n']}), "
              f"95% CI [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]; IQM over {b['runs']} runs × {b['tasks']} tasks "
              f"{_fmt(b['iqm'])} [{_fmt(b['iqm_ci'][0])}, {_fmt(b['iqm_ci'][1])}]{poi}")
    for entry in result["excluded"]:
        print(f"left out: {entry['method']} seed {entry['seed']}: {entry['reason']}")
    for entry in result["skipped_updates"]:
        print(f"averaged with skipped updates: {entry['method']} seed {entry['seed']} ({entry['skipped']} skipped)")
    print(f"written {out / 'results.md'}, results.csv, results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
