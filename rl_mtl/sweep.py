"""``python -m rl_mtl.sweep``: train every (method, seed) of a multi-seed comparison, locally or on a Ray cluster.

Examples::

    python -m rl_mtl.sweep --env mt10 --methods mtsac,cagrad,imgrad --seeds 10 --config mt10_cpu --out sweeps/mt10
    python -m rl_mtl.sweep --methods mtsac,imgrad --seeds 10 --backend ray --ray-address auto --num-gpus 0.25

Every run is a plain ``python -m rl_mtl.train`` subprocess writing ``<out>/<method>/seed<k>/`` (same code path and
outputs as a single run; stdout and stderr go to ``train.log`` there), so ``tensorboard --logdir <out>`` shows every
run side by side. Re-running the same command skips finished runs (``summary.json`` at the asked-for step and an
unchanged config), resumes interrupted ones from their checkpoint, and refuses to touch a run directory that holds
a different config. A failing run is reported with its log and does not stop the others. SIGINT/SIGTERM stop the
sweep: running trainings get one SIGTERM, checkpoint and exit, so the next invocation resumes them.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rl_mtl import runs
from rl_mtl.backends import NEW, Outcome, RunSpec, run_local, run_ray
from rl_mtl.cli import Parser, fail
from rl_mtl.config import (METHOD_ALIASES, METHODS, ConfigError, TrainConfig, build_config, is_config_path,
                           parse_set, presets, resolve_preset)
from rl_mtl.train import RESUMABLE

PROG = "python -m rl_mtl.sweep"
RESUME, DONE, CONFLICT = "resume", "done", "conflict"
#: resident memory of one run besides its replay buffer (torch, MuJoCo, K environments), measured ~0.75 GiB on MT10
BASE_RUN_MEMORY = 1 << 30
_SWEEP_KEYS = {"env": "--env", "method": "--methods", "seed": "--seeds/--first-seed", "steps": "--steps"}


@dataclass(frozen=True)
class Planned:
    """A run of the sweep as planned: its label (the method as named on the command line), config and state."""

    label: str
    cfg: TrainConfig
    state: str
    reason: str
    spec: RunSpec


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
                  set_items: Sequence[str]) -> tuple[str, ...]:
    """The ``rl_mtl.train`` command line of a run (a resumed run takes its identity from its saved config)."""
    cmd = [sys.executable, "-m", "rl_mtl.train", "--logdir", str(run), "--steps", str(cfg.steps), "--no-progress"]
    if action == RESUME:
        cmd.append("--resume")
    else:
        name, weighting = split_label(method)
        cmd += ["--env", cfg.env, "--method", name, "--seed", str(cfg.seed), "--config", preset]
        if weighting:
            cmd += ["--weighting", weighting]
    for item in set_items:
        cmd += ["--set", item]
    return tuple(cmd)


def split_label(label: str) -> tuple[str, str | None]:
    """``"imgrad+igbv2"`` → ``("imgrad", "igbv2")`` (a method with a loss weighting); ``"cagrad"`` → ``("cagrad", None)``."""
    method, _, weighting = label.partition("+")
    return method, (weighting or None)


def label_overrides(label: str) -> dict[str, str]:
    """The config options a run label sets: ``method`` and, for ``method+weighting``, ``weighting``."""
    method, weighting = split_label(label)
    return {"method": method, **({"weighting": weighting} if weighting else {})}


def parse_methods(text: str) -> list[str]:
    """``"mtsac,cagrad,imgrad+igbv2"`` → run labels (aliases resolved, duplicates dropped, none empty); a label
    ``method+weighting`` trains ``--method method --weighting weighting``.

    The names are checked by building each run's config, so any name ``rl_mtl.train --method`` takes is accepted.
    """
    out: list[str] = []
    for raw in text.split(","):
        method, weighting = split_label(raw.strip())
        method = METHOD_ALIASES.get(method, method)
        name = f"{method}+{weighting}" if weighting else method
        if not name:
            raise ConfigError("--methods", f"empty method name in '{text}'")
        if name not in out:
            out.append(name)
    return out


def _config(preset: str, overrides: dict[str, Any]) -> TrainConfig:
    """A run's config; an unknown method is reported against the sweep's ``--methods``."""
    try:
        return build_config(preset, overrides)
    except ConfigError as exc:
        if exc.flag in ("--method", "--weighting"):
            raise ConfigError("--methods", str(exc).split(": ", 1)[1]) from None
        raise


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
                        "METHOD+WEIGHTING adds a loss weighting (imgrad+igbv2, imgrad+rlw)")
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds (default 10)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed+seeds-1")
    parser.add_argument("--config", default="mt10", help=f"a preset ({', '.join(presets())}) or the path of a "
                        "YAML file of options")
    parser.add_argument("--steps", type=int, help="loop steps per run (default: the preset's)")
    parser.add_argument("--out", help="sweep directory (default: sweeps/<env>_<config>)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a config option for every run (as rl_mtl.train --set)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local", help="local processes or Ray tasks")
    parser.add_argument("--workers", type=int, help="runs at once (default: what cores and memory allow)")
    parser.add_argument("--ray-address", help="Ray cluster to join (e.g. auto or ray://host:10001); "
                        "default: start a local Ray instance")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per run on Ray (fractions share one)")
    parser.add_argument("--cpus-per-run", type=int, help="CPUs Ray reserves per run (default: torch threads)")
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


def make_plan(args: argparse.Namespace) -> tuple[Path, list[Planned], int, int]:
    """Resolve every run's config and state; returns ``(out, plan, workers, threads)``.

    Raises :class:`ConfigError` naming the flag at fault before anything runs.
    """
    _check_args(args)
    methods = parse_methods(args.methods)
    overrides = parse_set(args.set)
    for key, flag in _SWEEP_KEYS.items():
        if key in overrides:
            raise ConfigError(f"--set {key}", f"is set by the sweep; use {flag}")
    base = {**overrides, "env": args.env, **({"steps": args.steps} if args.steps else {})}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    labelled = [(m, _config(args.config, {**base, **label_overrides(m), "seed": s})) for m in methods for s in seeds]
    config_name = Path(args.config).stem if is_config_path(args.config) else args.config
    out = Path(args.out or Path("sweeps") / f"{args.env.replace(':', '-')}_{config_name}").resolve()
    states = [classify(cfg, runs.run_dir(out, label, cfg.seed)) for label, cfg in labelled]
    todo = sum(state in (NEW, RESUME) for state, _ in states)
    workers, threads = plan_workers(max(todo, 1), available_cores(), available_memory(), run_memory(labelled[0][1]),
                                    args.workers, overrides.get("torch_threads") or None)
    set_items = list(args.set) + ([] if overrides.get("torch_threads") else [f"torch_threads={threads}"])
    plan = []
    for (label, cfg), (state, reason) in zip(labelled, states):
        run = runs.run_dir(out, label, cfg.seed)
        command = train_command(state, run, label, cfg, resolve_preset(args.config), set_items)
        plan.append(Planned(label, cfg, state, reason, RunSpec(label, cfg.seed, run, state, command, threads)))
    return out, plan, workers, threads


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


def _print_outcome(outcome: Outcome) -> None:
    _annotate(outcome)
    line = f"{outcome.method} seed{outcome.seed}: {outcome.status}"
    if outcome.seconds:
        line += f" after {outcome.seconds:.0f} s"
    if outcome.message:
        line += f" ({outcome.message})"
    if outcome.status == "failed":
        line += f"; log: {outcome.run_dir / runs.LOG}"
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 when every run is finished, 1 when some failed or conflict, 130 when interrupted."""
    args = build_parser().parse_args(argv)
    try:
        out, plan, workers, threads = make_plan(args)
    except ConfigError as exc:
        fail(PROG, str(exc))
    counts = collections.Counter(p.state for p in plan)
    print(f"sweep {out}: {len(plan)} runs — {counts[DONE]} finished (skipped), {counts[RESUME]} to resume, "
          f"{counts[NEW]} new, {counts[CONFLICT]} in conflict; backend {args.backend}, {workers} at once, "
          f"{threads} torch thread(s) each", flush=True)
    outcomes = [Outcome(p.label, p.cfg.seed, p.spec.run_dir, "conflict" if p.state == CONFLICT else "skipped",
                        message=p.reason) for p in plan if p.state in (CONFLICT, DONE)]
    for outcome in outcomes:
        if outcome.status == "conflict":
            _print_outcome(outcome)
    specs = [p.spec for p in plan if p.state in (NEW, RESUME)]
    if args.dry_run:
        for spec in specs:
            print(f"{spec.action}: {' '.join(spec.command)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    runs.update_manifest(out, {
        "env": args.env, "config": args.config, "set": list(args.set), "steps": plan[0].cfg.steps,
        "methods": parse_methods(args.methods), "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
        "backend": args.backend, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, [{"method": p.label, "seed": p.cfg.seed, "dir": str(p.spec.run_dir.relative_to(out))} for p in plan])
    if specs:
        if args.backend == "ray":
            cpus = args.cpus_per_run or threads
            try:
                outcomes += run_ray(specs, _print_outcome, args.ray_address, workers * cpus, cpus, args.num_gpus)
            except ImportError:
                fail(PROG, "--backend ray: ray is not installed; pip install -e '.[ray]' (or pip install ray)")
        else:
            outcomes += run_local(specs, workers, _print_outcome)
    final = collections.Counter(o.status for o in outcomes)
    print("done: " + ", ".join(f"{n} {status}" for status, n in sorted(final.items()))
          + f"; report with: python -m rl_mtl.report {out}", flush=True)
    for outcome in outcomes:
        if outcome.status == "failed":
            _annotate(outcome)
            what = f"{outcome.message}; " if outcome.returncode == runs.DIVERGED_EXIT else ""
            print(f"FAILED {outcome.method} seed{outcome.seed}: {what}log {outcome.run_dir / runs.LOG}", flush=True)
    if final["interrupted"] or final["not started"]:
        return 130
    return 1 if final["failed"] or final["conflict"] or final["locked"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
