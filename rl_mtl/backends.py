"""Run training subprocesses for ``rl_mtl.sweep``: locally (a pool of child processes) or as Ray tasks.

Every run is ``python -m rl_mtl.train ...`` with stdout and stderr appended to the run's ``train.log``, an exclusive
lock on the run directory (inherited by the training, so it outlives a killed sweep), and its own session so that
only the sweep receives a terminal's Ctrl-C and forwards exactly one SIGTERM (the trainer checkpoints on it). This
module imports nothing heavy, so a Ray worker that runs a task starts fast.
"""

from __future__ import annotations

import collections
import ctypes
import importlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Sequence

from rl_mtl import runs

ROOT = Path(__file__).resolve().parent.parent
NEW = "new"
#: seconds a stopped training gets to write its checkpoint before it is killed
STOP_GRACE_S = 120.0


@dataclass(frozen=True)
class RunSpec:
    """One training run of the sweep and the command that starts (or resumes) it."""

    method: str
    seed: int
    run_dir: Path
    action: str
    command: tuple[str, ...]
    threads: int = 1



@dataclass
class Outcome:
    """How a run ended in this invocation: ``finished``, ``skipped``, ``failed``, ``interrupted``, ``conflict``,
    ``locked`` (another process is training it) or ``not started``."""

    method: str
    seed: int
    run_dir: Path
    status: str
    returncode: int | None = None
    seconds: float = 0.0
    message: str = ""


@dataclass
class _Running:
    spec: RunSpec
    proc: subprocess.Popen[bytes]
    log: IO[str]
    lock_fd: int
    started: float = field(default_factory=time.monotonic)


# ---------------------------------------------------------------------------------------------------------------
# running one training subprocess
def _lock(run: Path) -> int | None:
    """An exclusive ``flock`` on the run's lock file, or ``None`` when another process holds it.

    The training subprocess inherits the descriptor, so the lock lives as long as the training does, even if the
    sweep that started it was killed: a second sweep never trains the same run twice at once.
    """
    fd = os.open(run / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _clear_stale(run: Path) -> None:
    """Remove what an attempt that never checkpointed left (its curves would be appended to); keep the log."""
    for name in (runs.CONFIG, runs.SUMMARY, "metrics.csv", "evals.jsonl", runs.EVAL):
        (run / name).unlink(missing_ok=True)
    for events in run.glob("events.out.tfevents.*"):
        events.unlink()
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


#: resolved in the parent: the child between fork and exec should only make the system call
_LIBC = ctypes.CDLL(None, use_errno=True)
_LINUX = sys.platform.startswith("linux")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM (checkpoint and exit) if the sweep dies, even by SIGKILL (Linux)."""
    _LIBC.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(threads))
    # an uninstalled checkout still finds rl_mtl, agents and envs
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def launch(spec: RunSpec, die_with_parent: bool) -> _Running | None:
    """Start a run's training subprocess (output appended to ``train.log``); ``None`` if another process holds it."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    fd = _lock(spec.run_dir)
    if fd is None:
        return None
    if spec.action == NEW:
        _clear_stale(spec.run_dir)
    log = open(spec.run_dir / runs.LOG, "a")
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} sweep {spec.action}: {' '.join(spec.command)}\n")
    log.flush()
    # its own session, so a terminal's Ctrl-C reaches only the sweep, which forwards exactly one SIGTERM
    proc = subprocess.Popen(spec.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=_child_env(spec.threads), pass_fds=(fd,), start_new_session=True,
                            preexec_fn=_die_with_parent if die_with_parent and _LINUX else None)
    return _Running(spec, proc, log, fd)


def finish(running: _Running, returncode: int) -> Outcome:
    """Close a run's log and lock, record its status, and describe how it ended."""
    spec, seconds = running.spec, time.monotonic() - running.started
    running.log.close()
    os.close(running.lock_fd)
    summary = runs.read_json(spec.run_dir / runs.SUMMARY)
    if returncode == 0 and summary is not None:
        status, message = "finished", f"final success {summary['final']['mean']:.3f}"
    elif returncode in (130, -signal.SIGTERM, -signal.SIGINT):
        status, message = "interrupted", "checkpointed; run the sweep again to resume"
    else:
        status, message = "failed", f"exit {returncode}: {_last_line(spec.run_dir / runs.LOG)}"
    runs.write_status(spec.run_dir, status, returncode, seconds, spec.action)
    return Outcome(spec.method, spec.seed, spec.run_dir, status, returncode, seconds, message)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (usually the error), shortened."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _stop(running: _Running) -> int:
    """SIGTERM a training (it checkpoints and exits), kill it after the grace period; returns its exit status."""
    if running.proc.poll() is None:
        running.proc.send_signal(signal.SIGTERM)
    try:
        return running.proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        return running.proc.wait()


def run_blocking(spec: RunSpec) -> Outcome:
    """Train one run to the end in this process's child (the Ray task body); a cancellation stops it cleanly."""
    running = launch(spec, die_with_parent=False)
    if running is None:
        return Outcome(spec.method, spec.seed, spec.run_dir, "locked", message="another process is training it")
    try:
        returncode = running.proc.wait()
    except BaseException:
        finish(running, _stop(running))
        raise
    return finish(running, returncode)


# ---------------------------------------------------------------------------------------------------------------
# backends
class _StopFlag:
    """Catches SIGINT/SIGTERM while installed; the sweep then stops launching and stops its runs."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum


def run_local(specs: Sequence[RunSpec], workers: int, report: Callable[[Outcome], None]) -> list[Outcome]:
    """Run the specs as subprocesses of this process, at most ``workers`` at a time."""
    pending = collections.deque(specs)
    active: list[_Running] = []
    outcomes: list[Outcome] = []
    forwarded = False
    with _StopFlag() as stop:
        while active or (pending and stop.signum is None):
            while pending and len(active) < workers and stop.signum is None:
                spec = pending.popleft()
                running = launch(spec, die_with_parent=True)
                if running is None:
                    outcomes.append(Outcome(spec.method, spec.seed, spec.run_dir, "locked",
                                            message="another process is training it"))
                    report(outcomes[-1])
                else:
                    active.append(running)
            if stop.signum is not None and not forwarded:
                for running in active:
                    running.proc.send_signal(signal.SIGTERM)
                forwarded = True
            for running in list(active):
                returncode = running.proc.poll()
                if returncode is not None:
                    active.remove(running)
                    outcomes.append(finish(running, returncode))
                    report(outcomes[-1])
            time.sleep(0.2)
        for spec in pending:
            outcomes.append(Outcome(spec.method, spec.seed, spec.run_dir, "not started"))
            report(outcomes[-1])
    return outcomes


def run_ray(specs: Sequence[RunSpec], report: Callable[[Outcome], None], address: str | None, local_cpus: int,
            cpus_per_run: int, gpus_per_run: float) -> list[Outcome]:
    """Submit the specs as Ray tasks: join the cluster at ``address``, or start a local instance of ``local_cpus``.

    Raises ``ImportError`` when Ray is not installed.
    """
    import ray

    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False)
    # by module name: when the sweep runs as ``__main__`` Ray must still ship a reference, not a pickled copy
    task = ray.remote(importlib.import_module("rl_mtl.backends").run_blocking)
    task = task.options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
    outcomes: list[Outcome] = []
    try:
        with _StopFlag() as stop:
            refs = {task.remote(spec): spec for spec in specs}
            cancelled = False
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
                if stop.signum is not None and not cancelled:
                    for ref in refs:
                        ray.cancel(ref)
                    cancelled = True
                for ref in ready:
                    spec = refs.pop(ref)
                    outcomes.append(_ray_outcome(ray, ref, spec))
                    report(outcomes[-1])
    finally:
        ray.shutdown()
    return outcomes


def _ray_outcome(ray: Any, ref: Any, spec: RunSpec) -> Outcome:
    """The outcome a Ray task returned, or one made from its error (cancelled, worker lost, ...)."""
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        status = runs.read_json(spec.run_dir / runs.STATUS) or {}
        started = (spec.run_dir / runs.LOG).is_file() and status.get("status") == "interrupted"
        return Outcome(spec.method, spec.seed, spec.run_dir, "interrupted" if started else "not started")
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Outcome(spec.method, spec.seed, spec.run_dir, "failed", message=f"ray: {first[:200]}")


