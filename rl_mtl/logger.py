"""The one place that writes logs: TensorBoard scalars and text, a long-format CSV, and the console progress bar
(and, with ``--track``, W&B: the ``mirror`` gets every scalar TensorBoard gets).

Values are recorded any number of times between two dumps (``record`` / ``record_tasks``) and averaged at the
dump; tensors stay on their device until then, so recording costs no host synchronisation on the hot path.
Tags are grouped by prefix: ``train/``, ``eval/``, ``loss/``, ``alpha/``, ``perf/``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor
from tqdm import tqdm


class Logger:
    """Averages recorded values per interval and writes them to TensorBoard, ``metrics.csv`` and the console."""

    def __init__(
        self,
        run_dir: Path,
        task_names: Sequence[str],
        total_steps: int,
        start_step: int = 0,
        progress: bool = True,
        mirror: Callable[[dict[str, float], int], None] | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy import, only when a run starts

        self.run_dir = Path(run_dir)
        self.task_names = list(task_names)
        self.mirror = mirror  # gets every scalar TensorBoard gets, at the same step (W&B with --track)
        # purge_step drops events a crashed run wrote after its last checkpoint (those at the checkpoint's own step
        # were written before it was saved), so a resumed curve is continuous
        self.writer = SummaryWriter(str(self.run_dir), purge_step=start_step + 1 if start_step > 0 else None)
        csv_path = self.run_dir / "metrics.csv"
        if start_step > 0 and csv_path.exists():
            truncate_csv(csv_path, start_step)  # rows a killed run wrote after its last checkpoint
        new_file = not csv_path.exists()
        self._csv_file = open(csv_path, "a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new_file:
            self._csv.writerow(["step", "key", "value"])
        self._sums: dict[str, Tensor | float] = {}
        self._counts: dict[str, int] = {}
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not progress, unit="step",
                        dynamic_ncols=True, smoothing=0.05)
        self._postfix: dict[str, str] = {}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The interval's recorded but not yet written sums, so a resumed run writes the same means."""
        return {"sums": dict(self._sums), "counts": dict(self._counts)}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (None: nothing pending)."""
        self._sums = dict(state["sums"]) if state else {}
        self._counts = dict(state["counts"]) if state else {}

    # ------------------------------------------------------------------ recording
    def record(self, key: str, value: float | Tensor) -> None:
        """Add one observation of a scalar; the dump writes the mean of the interval."""
        if isinstance(value, Tensor):
            value = value.detach().float()
        self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._counts[key] = self._counts.get(key, 0) + 1

    def record_tasks(self, prefix: str, values: Tensor | Sequence[float], mean: bool = True) -> None:
        """Record a per-task vector (K,) as ``prefix/<task>`` and, with ``mean``, ``prefix/mean``."""
        values = torch.as_tensor(values).detach().float().reshape(-1)
        key = f"{prefix}/__vector__"
        self._sums[key] = self._sums[key] + values if key in self._sums else values
        self._counts[key] = self._counts.get(key, 0) + 1
        if mean:
            self.record(f"{prefix}/mean", values.mean())

    def record_task(self, prefix: str, task: int, value: float) -> None:
        """Record one task's value (e.g. a finished episode's return) as ``prefix/<task name>``."""
        self.record(f"{prefix}/{self.task_names[task]}", float(value))

    # ------------------------------------------------------------------ writing
    def dump(self, step: int) -> dict[str, float]:
        """Write the interval means at ``step``, clear them, and return them (for the progress bar and tests)."""
        out: dict[str, float] = {}
        for key, total in self._sums.items():
            count = self._counts[key]
            if key.endswith("/__vector__"):
                prefix = key[: -len("/__vector__")]
                vector = (total / count).cpu().tolist()
                for name, v in zip(self.task_names, vector):
                    out[f"{prefix}/{name}"] = float(v)
            else:
                out[key] = float(total) / count
        self._write(out, step, finite_only=True)
        self._sums.clear()
        self._counts.clear()
        return out

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Write already-aggregated scalars (evaluation results) immediately."""
        self._write(values, step)

    def _write(self, values: Mapping[str, float], step: int, finite_only: bool = False) -> None:
        """The one place scalars are written: ``metrics.csv`` gets every value, TensorBoard the finite ones of an
        interval's means (all of the others), and the mirror exactly what TensorBoard got."""
        shown: dict[str, float] = {}
        for key, value in values.items():
            if not finite_only or math.isfinite(value):
                self.writer.add_scalar(key, value, step)
                shown[key] = value
            self._csv.writerow([step, key, value])
        self._csv_file.flush()
        self.writer.flush()
        if self.mirror is not None and shown:
            self.mirror(shown, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """TensorBoard text (the resolved config at step 0)."""
        self.writer.add_text(tag, text, step)

    def hparams(self, values: Mapping[str, Any], metrics: Sequence[str]) -> None:
        """Register the run's hyperparameters with TensorBoard's HParams dashboard, in this run's own event file.

        ``values`` may nest one level (``combiner: {c: 0.9}`` becomes ``combiner.c``); lists and ``None`` are shown
        as text. ``metrics`` are scalar tags this run logs (``eval/success/mean``): the dashboard reads their
        values from the run, so runs of a sweep can be filtered and compared by method and option.
        """
        from torch.utils.tensorboard.summary import hparams

        flat: dict[str, bool | int | float | str] = {}
        for key, value in values.items():
            items = value.items() if isinstance(value, Mapping) else [("", value)]
            for sub, item in items:
                name = f"{key}.{sub}" if sub else key
                if isinstance(item, (list, tuple)):
                    item = ",".join(str(v) for v in item)
                flat[name] = item if isinstance(item, (bool, int, float, str)) else str(item)
        for summary in hparams(flat, {tag: math.nan for tag in metrics}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def progress(self, step: int, **postfix: float | str) -> None:
        """Advance the console bar to ``step`` and update the shown figures (steps/s, latest success, ...)."""
        for key, value in postfix.items():  # a figure not measured yet (no episode finished) shows as "-"
            self._postfix[key] = ("-" if value != value else f"{value:.3g}") if isinstance(value, float) else str(value)
        if postfix:
            self.bar.set_postfix(self._postfix, refresh=False)
        self.bar.update(step - self.bar.n)

    def message(self, text: str) -> None:
        """A console line that does not break the progress bar."""
        self.bar.write(text)

    def close(self) -> None:
        """Flush and close every writer."""
        self.bar.close()
        self.writer.close()
        self._csv_file.close()


def truncate_csv(path: Path, last_step: int) -> None:
    """Keep the header and the rows of ``step <= last_step`` of a long-format ``metrics.csv`` (atomically)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(path, newline="") as src, open(tmp, "w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        for i, row in enumerate(reader):
            if i == 0 or (len(row) == 3 and _step_of(row[0]) <= last_step):
                writer.writerow(row)
    tmp.replace(path)


def _step_of(text: str) -> float:
    """The step column of a row; a torn one (a kill mid-write) counts as past every checkpoint."""
    try:
        return int(text)
    except ValueError:
        return math.inf
