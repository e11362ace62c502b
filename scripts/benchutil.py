"""Shared pieces of the update benchmarks: an agent on a replay filled with random MT10-shaped data, and timing."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from rl_mtl.agents.mtsac import MTSAC
from rl_mtl.agents.replay import MultiTaskReplay
from rl_mtl.config import build_config
from rl_mtl.agent_setup import resolve_device, sac_config

OBS_DIM, ACTION_DIM, K = 49, 4, 10


def parse_device_args(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, torch.device]:
    """Add the benchmarks' shared ``--device`` and ``--threads``, parse, apply the thread count; (args, device)."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, resolve_device(args.device)


def agent_and_replay(preset: str, device: torch.device, fill: int = 1_000) -> tuple[MTSAC, MultiTaskReplay, int]:
    """The preset's agent (seeded), a replay holding ``fill`` random transitions per task, and its batch size."""
    cfg = build_config(preset)
    torch.manual_seed(0)
    agent = MTSAC(OBS_DIM, ACTION_DIM, K, sac_config(cfg), device)
    replay = MultiTaskReplay(K, OBS_DIM, ACTION_DIM, fill, device, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(fill):
        replay.add(rng.normal(size=(K, OBS_DIM)), rng.uniform(-1, 1, (K, ACTION_DIM)), rng.uniform(0, 10, K),
                   rng.normal(size=(K, OBS_DIM)), rng.uniform(size=K) < 0.01)
    return agent, replay, cfg.batch_size


def update_times(agent: MTSAC, replay: MultiTaskReplay, batch_size: int, repeats: int, warmup: int = 3) -> list[float]:
    """Wall time (ms) of each of ``repeats`` ``agent.update`` calls after ``warmup`` untimed ones."""
    cuda = agent.device.type == "cuda"
    times = []
    for i in range(warmup + repeats):
        batch = replay.sample(batch_size)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        agent.update(batch)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - t0))
    return times


def median(values: list[float]) -> float:
    """Median of a list of timings."""
    return statistics.median(values)
