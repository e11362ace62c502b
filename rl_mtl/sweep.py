"""``python -m rl_mtl.sweep``: train every (method, seed) of a multi-seed comparison, locally or on a Ray cluster.

Examples::

    python -m rl_mtl.sweep --env mt10 --methods mtsac,cagrad,imgrad --seeds 10 --config mt10_cpu --out sweeps/mt10
    python -m rl_mtl.sweep --methods mtsac,imgrad --seeds 10 --backend ray --ray-address auto --num-gpus 0.25
    python -m rl_mtl.sweep --methods mtsac,cagrad --grid combiner.c=0.5,0.9 --seeds 10 --config mt10_cpu
    python -m rl_mtl.sweep --env mt10 --methods mtsac,imgrad,stl --seeds 10 --config mt10_cpu --track

Every run is a plain ``python -m rl_mtl.train`` subprocess writing ``<out>/<label>/seed<k>/`` (same code path and
outputs as a single run; stdout and stderr go to ``train.log`` there), so ``tensorboard --logdir <out>`` shows every
run side by side. A label is a method (``cagrad``), a method with a loss weighting (``imgrad+igbv2``), either with
one point of an option grid (``cagrad[c=0.5]``), or ``stl``: one single-task ``mt1:<task>`` run per task of the
benchmark, ``<out>/stl/seed<k>/<task>/``, which ``rl_mtl.report`` scores together as one multi-task run.

Re-running the same command skips finished runs (``summary.json`` at the asked-for step and an unchanged config),
resumes interrupted ones from their checkpoint, and refuses to touch a run directory that holds
a different config. A failing run is reported with its log and does not stop the others. SIGINT/SIGTERM stop the
sweep: running trainings get one SIGTERM, checkpoint and exit, so the next invocation resumes them.
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rl_mtl import runs
from rl_mtl.backends import NEW, Outcome, RunSpec, run_local, run_ray
from rl_mtl.cli import Parser, fail, install_hint, program_name
from rl_mtl.config import (METHODS, ConfigError, TrainConfig, build_config, is_config_path, parse_set, presets,
                           resolve_preset)
from rl_mtl.grid import (STL, SWEEP_KEYS, GridAxis, grid_applies, grid_points, label_overrides, parse_grid,
                         parse_methods, split_label, with_point)
from rl_mtl.train import RESUMABLE

PROG = program_name("rl_mtl.sweep")  # rl-mtl-sweep when run by that console script
RESUME, DONE, CONFLICT = "resume", "done", "conflict"
#: resident memory of one run besides its replay buffer (torch, MuJoCo, K environments), measured ~0.75 GiB on MT10
BASE_RUN_MEMORY = 1 << 30


@dataclass(frozen=True)
class Planned:
    """A run of the sweep as planned: its label (its directory under the sweep root, the report's group), config
    and state; ``task`` names an ``stl`` run's task, ``options`` the grid point (``{"combiner.c": "0.5"}``)."""

    label: str
    cfg: TrainConfig
    state: str
    reason: str
    spec: RunSpec
    task: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """How the console names the run: ``cagrad[c=0.5] seed3``, ``stl seed0 reach-v3``."""
        return f"{self.label} seed{self.cfg.seed}" + (f" {self.task}" if self.task else "")


@dataclass
class SweepPlan:
    """Everything ``main`` needs: the sweep directory, its runs, how many at once, and notes for the console."""

    out: Path
    runs: list[Planned]
    workers: int
    threads: int
    grid: list[GridAxis] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# planning: what each run directory holds and what to do with it
def changed_fields(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """Options whose values differ between a saved run config and the one asked for."""
    a, b = saved.to_dict(), wanted.to_dict()
    return [name for name in a if name != "preset" and a[name] != b.get(name)]


def classify(cfg: TrainConfig, run: Path) -> tuple[str, str]:
    """``(state, reason)`` of a run directory for config ``cfg``: new, resume, done or conflict."""
    has_checkpoint = runs.checkpoint_path(run).is_file()
    saved = runs.read_config(run)
    if saved is None:
        if has_checkpoint:
            return CONFLICT, f"{run} has a checkpoint but no readable {runs.CONFIG}"
        return NEW, ""
    frozen = [name for name in changed_fields(saved, cfg) if name not in RESUMABLE]
    if frozen:
        name = frozen[0]
        return CONFLICT, (f"{run} holds a run with {name}={saved.to_dict()[name]!r}, not {cfg.to_dict()[name]!r}; "
                          "use another --out or remove it")
    summary = runs.read_json(run / runs.SUMMARY)
    final_step = summary.get("final_step") if summary else None
    diverged = runs.diverged_reason(summary) is not None  # retried, never skipped as done
    if final_step == cfg.steps and not diverged:
        return DONE, ""
    if isinstance(final_step, int) and final_step > cfg.steps:
        return CONFLICT, f"{run} was trained to {final_step} steps, more than --steps {cfg.steps}"
    if has_checkpoint:
        return RESUME, ""
    return NEW, ""


def train_command(action: str, run: Path, method: str, cfg: TrainConfig, preset: str,
                  set_items: Sequence[str], tracking: Sequence[str] = ()) -> tuple[str, ...]:
    """The ``rl_mtl.train`` command line of a run (a resumed run takes its identity from its saved config).

    ``method`` is the label without a grid point (``imgrad+igbv2``; ``stl`` trains ``mtsac`` on ``cfg.env``), the
    grid point comes in ``set_items`` like any ``--set``; ``tracking`` is the W&B flags, passed on resume too.
    """
    cmd = [sys.executable, "-m", "rl_mtl.train", "--logdir", str(run), "--steps", str(cfg.steps), "--no-progress"]
    if action == RESUME:
        cmd.append("--resume")
    else:
        name, weighting_name = split_label(method)
        cmd += ["--env", cfg.env, "--method", "mtsac" if name == STL else name, "--seed", str(cfg.seed),
                "--config", preset]
        if weighting_name:
            cmd += ["--weighting", weighting_name]
    for item in set_items:
        cmd += ["--set", item]
    return tuple(cmd) + tuple(tracking)


def tracking_flags(args: argparse.Namespace, out: Path) -> list[str]:
    """The W&B flags of every run's training: ``--track`` with the sweep's project and entity, grouped by the sweep
    directory's name unless ``--wandb-group`` says otherwise; none without ``--track``."""
    if not args.track:
        given = next((flag for flag, value in (("--wandb-project", args.wandb_project),
                                               ("--wandb-entity", args.wandb_entity),
                                               ("--wandb-group", args.wandb_group)) if value), None)
        if given:
            raise ConfigError(given, "only applies with --track")
        return []
    flags = ["--track"]
    for flag, value in (("--wandb-project", args.wandb_project), ("--wandb-entity", args.wandb_entity)):
        if value:
            flags += [flag, value]
    return flags + ["--wandb-group", args.wandb_group or out.name]


def _config(preset: str, overrides: dict[str, Any], grid: Sequence[GridAxis] = ()) -> TrainConfig:
    """A run's config; an unknown method is reported against the sweep's ``--methods``, a bad grid value against
    ``--grid``."""
    try:
        return build_config(preset, overrides)
    except ConfigError as exc:
        message = str(exc).split(": ", 1)[1]
        if exc.flag in ("--method", "--weighting"):
            raise ConfigError("--methods", message) from None
        if exc.flag in {f"--set {axis.key}" for axis in grid}:
            raise ConfigError(f"--grid {exc.flag[len('--set '):]}", message) from None
        raise


def stl_tasks(env: str) -> tuple[str, ...]:
    """The tasks of benchmark ``env`` in the benchmark's own order (``metaworld.MT10(seed).train_classes`` is
    ``MT10_V3``; likewise MT50), one ``stl`` run each; a :class:`ConfigError` for ``mt1:<task>``."""
    if env not in ("mt10", "mt50"):
        raise ConfigError("--methods", f"stl trains one mt1:<task> run per task of --env mt10 or mt50; with --env "
                          f"{env} it would be the single-task run itself (use --methods mtsac)")
    from metaworld.env_dict import MT10_V3, MT50_V3  # metaworld takes ~1 s to import: only for stl

    return tuple(MT10_V3 if env == "mt10" else MT50_V3)


# ---------------------------------------------------------------------------------------------------------------
# resources: how many runs at once and how many torch threads each
def available_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory() -> int | None:
    """``MemAvailable`` in bytes (Linux), or ``None`` when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_memory(cfg: TrainConfig) -> int:
    """Estimated resident bytes of one run: a fixed base plus its float32 replay (obs, next obs, action, reward, done)."""
    obs_dim = 39 + (10 if cfg.env == "mt10" else 50 if cfg.env == "mt50" else 1) * cfg.one_hot
    return BASE_RUN_MEMORY + cfg.buffer_size * (2 * obs_dim + 4 + 2) * 4


def plan_workers(runs_to_do: int, cores: int, memory: int | None, per_run: int, workers: int | None,
                 threads: int | None) -> tuple[int, int]:
    """``(workers, torch threads per run)``: by default as many runs as cores and memory allow, and the cores
    shared among them (one thread each when runs ≥ cores, which is the efficient regime for small networks)."""
    if workers is None:
        by_memory = max(1, memory // per_run) if memory else runs_to_do
        workers = max(1, min(runs_to_do, cores // (threads or 1), by_memory))
    return workers, threads or max(1, cores // workers)


# ---------------------------------------------------------------------------------------------------------------
# command line
def build_parser() -> argparse.ArgumentParser:
    """The sweep's command line."""
    parser = Parser(prog=PROG, description="Train every (method, seed) of a comparison; local processes or Ray.",
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog="examples:" + __doc__.split("Examples::")[1].split("Every run")[0].rstrip())
    parser.add_argument("--env", default="mt10", help="mt10 | mt50 | mt1:<task> (default mt10)")
    parser.add_argument("--methods", default="mtsac", help=f"comma-separated, from: {', '.join(METHODS)}; "
                        "METHOD+WEIGHTING adds a loss weighting (imgrad+igbv2, imgrad+rlw); stl: single-task SAC, "
                        "one mt1:<task> run per task of --env mt10|mt50 (in <out>/stl/seed<k>/<task>/), scored by "
                        "the report as one multi-task run")
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds (default 10)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed+seeds-1")
    parser.add_argument("--config", default="mt10", help=f"a preset ({', '.join(presets())}) or the path of a "
                        "YAML file of options")
    parser.add_argument("--steps", type=int, help="loop steps per run (default: the preset's). A loop step steps "
                        "every task's env once, so an MT10 run of N steps and each stl run of N steps give every "
                        "task N env steps: the same data per task (an stl run's updates sample only its task, "
                        "batch_size transitions each, from a replay of buffer_size)")
    parser.add_argument("--out", help="sweep directory (default: sweeps/<env>_<config>)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a config option for every run (as rl_mtl.train --set)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="an option grid: every method that has option KEY (combiner.NAME, weighting.NAME, "
                        "combine, weighted) runs once per value, as its own label (cagrad[c=0.5]); several --grid "
                        "make the product (cagrad[c=0.5,hold=50]; the full key when two share their last part); "
                        "values are parsed like --set, a list in brackets (weighting.hidden_sizes=[64,64],[128,128])")
    parser.add_argument("--backend", choices=("local", "ray"), default="local", help="local processes or Ray tasks")
    parser.add_argument("--workers", type=int, help="runs at once (default: what cores and memory allow)")
    parser.add_argument("--ray-address", help="Ray cluster to join (e.g. auto or ray://host:10001); "
                        "default: start a local Ray instance")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per run on Ray (fractions share one)")
    parser.add_argument("--cpus-per-run", type=int, help="CPUs Ray reserves per run (default: torch threads)")
    parser.add_argument("--track", action="store_true", help="log every run to Weights & Biases as well "
                        "(rl_mtl.train --track), grouped by the sweep directory's name")
    parser.add_argument("--wandb-project", help="W&B project of the runs (with --track)")
    parser.add_argument("--wandb-entity", help="W&B entity (user or team) of the runs (with --track)")
    parser.add_argument("--wandb-group", help="W&B group of the runs (with --track; default: the sweep "
                        "directory's name)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """Range checks of the sweep's own flags."""
    for flag, value, low in (("--seeds", args.seeds, 1), ("--first-seed", args.first_seed, 0),
                             ("--workers", args.workers, 1), ("--steps", args.steps, 1),
                             ("--cpus-per-run", args.cpus_per_run, 1)):
        if value is not None and value < low:
            raise ConfigError(flag, f"must be an integer >= {low}, got {value}")
    if args.num_gpus < 0:
        raise ConfigError("--num-gpus", f"must be >= 0, got {args.num_gpus}")


def make_plan(args: argparse.Namespace) -> SweepPlan:
    """Resolve every run's label, config and state (method × grid point × seed; ``stl``: seed × task).

    Raises :class:`ConfigError` naming the flag at fault before anything runs.
    """
    _check_args(args)
    methods = parse_methods(args.methods)
    overrides = parse_set(args.set)
    for key, flag in SWEEP_KEYS.items():
        if key in overrides:
            raise ConfigError(f"--set {key}", f"is set by the sweep; use {flag}")
    if STL in methods and overrides.get("weighting", "none") != "none":
        raise ConfigError("--set weighting", "stl is plain SAC on each task and takes no loss weighting; give the "
                          "other methods theirs as METHOD+WEIGHTING labels")
    grid = parse_grid(args.grid, overrides)
    base = {**overrides, "env": args.env, **({"steps": args.steps} if args.steps else {})}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    config_name = Path(args.config).stem if is_config_path(args.config) else args.config
    out = Path(args.out or Path("sweeps") / f"{args.env.replace(':', '-')}_{config_name}").resolve()
    # (label, method label, grid options, task, config) of every run
    wanted: list[tuple[str, str, dict[str, str], str | None, TrainConfig]] = []
    for method in methods:
        if method == STL:
            tasks = stl_tasks(args.env)
            _config(args.config, {**base, "seed": seeds[0]})  # a bad --env or --set is reported as for the others
            stl = [(STL, STL, {}, task, _config(args.config, {**base, "env": f"mt1:{task}", "method": "mtsac",
                                                               "seed": s})) for s in seeds for task in tasks]
            if stl[0][-1].weighting != "none":  # from a YAML --config: the train command would not undo it
                raise ConfigError("--config", f"{args.config} sets weighting {stl[0][-1].weighting}, but stl is "
                                  "plain SAC on each task; set the weighting by METHOD+WEIGHTING labels instead")
            wanted += stl
            continue
        _config(args.config, {**base, **label_overrides(method), "seed": seeds[0]})  # the method exists
        for label, options in grid_points(method, grid):
            wanted += [(label, method, options, None,
                        _config(args.config, {**with_point(base, options), **label_overrides(method), "seed": s},
                                grid)) for s in seeds]
    for axis in grid:
        if not any(options.get(axis.key) is not None for _, _, options, _, _ in wanted):
            raise ConfigError(f"--grid {axis.key}", f"no method of --methods ({', '.join(methods)}) has this option")
    notes = [f"--grid {axis.key} does not apply to {', '.join(without)}: they run once without it"
             for axis in grid if (without := [m for m in methods if not grid_applies(axis.key, m)])]
    from rl_mtl.routing import weighting_warning  # torch: only once the input is valid

    notes += list(dict.fromkeys(f"{label}: {warning.removeprefix('warning: ')}" for label, _, _, _, cfg in wanted
                                if (warning := weighting_warning(cfg)) is not None))
    dirs = [runs.run_dir(out, label, cfg.seed, task) for label, _, _, task, cfg in wanted]
    states = [classify(cfg, run) for (_, _, _, _, cfg), run in zip(wanted, dirs)]
    todo = sum(state in (NEW, RESUME) for state, _ in states)
    workers, threads = plan_workers(max(todo, 1), available_cores(), available_memory(),
                                    max(run_memory(cfg) for *_, cfg in wanted), args.workers,
                                    overrides.get("torch_threads") or None)
    set_items = list(args.set) + ([] if overrides.get("torch_threads") else [f"torch_threads={threads}"])
    tracking = tracking_flags(args, out)
    plan = []
    for (label, method, options, task, cfg), run, (state, reason) in zip(wanted, dirs, states):
        items = [f"{key}={value}" for key, value in options.items()] + set_items
        command = train_command(state, run, method, cfg, resolve_preset(args.config), items, tracking)
        plan.append(Planned(label, cfg, state, reason, RunSpec(label, cfg.seed, run, state, command, threads),
                            task, options))
    return SweepPlan(out, plan, workers, threads, grid, notes)


def manifest_entries(out: Path, plan: Sequence[Planned]) -> list[dict[str, Any]]:
    """``sweep.json``'s ``runs``: one entry per run (each stl task a run) with its label as ``method``, its
    directory, and the task or grid options where it has them."""
    entries = []
    for p in plan:
        entry: dict[str, Any] = {"method": p.label, "seed": p.cfg.seed,
                                 "dir": p.spec.run_dir.relative_to(out).as_posix()}
        if p.task:
            entry["task"] = p.task
        if p.options:
            entry["options"] = dict(p.options)
        entries.append(entry)
    return entries


def label_counts(plan: Sequence[Planned]) -> str:
    """``mtsac (2 seeds), stl (2 seeds × 10 tasks)``: the labels in plan order, for the console."""
    seeds: dict[str, set[int]] = collections.defaultdict(set)
    tasks: dict[str, set[str]] = collections.defaultdict(set)
    for p in plan:
        seeds[p.label].add(p.cfg.seed)
        if p.task:
            tasks[p.label].add(p.task)
    return ", ".join(f"{label} ({len(seeds[label])} seed{'s' * (len(seeds[label]) > 1)}"
                     + (f" × {len(tasks[label])} tasks" if tasks[label] else "") + ")" for label in seeds)


def diverged_message(run: Path) -> str:
    """``diverged at step N: <reason> (exit 3)`` from a run's summary.json (written when the trainer stops on
    divergence)."""
    reason = runs.diverged_reason(runs.read_json(run / runs.SUMMARY)) or "diverged"
    return f"{reason} (exit {runs.DIVERGED_EXIT})"


def _annotate(outcome: Outcome) -> None:
    """A failure with the trainer's divergence status says so (once; the local and Ray backends both report here)."""
    if (outcome.status == "failed" and outcome.returncode == runs.DIVERGED_EXIT
            and not outcome.message.startswith("diverged")):
        outcome.message = diverged_message(outcome.run_dir)


def _print_outcome(outcome: Outcome, names: dict[Path, str] | None = None) -> None:
    """One console line per finished, failed, skipped or conflicting run (``names``: how to call each run dir)."""
    _annotate(outcome)
    line = f"{_name(outcome, names)}: {outcome.status}"
    if outcome.seconds:
        line += f" after {outcome.seconds:.0f} s"
    if outcome.message:
        line += f" ({outcome.message})"
    if outcome.status == "failed":
        line += f"; log: {outcome.run_dir / runs.LOG}"
    print(line, flush=True)


def _name(outcome: Outcome, names: dict[Path, str] | None) -> str:
    """``cagrad[c=0.5] seed3`` or, for an stl run, ``stl seed0 reach-v3``."""
    return (names or {}).get(outcome.run_dir) or f"{outcome.method} seed{outcome.seed}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 when every run is finished, 1 when some failed or conflict, 130 when interrupted."""
    args = build_parser().parse_args(argv)
    try:
        sweep_plan = make_plan(args)
    except ConfigError as exc:
        fail(PROG, str(exc))
    out, plan, workers, threads = sweep_plan.out, sweep_plan.runs, sweep_plan.workers, sweep_plan.threads
    names = {p.spec.run_dir: p.name for p in plan}

    def report(outcome: Outcome) -> None:
        _print_outcome(outcome, names)

    counts = collections.Counter(p.state for p in plan)
    print(f"sweep {out}: {len(plan)} runs — {counts[DONE]} finished (skipped), {counts[RESUME]} to resume, "
          f"{counts[NEW]} new, {counts[CONFLICT]} in conflict; backend {args.backend}, {workers} at once, "
          f"{threads} torch thread(s) each", flush=True)
    print(f"labels: {label_counts(plan)}", flush=True)
    for note in sweep_plan.notes:
        print(f"note: {note}", flush=True)
    outcomes = [Outcome(p.label, p.cfg.seed, p.spec.run_dir, "conflict" if p.state == CONFLICT else "skipped",
                        message=p.reason) for p in plan if p.state in (CONFLICT, DONE)]
    for outcome in outcomes:
        if outcome.status == "conflict":
            report(outcome)
    specs = [p.spec for p in plan if p.state in (NEW, RESUME)]
    if args.dry_run:
        for spec in specs:
            print(f"{spec.action}: {shlex.join(spec.command)}")  # quoted: a grid label holds [ and ]
        return 0
    out.mkdir(parents=True, exist_ok=True)
    entry = {
        "env": args.env, "config": args.config, "set": list(args.set), "steps": plan[0].cfg.steps,
        "methods": parse_methods(args.methods), "labels": list(dict.fromkeys(p.label for p in plan)),
        "grid": {axis.key: list(axis.values) for axis in sweep_plan.grid},
        "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
        "backend": args.backend, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.track:
        entry["wandb"] = {"project": args.wandb_project, "entity": args.wandb_entity,
                          "group": args.wandb_group or out.name}
    runs.update_manifest(out, entry, manifest_entries(out, plan))
    if specs:
        if args.backend == "ray":
            cpus = args.cpus_per_run or threads
            try:
                outcomes += run_ray(specs, report, args.ray_address, workers * cpus, cpus, args.num_gpus)
            except ImportError:
                fail(PROG, f"--backend ray: ray is not installed; {install_hint('ray')}")
        else:
            outcomes += run_local(specs, workers, report)
    final = collections.Counter(o.status for o in outcomes)
    print("done: " + ", ".join(f"{n} {status}" for status, n in sorted(final.items()))
          + f"; report with: python -m rl_mtl.report {out}", flush=True)
    for outcome in outcomes:
        if outcome.status == "failed":
            _annotate(outcome)
            what = f"{outcome.message}; " if outcome.returncode == runs.DIVERGED_EXIT else ""
            print(f"FAILED {_name(outcome, names)}: {what}log {outcome.run_dir / runs.LOG}", flush=True)
    if final["interrupted"] or final["not started"]:
        return 130
    return 1 if final["failed"] or final["conflict"] or final["locked"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
