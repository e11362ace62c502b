"""Test helper: interrupt a :class:`rl_mtl.trainer.Trainer` at a chosen loop step, as a SIGTERM arriving then would."""

from __future__ import annotations

import signal
from typing import Any


def stop_at(trainer: Any, step: int) -> None:
    """Make ``trainer`` stop after loop step ``step`` as on SIGTERM (it checkpoints and returns ``interrupted``)."""
    progress = trainer.logger.progress

    def stop_at_step(current: int, **postfix: Any) -> None:
        progress(current, **postfix)
        if current == step:
            trainer._stop_signal = signal.SIGTERM  # what the SIGTERM handler sets

    trainer.logger.progress = stop_at_step
