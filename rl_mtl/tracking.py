"""Optional Weights & Biases mirror of a run (``--track``): the scalars the logger writes to TensorBoard, at the same
steps, and the resolved config as the W&B config.

wandb is imported only here and only with ``--track``. The W&B run id lives in the run directory (``wandb.json``),
so ``--resume`` continues the same W&B run. W&B never holds two values for one step: a resumed run restarts at its
checkpoint, possibly before the last step the killed run had already sent, and the steps up to that one are not sent
again (W&B keeps the killed run's values there; TensorBoard and ``metrics.csv`` get the resumed run's).
The tracking options are not part of the config: a run resumed with or without ``--track`` is the same run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from rl_mtl import runs
from rl_mtl.cli import install_hint
from rl_mtl.config import ConfigError

#: what a user without wandb is told to run
INSTALL = install_hint("wandb")
#: the W&B run of a run directory: its id, project, entity, group and the last step sent to W&B
STATE_FILE = "wandb.json"


@dataclass(frozen=True)
class TrackingOptions:
    """Where the W&B run goes (``None``: wandb's own default, e.g. ``WANDB_PROJECT``) and its display name."""

    project: str | None = None
    entity: str | None = None
    group: str | None = None
    name: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--track`` and the ``--wandb-*`` flags of the training command line."""
    group = parser.add_argument_group(f"Weights & Biases (optional: {INSTALL})")
    group.add_argument("--track", action="store_true",
                       help="also send the TensorBoard scalars and the config to W&B (--resume continues the same "
                       "W&B run; WANDB_MODE=offline writes it locally for `wandb sync`)")
    group.add_argument("--wandb-project", help="W&B project (default: wandb's, e.g. WANDB_PROJECT; on --resume: the "
                       "run's)")
    group.add_argument("--wandb-entity", help="W&B entity, a user or team (default: wandb's; on --resume: the run's)")
    group.add_argument("--wandb-group", help="W&B group (a sweep sets its directory name; on --resume: the run's)")


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The run directory's W&B record, ``None`` when it has none; a file that is not one is refused (exit 2)."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    state = runs.read_json(path)
    if state is None or not isinstance(state.get("id"), str) or not isinstance(state.get("last_step"), int):
        raise ConfigError("--resume", f"{path} is not a W&B run record ({{\"id\": ..., \"last_step\": ...}}); "
                                      "restore it, or delete it to track the rest of the run as a new W&B run")
    return state


def options_from_args(args: argparse.Namespace, run_dir: Path, name: str) -> TrackingOptions | None:
    """The tracking options of a command line (``None`` without ``--track``), checked before any training starts:
    wandb installed, and on ``--resume`` the same project and entity as the W&B run being continued."""
    given = {"project": args.wandb_project, "entity": args.wandb_entity, "group": args.wandb_group}
    if not args.track:
        flag = next((f"--wandb-{k}" for k, v in given.items() if v is not None), None)
        if flag:
            raise ConfigError(flag, "only applies with --track")
        return None
    try:
        import wandb  # noqa: F401  (only with --track: a plain run never imports it)
    except ImportError:
        raise ConfigError("--track", f"needs the wandb package: {INSTALL}") from None
    state = read_state(run_dir) if args.resume else None
    if state is not None:
        for key in ("project", "entity"):
            if given[key] is not None and state.get(key) is not None and given[key] != state[key]:
                raise ConfigError(f"--wandb-{key}", f"this run is tracked as W&B run {state['id']} in {key} "
                                                    f"{state[key]!r} ({Path(run_dir) / STATE_FILE}); a W&B run "
                                                    "cannot move: drop the flag or pass that value")
            if given[key] is None:
                given[key] = state.get(key)
        if given["group"] is None:
            given["group"] = state.get("group")
    return TrackingOptions(name=name, **given)


def skip_message(run_id: str, start_step: int, last_step: int) -> str | None:
    """The warning for a resumed run whose checkpoint is older than what W&B already holds (``None``: nothing to
    skip)."""
    if last_step <= start_step:
        return None
    return (f"warning: W&B run {run_id} already holds steps up to {last_step}, sent before the kill; this run resumes "
            f"from its checkpoint at step {start_step}, so W&B keeps those values for steps {start_step + 1}.."
            f"{last_step} (TensorBoard and metrics.csv get this run's) and gets this run's from step {last_step + 1}")


class Tracker:
    """One W&B run mirroring a training run: :meth:`log` gets exactly what the logger writes to TensorBoard."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], options: TrackingOptions, resume: bool,
                 start_step: int = 0) -> None:
        import wandb

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = read_state(self.run_dir) if resume else None  # a fresh start is a new W&B run, even in an old dir
        try:
            self.run = wandb.init(project=options.project, entity=options.entity, group=options.group,
                                  name=options.name, id=state["id"] if state else None,
                                  resume="allow" if state else None)
            # resumable options (steps, eval_every, ...) may have changed since the W&B run started
            self.run.config.update(dict(config), allow_val_change=True)
        except Exception as exc:  # wandb raises many types (no login, no network, bad project): one line, exit 2
            raise ConfigError("--track", f"wandb.init failed ({type(exc).__name__}: {exc}); log in with `wandb "
                                         "login`, or set WANDB_MODE=offline and `wandb sync` later") from None
        # steps up to here are never sent: those W&B already holds (a kill after the checkpoint); a resumed run
        # logs nothing at or before its checkpoint's step anyway
        self.floor = max(int(state["last_step"]) if state else start_step, start_step)
        if resume and getattr(self.run, "resumed", False):  # online: W&B itself knows its last step
            self.floor = max(self.floor, int(getattr(self.run, "step", 0)) - 1)
        self._state = {"id": self.run.id, "project": getattr(self.run, "project", None) or options.project,
                       "entity": getattr(self.run, "entity", None) or options.entity, "group": options.group,
                       "last_step": self.floor}
        runs.write_json(self.run_dir / STATE_FILE, self._state)
        message = skip_message(self.run.id, start_step, self.floor)
        if message:
            print(message, file=sys.stderr)

    def log(self, values: Mapping[str, float], step: int) -> None:
        """Send one step's scalars (skipped up to :attr:`floor`); the step is recorded as sent *before* sending, so a
        kill in between leaves a gap in W&B, never a step sent twice."""
        if step <= self.floor or not values:
            return
        if step > self._state["last_step"]:
            self._state["last_step"] = step
            runs.write_json(self.run_dir / STATE_FILE, self._state)
        self.run.log({key: float(value) for key, value in values.items()}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        """Flush and close the W&B run with the run's exit status (W&B shows a non-zero one as failed)."""
        self.run.finish(exit_code=exit_code)
