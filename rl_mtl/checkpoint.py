"""Atomic checkpoints and RNG state capture.

A checkpoint is one ``torch.save`` dictionary written to a temporary file in the same directory and renamed into
place, so an interrupted write never leaves a half-written ``last.pt``. Loading failures name the file.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_mtl.cli import one_line

CHECKPOINT_NAME = "last.pt"
#: replay data of the checkpoint at a step: ``replay-<step>.pt`` (``last.pt`` names the one that belongs to it)
REPLAY_PATTERN = "replay-*.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A missing, unreadable or incompatible checkpoint file; the message names the file."""


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replay_name(step: int) -> str:
    """The replay file written with the checkpoint at ``step``."""
    return f"replay-{int(step)}.pt"


def remove_replays(directory: Path, keep: str | None) -> None:
    """Delete every replay file in ``directory`` except ``keep`` (once a newer ``last.pt`` no longer names them)."""
    for path in Path(directory).glob(REPLAY_PATTERN):
        if path.name != keep:
            path.unlink(missing_ok=True)


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the half-written temporary files a killed :func:`save_atomic` left in ``directory``."""
    for path in Path(directory).glob(".*.tmp"):
        path.unlink(missing_ok=True)


def short_message(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (torch's state-dict mismatches span dozens), cut to ``limit`` chars."""
    text = one_line(exc)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_atomic`, raising :class:`CheckpointError` that names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"checkpoint file {path} is corrupt or unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint file {path} is not an rl_mtl checkpoint (format {FORMAT_VERSION})")
    return state


def rng_state() -> dict[str, Any]:
    """The state of every global random generator the trainer uses."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())  # RNG states are CPU tensors; torch.load's map_location moves them
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
