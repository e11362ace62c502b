"""Milliseconds per multi-task SAC update for the default (mt10) and CPU (mt10_cpu) configs.

Measured in one process on random replay data of MT10's shapes (obs 49, action 4, K = 10), so the figures are
the learner's cost alone. Prints a table, the ratio default/cpu, and a last line ``update_ms_default=<x>``.

    python scripts/bench_update.py [--device cpu|cuda] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchutil import agent_and_replay, parse_device_args, update_times
from rl_mtl.config import build_config


def time_update(preset: str, device: torch.device, repeats: int) -> list[float]:
    """Per-update wall times (ms) of the preset's network and batch size on a filled replay."""
    agent, replay, batch_size = agent_and_replay(preset, device, fill=2_000)
    return update_times(agent, replay, batch_size, repeats, warmup=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args, device = parse_device_args(parser)
    print(f"device={device} torch_threads={torch.get_num_threads()}")
    print(f"{'preset':<10} {'hidden':<16} {'batch':>6} {'median_ms':>10} {'p10_ms':>8} {'p90_ms':>8}")
    medians = {}
    for preset in ("mt10", "mt10_cpu"):
        cfg = build_config(preset)
        times = sorted(time_update(preset, device, args.repeats))
        medians[preset] = statistics.median(times)
        p10, p90 = times[len(times) // 10], times[(9 * len(times)) // 10]
        print(f"{preset:<10} {str(cfg.hidden_sizes):<16} {cfg.batch_size:>6} {medians[preset]:>10.2f} "
              f"{p10:>8.2f} {p90:>8.2f}")
    print(f"ratio_default_vs_cpu={medians['mt10'] / medians['mt10_cpu']:.2f}")
    print(f"update_ms_default={medians['mt10']:.2f}")


if __name__ == "__main__":
    main()
