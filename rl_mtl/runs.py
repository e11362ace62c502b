"""The on-disk layout of sweeps and runs, shared by ``rl_mtl.sweep``, ``rl_mtl.report`` and ``rl_mtl.evaluate``.

A sweep directory holds ``sweep.json`` (what was asked for) and one run directory per (label, seed),
``<root>/<label>/seed<k>/`` (``stl``: one per task, ``<root>/stl/seed<k>/<task>/``), each a normal ``rl_mtl.train``
run directory plus two files of the sweep's: ``train.log`` (the run's stdout and stderr, appended per attempt) and
``sweep_status.json`` (how the last attempt ended). Only reading and writing lives here; no policy about what to
run or average. Imports are light (no torch) so that a Ray worker running a sweep task starts fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_mtl.cli import one_line

if TYPE_CHECKING:
    from rl_mtl.config import TrainConfig

MANIFEST = "sweep.json"
STATUS = "sweep_status.json"
LOG = "train.log"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
EVAL = "eval.json"
#: ``rl_mtl.checkpoint.CHECKPOINT_NAME`` under ``checkpoints/`` (checked in the tests; that module imports torch)
CHECKPOINT = "checkpoints/last.pt"
#: ``rl_mtl.train``'s exit status when a run stopped on non-finite losses or gradients (checkpointed)
DIVERGED_EXIT = 3
#: ... a rollout worker failed past its restarts (checkpointed), and a run stopped by SIGINT/SIGTERM (checkpointed)
FAILED_EXIT, INTERRUPTED_EXIT = 1, 130


def exit_status(result: dict[str, Any] | None) -> int:
    """The exit status of a training run from what ``Trainer.run`` returned (``None``: it raised): 0 finished,
    1 failed (or raised), 3 diverged, 130 interrupted. ``rl_mtl.train`` exits with it and W&B records it."""
    if result is None or result.get("failed"):
        return FAILED_EXIT
    if result.get("diverged"):
        return DIVERGED_EXIT
    if result.get("interrupted"):
        return INTERRUPTED_EXIT
    return 0


def run_dir(root: Path, method: str, seed: int, task: str | None = None) -> Path:
    """``<root>/<method>/seed<seed>``; an ``stl`` run of one task: ``<root>/stl/seed<seed>/<task>``."""
    path = Path(root) / method / f"seed{seed}"
    return path / task if task else path


def checkpoint_path(run: Path) -> Path:
    """The run's last checkpoint (``checkpoints/last.pt``)."""
    return Path(run) / CHECKPOINT


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or ``None`` when the file is missing or unreadable (a run killed while writing it)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def read_config(run: Path) -> TrainConfig | None:
    """The run's saved config, or ``None`` when it has none or it no longer validates."""
    from rl_mtl.config import build_config, load_config_file

    path = Path(run) / CONFIG
    if not path.is_file():
        return None
    try:
        return build_config(base=load_config_file(path))
    except ValueError:
        return None


def diverged_reason(summary: dict[str, Any] | None) -> str | None:
    """``diverged at step N: <reason>`` when a run's summary says it stopped on divergence, else None."""
    if summary is None or summary.get("status") != "diverged":
        return None
    reason = one_line(summary.get("stop_reason") or "no reason recorded")
    return f"diverged at step {summary.get('final_step')}: {reason}"


def write_status(run: Path, status: str, returncode: int | None, seconds: float, action: str) -> None:
    """Record how the last attempt at a run ended (``finished``, ``failed``, ``interrupted``)."""
    previous = read_json(Path(run) / STATUS) or {}
    write_json(Path(run) / STATUS, {
        "status": status, "returncode": returncode, "action": action, "seconds": round(seconds, 1),
        "log": str(Path(run) / LOG), "attempts": int(previous.get("attempts", 0)) + 1,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    })


def find_runs(root: Path) -> list[Path]:
    """Every run directory under ``root``: those with a saved config or a sweep status, sorted."""
    root = Path(root)
    found = {p.parent for name in (CONFIG, STATUS) for p in root.rglob(name)}
    return sorted(found)


def update_manifest(root: Path, entry: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Merge this invocation into ``sweep.json``: the union of the runs asked for over every invocation."""
    path = Path(root) / MANIFEST
    manifest = read_json(path) or {"runs": [], "invocations": []}
    known = {r["dir"] for r in manifest["runs"]}  # one per run directory (the stl runs of a seed share a label)
    manifest["runs"] += [r for r in runs if r["dir"] not in known]
    manifest["invocations"].append(entry)
    manifest.update({k: entry[k] for k in ("env", "config", "set", "steps", "grid") if k in entry})
    write_json(path, manifest)
