"""Finding and loading a sweep's runs (an stl seed's task runs combined into one) and the config-consistency check
that leaves out runs of another protocol: what ``rl_mtl.report`` reads, kept apart from how it aggregates and writes."""

from __future__ import annotations

import collections
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rl_mtl import runs
from rl_mtl.config import TrainConfig

#: options that do not change what a run measures (hardware, logging, bookkeeping; the number of rollout workers
#: changes which process steps an env, never a transition). ``rollout`` is not among them: with ``async`` the update
#: made during step t samples a replay without transition t (one step stale), a different protocol from ``sync``
IGNORED = frozenset({"seed", "device", "torch_threads", "preset", "log_every", "checkpoint_every", "save_replay",
                     "vector_strategy", "diag_every", "workers", "compile"})
#: options that make a method what it is: they may differ between methods, not between seeds of one method
METHOD_FIELDS = frozenset({"method", "combiner", "combine", "weighting", "weighting_opts", "weighted"})
#: the label of single-task SAC: one ``mt1:<task>`` run per task, ``<root>/stl/seed<k>/<task>/`` (rl_mtl.sweep)
STL = "stl"
_SEED_DIR = re.compile(r"seed(\d+)")
#: the benchmarks an stl seed can stand for
STL_BENCHMARKS = ("mt10", "mt50")


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
    task_history: dict[int, dict[str, float]] = field(default_factory=dict)
    """Success per task at each evaluation that scored every task (summary.json's history, else evals.jsonl)."""
    skipped_updates: int = 0
    """Updates of a finished run that skipped an optimiser step for a non-finite loss or gradient (noted, averaged)."""
    problem: str = ""
    env: str = ""
    """The benchmark the run is scored on when it is not ``cfg.env``: an stl seed's ``mt10``/``mt50``."""
    parts: list[Path] = field(default_factory=list)
    """An stl seed: the single-task run directories it combines (empty for every other run)."""

    @property
    def tasks(self) -> list[str]:
        """The tasks of the final score, in its order."""
        return [k for k in self.final if k != "mean"]


# ---------------------------------------------------------------------------------------------------------------
# reading
def _label(root: Path, path: Path, cfg: TrainConfig | None) -> str:
    """The method group of a run: its parent directory under the sweep root (``<method>``); a run directly under the
    root, or the root itself (a single run directory), by its method."""
    if path == root or path.parent == root:
        return cfg.method if cfg else path.name
    return path.parent.relative_to(root).as_posix()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file, skipping a line a killed run left half written."""
    rows: list[dict[str, Any]] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


def task_history(path: Path, summary: dict[str, Any], tasks: Sequence[str]) -> dict[int, dict[str, float]]:
    """``{step: {task: success}}`` of a run's evaluations that scored every task: summary.json's history, else
    evals.jsonl (a step evaluated twice, by a resumed run, keeps the last)."""
    rows = summary.get("history") or []
    if not any(all(t in row for t in tasks) for row in rows):
        rows = _read_jsonl(path / "evals.jsonl")
    return {int(row["step"]): {t: float(row[t]) for t in tasks} for row in rows if all(t in row for t in tasks)}


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
    run.task_history = task_history(path, summary, run.tasks)
    run.skipped_updates = int(summary.get("skipped_updates") or 0)
    if source == "eval":
        evaluation = runs.read_json(path / runs.EVAL)
        if evaluation is None or evaluation.get("step") != summary["final_step"]:
            run.problem = (f"no {runs.EVAL} of its final checkpoint "
                           f"(python -m rl_mtl.evaluate --sweep {root} --seeds N)")
        else:
            run.final = {k: float(v) for k, v in evaluation["success"].items()}
    return run


def stl_part(root: Path, path: Path) -> tuple[int, str | None] | None:
    """``(seed, task)`` when ``path`` is ``<root>/stl/seed<k>/<task>`` (``(seed, None)`` for ``<root>/stl/seed<k>``,
    how a manifest may name a whole seed), else None."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return None
    match = _SEED_DIR.fullmatch(parts[1]) if len(parts) in (2, 3) and parts[0] == STL else None
    if match is None:
        return None
    return int(match.group(1)), parts[2] if len(parts) == 3 else None


def stl_tasks(benchmark: str) -> tuple[str, ...]:
    """The tasks of ``mt10``/``mt50`` in the benchmark's order (``metaworld.MT10(seed).train_classes`` order)."""
    from metaworld.env_dict import MT10_V3, MT50_V3  # ~1 s to import: only when a sweep holds stl runs

    return tuple(MT10_V3 if benchmark == "mt10" else MT50_V3)


def stl_benchmark(manifest_env: str | None, found: set[str]) -> str:
    """The benchmark stl seeds stand for: the sweep's ``--env`` when it is one, else MT10 when every task run found
    is an MT10 task."""
    if manifest_env in STL_BENCHMARKS:
        return str(manifest_env)
    return "mt10" if found <= set(stl_tasks("mt10")) else "mt50"


def _task_score(run: Run, task: str) -> float:
    """An mt1 run's success on its task (its final score names the task, or only the mean: the same number)."""
    return run.final.get(task, run.final["mean"])


def combine_stl(path: Path, seed: int, parts: dict[str, Run], tasks: Sequence[str], benchmark: str) -> Run:
    """One seed of single-task SAC scored as one multi-task run: task k's success (final, per evaluation step) from
    the ``mt1:<task>`` run of task k. Left out, with every reason, unless each task of the benchmark has exactly one
    finished run trained on its own task, all with one config apart from ``env``."""
    run = Run(STL, seed, path, env=benchmark, parts=[parts[t].path for t in tasks if t in parts])
    problems = [f"{t}: {parts[t].problem}" for t in tasks if t in parts and parts[t].problem]
    missing = [t for t in tasks if t not in parts]
    if missing:
        problems.insert(0, f"no run of {len(missing)} of its {len(tasks)} {benchmark} tasks ({', '.join(missing)})")
    extra = sorted(set(parts) - set(tasks))
    if extra:
        problems.append(f"runs of tasks outside {benchmark}: {', '.join(extra)}")
    usable = {t: parts[t] for t in tasks if t in parts and not parts[t].problem}
    problems += [f"{t}: trained on env {r.cfg.env}, not mt1:{t}" for t, r in usable.items()
                 if r.cfg is not None and r.cfg.env != f"mt1:{t}"]
    reasons = config_outliers([r.cfg.to_dict() for r in usable.values()], IGNORED | {"env"})  # type: ignore[union-attr]
    problems += [f"{t}: {reason}" for t, reason in zip(usable, reasons) if reason]
    if not parts:
        run.problem = "missing (never started)"
    elif problems:
        run.problem = f"incomplete {STL} seed (one mt1 run per {benchmark} task): " + "; ".join(problems)
    if run.problem:
        return run
    run.cfg = usable[tasks[0]].cfg
    run.final = {t: _task_score(usable[t], t) for t in tasks}
    run.final["mean"] = float(np.mean([run.final[t] for t in tasks]))
    curves = {t: dict(usable[t].history) for t in tasks}
    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    run.task_history = {step: {t: curves[t][step] for t in tasks} for step in steps}
    run.history = [(step, float(np.mean(list(row.values())))) for step, row in run.task_history.items()]
    # the best evaluation of the ten together at one step, as a multi-task run's max over training is
    run.max_over_training = max([run.final["mean"]] + [mean for _, mean in run.history])
    run.skipped_updates = sum(r.skipped_updates for r in usable.values())
    return run


def load_runs(root: Path, source: str) -> list[Run]:
    """Every run under ``root`` (an stl seed's task runs combined into one), plus those ``sweep.json`` asked for that
    never started (listed as missing)."""
    manifest = runs.read_json(root / runs.MANIFEST) or {}
    found: list[Run] = []
    stl: dict[int, dict[str, Run]] = collections.defaultdict(dict)
    for path in runs.find_runs(root):
        where = stl_part(root, path)
        if where is not None and where[1] is not None:
            stl[where[0]][where[1]] = load_run(root, path, source)
        else:
            found.append(load_run(root, path, source))
    seen = {r.path for r in found}
    stl_seeds = set(stl)
    for entry in manifest.get("runs", []):
        path = root / entry["dir"]
        where = stl_part(root, path)
        if where is not None:
            stl_seeds.add(where[0])
        elif path not in seen:
            found.append(Run(entry["method"], int(entry["seed"]), path, problem="missing (never started)"))
    if stl_seeds:
        benchmark = stl_benchmark(manifest.get("env"), {task for parts in stl.values() for task in parts})
        tasks = stl_tasks(benchmark)
        found += [combine_stl(root / STL / f"seed{seed}", seed, stl.get(seed, {}), tasks, benchmark)
                  for seed in sorted(stl_seeds)]
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


def protocol_config(run: Run) -> dict[str, Any]:
    """The run's config as the protocol check compares it: an stl seed's runs (``mt1:<task>`` each) count as the
    benchmark they are scored on."""
    values = run.cfg.to_dict() if run.cfg is not None else {}
    if run.env:
        values["env"] = run.env
    return values


def check_configs(records: Sequence[Run]) -> None:
    """Mark runs whose protocol differs from the majority, then runs whose method options differ within a method."""
    usable = [r for r in records if not r.problem and r.cfg is not None]
    reasons = config_outliers([protocol_config(r) for r in usable], IGNORED | METHOD_FIELDS)
    for run, reason in zip(usable, reasons):
        run.problem = reason
    for label in sorted({r.label for r in usable}):
        group = [r for r in usable if r.label == label and not r.problem]
        for run, reason in zip(group, config_outliers([protocol_config(r) for r in group], IGNORED)):
            run.problem = reason
