"""Rewrite this folder's results.* with the current ``rl_mtl.report``, from the scores results.json itself holds.

The sweep's run directories (``/work/runs/sweep_cpu``) are not in the repository. Its results.json keeps, per method,
every seed's final and max-over-training mean success and every task's mean and SEM over the 3 seeds; with 5
evaluation episodes per task (success in steps of 1/5) those fix each run's per-task final scores uniquely
(:func:`final_matrix` checks it). The runs are rebuilt from them (config.yaml, summary.json) in a temporary folder
and reported with ``--no-plots``: the learning curves need the runs' histories, so curves.png stays the original
report's. Run from the checkout: ``python docs/sweep_mt10_cpu/rebuild.py``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np

from rl_mtl import runs
from rl_mtl.config import build_config, save_config
from rl_mtl.report import main as report_main

HERE = Path(__file__).resolve().parent
#: success-rate steps of one task's evaluation (5 episodes)
LEVELS = np.arange(6) / 5


def final_matrix(method: dict, tol: float = 1e-9) -> tuple[list[str], np.ndarray]:
    """``(tasks, (seeds, tasks) final success)``: the one matrix on the 1/5 grid with these per-task means and SEMs
    (ddof=1) and these per-seed means; ``ValueError`` when there is none or more than one."""
    seeds = [str(s) for s in method["seeds"]]
    tasks = list(method["per_task"])
    n = len(seeds)
    columns = []
    for task in tasks:
        want = method["per_task"][task]
        columns.append([c for c in itertools.product(LEVELS, repeat=n)
                        if abs(np.mean(c) - want["mean"]) < tol
                        and abs(np.std(c, ddof=1) / math.sqrt(n) - want["sem"]) < tol])
    seed_means = np.array([method["per_seed"][s]["final"] for s in seeds])
    found = [np.array(cols).T for cols in itertools.product(*columns)
             if np.allclose(np.array(cols).T.mean(axis=1), seed_means, atol=tol, rtol=0)]
    if len(found) != 1:
        raise ValueError(f"{len(found)} per-task matrices fit the stored scores, not one")
    return tasks, found[0]


def rebuild_runs(result: dict, root: Path) -> None:
    """One run directory per (method, seed) under ``root`` with the stored protocol and scores, and a ``sweep.json``
    that lists them in the stored method order (the report's order)."""
    env, steps, episodes, length, preset = re.fullmatch(
        r"(\S+), (\d+) loop steps, (\d+) evaluation episodes per task, (\d+)-step episodes, preset (\S+)",
        result["protocol"]).groups()
    entries = []
    for label, method in result["methods"].items():
        tasks, x = final_matrix(method)
        for i, seed in enumerate(method["seeds"]):
            run = root / label / f"seed{seed}"
            run.mkdir(parents=True)
            cfg = build_config(preset, {"env": env, "method": label, "seed": seed, "steps": int(steps),
                                        "eval_episodes": int(episodes), "max_episode_steps": int(length)})
            save_config(cfg, run / "config.yaml")
            final = {t: float(v) for t, v in zip(tasks, x[i])}
            summary = {"final_step": int(steps), "final": {**final, "mean": float(x[i].mean())},
                       "max_over_training": method["per_seed"][str(seed)]["max_over_training"], "history": []}
            (run / "summary.json").write_text(json.dumps(summary))
            entries.append({"method": label, "seed": seed, "dir": f"{label}/seed{seed}"})
    runs.write_json(root / runs.MANIFEST, {"env": env, "runs": entries})


def main() -> None:
    """Rebuild the runs, report them into this folder, and name the sweep's own root in the outputs."""
    result = runs.read_json(HERE / "results.json")
    original = result["root"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve() / "sweep_cpu"
        rebuild_runs(result, root)
        assert report_main([str(root), "--out", str(HERE), "--no-plots"]) == 0
        for name in ("results.json", "results.md"):
            path = HERE / name
            path.write_text(path.read_text().replace(str(root), original))
    md = HERE / "results.md"
    title, rest = md.read_text().split("\n", 1)
    md.write_text(f"{title}\n\n> Rebuilt with `python docs/sweep_mt10_cpu/rebuild.py`: the current `rl_mtl.report` "
                  "on the per-run, per-task final scores of the original results.json (the run directories are not "
                  "in the repository). Learning curves from the original runs:\n>\n> ![curves](curves.png)\n"
                  + rest)


if __name__ == "__main__":
    main()
