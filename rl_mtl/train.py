"""``python -m rl_mtl.train``: parse the command line, resolve the config, run the :class:`~rl_mtl.trainer.Trainer`.

Examples::

    python -m rl_mtl.train --env mt10 --method mtsac --config mt10_cpu --steps 20000 --seed 1
    python -m rl_mtl.train --env mt1:reach-v3 --config mt10_cpu --set hidden_sizes=64,64 --set batch_size=64
    python -m rl_mtl.train --logdir runs/mt10_mtsac_seed1 --resume
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from rl_mtl import checkpoint, runs, tracking
from rl_mtl.cli import Parser, error, fail, program_name
from rl_mtl.config import (
    METHODS,
    WEIGHTING_METHODS,
    ConfigError,
    TrainConfig,
    build_config,
    field_names,
    load_config_file,
    method_help,
    parse_set,
    presets,
    resolve_preset,
)

PROG = program_name("rl_mtl.train")  # rl-mtl-train when run by that console script
#: the preset of a run started without --config
DEFAULT_PRESET = "mt10"
#: options a resumed run may change; anything else must match the saved config
RESUMABLE = {"steps", "eval_every", "eval_episodes", "log_every", "checkpoint_every", "save_replay", "device",
             "torch_threads", "diag_every", "rollout", "workers", "compile"}


def build_parser() -> argparse.ArgumentParser:
    """The trainer's command line."""
    parser = Parser(prog=PROG, description="Train multi-task SAC on Meta-World.",
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog="methods and their combiner options (--set combiner.NAME=VALUE):\n  "
                    + method_help()
                    + "\n\nEvery option of the config is reachable with --set NAME=VALUE:\n  "
                    + ", ".join(n for n in field_names() if n != "preset"))
    parser.add_argument("--env", help="mt10 | mt50 | mt1:<task> (default: the preset's, mt10)")
    parser.add_argument("--method", help=f"one of: {', '.join(METHODS)} (mean = mtsac); "
                        f"{', '.join(WEIGHTING_METHODS)} = mtsac with that --weighting")
    parser.add_argument("--weighting", help="loss weighting composed with the method: none | "
                        f"{' | '.join(WEIGHTING_METHODS)} (default none)")
    parser.add_argument("--config", help=f"a preset ({', '.join(presets())}) or the path of a YAML file of options "
                        f"(same keys as a preset); default {DEFAULT_PRESET}; a resumed run keeps its own")
    parser.add_argument("--steps", help="loop steps (each steps all K envs once)")
    parser.add_argument("--seed", help="random seed")
    parser.add_argument("--device", help="auto | cpu | cuda")
    parser.add_argument("--rollout", help="sync (envs in this process, then the update) | async (envs in worker "
                        "processes, stepping while the learner updates)")
    parser.add_argument("--workers", help="rollout worker processes with --rollout async (0: one per free core)")
    parser.add_argument("--logdir", help="run directory (default: runs/<env>_<method>[-<weighting>]_seed<seed>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --logdir from its checkpoint")
    parser.add_argument("--save-replay", action="store_true", help="also checkpoint the replay buffer")
    parser.add_argument("--compile", action="store_true", help="compile the update with torch.compile (CUDA "
                        "graphs on CUDA): same numbers, tens of seconds of compilation first")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override any option")
    parser.add_argument("--no-progress", action="store_true", help="no console progress bar")
    tracking.add_arguments(parser)  # --track, --wandb-*: not config options, so never part of the run's identity
    return parser


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (dedicated flags, then ``--set``), untyped."""
    flags = ("env", "method", "steps", "seed", "device", "weighting", "rollout", "workers")
    out: dict[str, Any] = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
    if args.save_replay:
        out["save_replay"] = True
    if args.compile:
        out["compile"] = True
    settings = parse_set(args.set)
    twice = [k for k in settings if k in out]
    if twice:  # --steps 10 --set steps=20: one would win silently
        flag = "--save-replay" if twice[0] == "save_replay" else f"--{twice[0]}"
        raise ConfigError(f"--set {twice[0]}", f"given twice (also as {flag}); keep one")
    out.update(settings)
    return out


def default_run_dir(cfg: TrainConfig) -> Path:
    """``runs/<env>_<method>[-<weighting>]_seed<seed>`` with the env name made path-safe."""
    method = cfg.method if cfg.weighting == "none" else f"{cfg.method}-{cfg.weighting}"
    return Path("runs") / f"{re.sub(r'[^A-Za-z0-9_.-]', '-', cfg.env)}_{method}_seed{cfg.seed}"


def resolve(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """Config and run directory from the arguments; raises :class:`ConfigError` naming the flag at fault."""
    overrides = cli_overrides(args)
    preset = args.config or DEFAULT_PRESET
    if not args.resume:
        cfg = build_config(preset, overrides)
        run_dir = Path(args.logdir) if args.logdir else default_run_dir(cfg)
        if (run_dir / "checkpoints" / checkpoint.CHECKPOINT_NAME).exists():
            raise ConfigError("--logdir", f"{run_dir} already holds a run; pass --resume to continue it "
                                          "or choose another --logdir")
        return cfg, run_dir
    if args.logdir:
        run_dir = Path(args.logdir)
    else:
        run_dir = default_run_dir(build_config(preset, overrides))
    path = run_dir / "config.yaml"
    saved = load_config_file(path)
    recorded, trained_to = checkpoint_record(run_dir / "checkpoints" / checkpoint.CHECKPOINT_NAME)
    try:
        old = saved_config(path, saved)
    except ConfigError:
        check_against_checkpoint(path, saved, None, recorded)  # a deleted option is the likelier cause: name it
        raise
    cfg = build_config(base=saved, overrides=overrides)
    changed = [n for n in field_names() if n != "preset" and getattr(cfg, n) != getattr(old, n)]
    frozen = [n for n in changed if n not in RESUMABLE]
    if frozen:
        raise ConfigError(f"--set {frozen[0]}" if frozen[0] not in ("env", "method", "seed") else f"--{frozen[0]}",
                          f"cannot change '{frozen[0]}' when resuming (only {', '.join(sorted(RESUMABLE))})")
    check_against_checkpoint(path, saved, old, recorded)
    if args.config is not None:
        check_config_flag(args.config, cfg, run_dir)
    if cfg.steps < trained_to:  # the run would "finish" at once, recording fewer steps than it was trained for
        flag = "--steps" if "steps" in overrides else "--resume"
        raise ConfigError(flag, f"steps={cfg.steps} is below step {trained_to}, which the checkpoint in {run_dir} "
                                f"was trained to; pass --steps {trained_to} or more, or start a new run")
    return cfg, run_dir


def check_config_flag(config: str, cfg: TrainConfig, run_dir: Path) -> None:
    """``--config`` on resume: accepted only when it names the preset (or YAML file) the run was started with; a
    resumed run keeps its config, so another one would otherwise be ignored without a word."""
    if resolve_preset(config) != cfg.preset:
        raise ConfigError("--config", f"{run_dir} was started with --config {cfg.preset}, not {config}; "
                                      "a resumed run keeps its own config: drop --config")


def checkpoint_record(ckpt: Path) -> tuple[dict[str, Any], int]:
    """The config a checkpoint was trained with (``TrainConfig.to_dict()``, saved with it) and its step."""
    state = checkpoint.load(ckpt, map_location="cpu")
    recorded = state.get("config")
    if not isinstance(recorded, dict):
        raise checkpoint.CheckpointError(f"checkpoint file {ckpt} records no config")
    return recorded, int(state.get("step", 0))


def saved_config(path: Path, saved: dict[str, Any]) -> TrainConfig:
    """The config a run directory's ``config.yaml`` holds; a bad value is reported against that file (the user
    edited it), not against a ``--set`` flag nobody passed."""
    try:
        return build_config(base=saved)
    except ConfigError as exc:
        flag = exc.flag.removeprefix("--set ").removeprefix("--")
        raise ConfigError("--resume", f"{path}: {flag}: {str(exc).split(': ', 1)[1]}") from None


def check_against_checkpoint(path: Path, saved: dict[str, Any], cfg: TrainConfig | None,
                             recorded: dict[str, Any]) -> None:
    """Refuse a ``config.yaml`` that no longer records what the checkpoint was trained with: an option edited or
    deleted (a deleted one would fall back to the code's default), unless it is one a resume may change.

    ``cfg`` is what ``config.yaml`` resolves to (``None`` when it does not validate: only deletions are checked).
    Options the checkpoint does not record (added to the code after it was written) are not compared.
    """
    current = cfg.to_dict() if cfg is not None else {}
    differs = []
    for name in field_names():
        if name == "preset" or name in RESUMABLE or name not in recorded:
            continue
        if name not in saved:
            differs.append(f"{name} (missing; checkpoint: {recorded[name]!r})")
        elif cfg is not None and current[name] != recorded[name]:
            differs.append(f"{name} ({current[name]!r}; checkpoint: {recorded[name]!r})")
    if differs:
        raise ConfigError("--resume", f"{path} differs from the checkpoint in {', '.join(differs)} (only "
                                      f"{', '.join(sorted(RESUMABLE))} may change on resume); restore the "
                                      "checkpoint's values or start a new run in another --logdir")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status: 0 finished, 1 a rollout worker failed, 2 bad input (raised as
    ``SystemExit``), 3 diverged (non-finite losses or gradients), 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        cfg, run_dir = resolve(args)
        track = tracking.options_from_args(args, run_dir, name=default_run_dir(cfg).name)
        from rl_mtl.trainer import Trainer  # heavy imports (torch, metaworld) only once the input is valid
        from rl_mtl.routing import weighting_warning

        if (warning := weighting_warning(cfg)) is not None:  # e.g. any weighting under nashmtl: one line
            print(f"{PROG}: {warning}", file=sys.stderr)
        if cfg.warmup_steps >= cfg.steps and not args.resume:
            print(f"{PROG}: warning: warmup_steps={cfg.warmup_steps} >= steps={cfg.steps}: the run collects "
                  "random actions only and never updates its policy", file=sys.stderr)

        trainer = Trainer(cfg, run_dir, resume=args.resume, progress=not args.no_progress, tracking=track)
    except ConfigError as exc:
        fail(PROG, str(exc))
    except checkpoint.CheckpointError as exc:
        fail(PROG, f"--resume: {exc}")
    except RuntimeError as exc:
        from rl_mtl.envs.rollout import WorkerError  # a rollout worker that could not start: one line, no traceback

        if not isinstance(exc, WorkerError):
            raise
        error(PROG, str(exc))
        return 1
    result = trainer.run()
    status = runs.exit_status(result)
    if status in (runs.DIVERGED_EXIT, runs.FAILED_EXIT):  # checkpointed; on divergence summary.json says why
        error(PROG, result["error"])
    elif status == 0:
        print(f"final eval success {result['mean']:.3f} ({run_dir / 'summary.json'})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
