"""Time per training iteration (one MT10 vector step + one SAC update): serial vs overlapped with rollout workers.

For the default (``mt10``: 3x400, batch 1280) and CPU (``mt10_cpu``) presets, measured in one process on real MT10
environments (500-step episodes) and an agent on a replay of random MT10-shaped data:

* ``sim``: acting + one in-process vector step (``--rollout sync``'s simulation);
* ``update``: one replay sample + SAC update (+ the acting policy's refresh);
* ``serial``: a ``--rollout sync`` iteration (act, step, store, update);
* ``overlapped``: a ``--rollout async`` iteration (act, send, update while the workers step, collect, store).

The target (architecture §9) is overlapped ≈ max(sim, update), printed as ``overlap_vs_max`` (1.0 = perfect overlap).
The last line ``overlap_speedup=<x>`` is serial / overlapped for the default preset.

    python scripts/bench_iteration.py [--device cpu|cuda] [--iters 30] [--budget 30] [--workers 0] [--threads 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from benchutil import agent_and_replay, median, parse_device_args
from rl_mtl.envs.metaworld import MultiTaskEnv, build_vector_env, env_factories
from rl_mtl.envs.rollout import AsyncCollector
from rl_mtl.acting import ActingPolicy
from rl_mtl.transfer import StepTransfer


def timed_rounds(fns: dict[str, Callable[[], None]], iters: int, budget_s: float, sync_cuda: bool,
                 warmup: int = 2) -> dict[str, float]:
    """Median wall time (ms) of each function, called in interleaved rounds (so that a change in the machine's load
    hits all of them alike): ``iters`` rounds, fewer (3 at least) once ``budget_s`` seconds are spent."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for i in range(warmup + iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if sync_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(1e3 * (time.perf_counter() - t0))
        if i >= warmup + 2 and time.perf_counter() - start > budget_s:
            break
    return {name: median(values) for name, values in times.items()}


def bench_preset(preset: str, device: torch.device, sync: MultiTaskEnv, workers: AsyncCollector,
                 iters: int, budget_s: float) -> dict[str, float]:
    """Median ms of sim, update, serial and overlapped iterations of ``preset``'s learner."""
    agent, replay, batch_size = agent_and_replay(preset, device, fill=2_000)
    k, d = sync.num_tasks, sync.obs_dim
    policy = ActingPolicy(agent.actor, k, d)
    transfer = StepTransfer(k, d, sync.action_dim, device)
    cuda = device.type == "cuda"
    state = {"sync": sync.reset(seed=0), "workers": workers.reset(seed=0)}

    def store(key: str, obs: np.ndarray, actions: np.ndarray, result) -> None:  # type: ignore[no-untyped-def]
        moved = transfer(obs, actions, result.reward, result.next_obs, result.terminated, result.obs)
        replay.add(moved.obs, moved.action, moved.reward, moved.next_obs, moved.terminated)
        state[key] = result.obs

    def update() -> None:
        agent.update(replay.sample(batch_size))
        policy.refresh()

    def sim() -> None:
        state["sync"] = sync.step(policy.act(state["sync"])).obs

    def serial() -> None:
        obs = state["sync"]
        actions = policy.act(obs)
        store("sync", obs, actions, sync.step(actions))
        update()

    def overlapped() -> None:
        obs = state["workers"]
        actions = policy.act(obs)
        workers.step_async(actions)
        update()
        store("workers", obs, actions, workers.step_wait())

    out = timed_rounds({"sim": sim, "update": update, "serial": serial, "overlapped": overlapped}, iters, budget_s,
                       cuda)
    out["overlap_vs_max"] = out["overlapped"] / max(out["sim"], out["update"])
    out["speedup"] = out["serial"] / out["overlapped"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30, help="timed rounds per preset (at most)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per preset after which rounds stop")
    parser.add_argument("--workers", type=int, default=0, help="rollout workers (0: one per free core)")
    args, device = parse_device_args(parser)
    factories = env_factories("mt10", 0)
    with build_vector_env(factories) as sync, AsyncCollector(factories, args.workers) as workers:
        print(f"device={device} torch_threads={torch.get_num_threads()} workers={workers.num_workers} "
              f"shares={workers.shares()}")
        print(f"{'preset':<10} {'sim_ms':>8} {'update_ms':>10} {'serial_ms':>10} {'overlap_ms':>11} "
              f"{'overlap_vs_max':>15} {'speedup':>8}")
        results = {}
        for preset in ("mt10", "mt10_cpu"):
            r = results[preset] = bench_preset(preset, device, sync, workers, args.iters, args.budget)
            print(f"{preset:<10} {r['sim']:>8.2f} {r['update']:>10.2f} {r['serial']:>10.2f} {r['overlapped']:>11.2f} "
                  f"{r['overlap_vs_max']:>15.2f} {r['speedup']:>8.2f}")
    print(f"overlap_speedup_cpu_preset={results['mt10_cpu']['speedup']:.2f}")
    print(f"overlap_speedup={results['mt10']['speedup']:.2f}")


if __name__ == "__main__":
    main()
