"""Overhead of a loss weighting on the multi-task SAC update, in one process (DESIGN §6; issue target ≤ 10 %).

For each method (plain ``mtsac`` and a gradient combiner, ``imgrad`` by default) the same agent, replay and batch
sequence run ``--updates`` updates unweighted and with each weighting; the updates span several hold windows, so
the cost of IGBv2's meta-SAC (its acting and learning at each window boundary) and of its same-batch loss
re-evaluations is included in the mean.  Variants run in interleaved blocks so that machine noise hits them alike.
Prints ms per update and the ratio to the unweighted update; the last line is ``igbv2_overhead=<x>`` (the
fractional extra cost of ``imgrad`` + ``igbv2``, target ≤ 0.10).

    python scripts/bench_weighting.py [--preset mt10_cpu|mt10] [--updates 600] [--hold 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from agents.mtsac import MTSAC
from agents.replay import MultiTaskReplay
from benchutil import agent_and_replay
from rl_mtl.routing import build_steps
from rl_mtl.trainer import resolve_device


def build(preset: str, device: torch.device, method: str, weighting: str, hold: int
          ) -> tuple[MTSAC, MultiTaskReplay, int]:
    """A fresh seeded agent with ``method`` and ``weighting`` routed in, on the shared random replay."""
    agent, replay, batch_size = agent_and_replay(preset, device)
    opts = {} if weighting == "none" else {"hold": hold}
    agent.reducers.update(build_steps(method, {}, "auto", 0, 0, weighting, opts, "critic"))
    return agent, replay, batch_size


def run_block(agent: MTSAC, replay: MultiTaskReplay, batch_size: int, updates: int) -> float:
    """Wall seconds of ``updates`` updates (device synchronised at the end)."""
    batches = [replay.sample(batch_size) for _ in range(updates)]
    if agent.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for batch in batches:
        agent.update(batch)
    if agent.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mt10_cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="mtsac,imgrad")
    parser.add_argument("--weightings", default="rlw,igbv1,igbv2")
    parser.add_argument("--updates", type=int, default=600, help="timed updates per variant (several windows)")
    parser.add_argument("--hold", type=int, default=100, help="updates per weight choice")
    parser.add_argument("--blocks", type=int, default=3, help="interleaved timing blocks per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    methods = args.methods.split(",")
    weightings = ["none", *args.weightings.split(",")]
    print(f"device={device} threads={torch.get_num_threads()} preset={args.preset} updates={args.updates} "
          f"hold={args.hold}")
    variants = {(m, w): build(args.preset, device, m, w, args.hold) for m in methods for w in weightings}
    for agent, replay, batch_size in variants.values():  # warm-up: first windows, allocator, meta networks
        run_block(agent, replay, batch_size, 2 * args.hold + 5)
    seconds = dict.fromkeys(variants, 0.0)
    per_block = max(1, args.updates // args.blocks)
    for _ in range(args.blocks):
        for key, (agent, replay, batch_size) in variants.items():
            seconds[key] += run_block(agent, replay, batch_size, per_block)
    ms = {key: 1e3 * s / (per_block * args.blocks) for key, s in seconds.items()}
    print(f"{'method':<10}{'weighting':<11}{'ms/update':>10}{'vs none':>9}")
    for (method, name), value in ms.items():
        print(f"{method:<10}{name:<11}{value:>10.2f}{value / ms[(method, 'none')]:>9.3f}")
    key = ("imgrad", "igbv2") if ("imgrad", "igbv2") in ms else next(k for k in ms if k[1] == "igbv2")
    print(f"igbv2_overhead={ms[key] / ms[(key[0], 'none')] - 1.0:.3f}")


if __name__ == "__main__":
    main()
