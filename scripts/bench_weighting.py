"""Overhead of a loss weighting on the multi-task SAC update, in one process (architecture §6; issue target ≤ 10 %).

For each method (plain ``mtsac`` and a gradient combiner, ``imgrad`` by default) the same agent, replay and batch
sequence run ``--updates`` updates unweighted and with each weighting; the updates span several hold windows, so
the cost of IGBv2's meta-SAC (its acting and learning at each window boundary) and of its same-batch loss
re-evaluations is included in the mean; IGBv2 is first fast-forwarded past the windows in which its meta-replay
is still too small to learn from, so that its meta updates are timed too.  Variants run in interleaved blocks so
that machine noise hits them alike.
Prints ms per update, the ratio to the unweighted update (median over blocks of each block's ratio to the
unweighted block run just before it) and, measured directly, the time spent inside the weighting per update (its
``factors``/``weights``, ``observe_norms`` and the routing's ``after_step``: window sums, IGBv2's meta-SAC, the
same-batch re-evaluation; for ``grad_scale`` on the plain ``mtsac`` path also the per-task gradient pass it takes
once per window — on a Gram route its norms are the Gram's diagonal, free) as a share of the unweighted update —
on a noisy machine the block ratios scatter by ±5 % while the direct figure is stable.  The last lines are
``grad_scale_overhead=<x>`` (that share for ``mtsac`` + ``grad_scale``, the path where it costs something) and
``igbv2_overhead=<x>`` (for ``imgrad`` + ``igbv2``, target ≤ 0.10).

    python scripts/bench_weighting.py [--preset mt10_cpu|mt10] [--updates 1000] [--hold 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rl_mtl.agents.mtsac import MTSAC
from rl_mtl.agents.replay import MultiTaskReplay
from benchutil import K, agent_and_replay, parse_device_args
from rl_mtl.routing import build_steps
from rl_mtl.weighting import Weighting


def prime(weighter: Weighting, device: torch.device, windows: int) -> None:
    """Fast-forward a weighting through ``windows`` hold windows on made-up losses, so that the timing sees its
    steady state (IGBv2's meta-SAC learns only once its replay holds a batch of meta-transitions)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(windows * weighter.hold):
        losses = (torch.rand(K, generator=gen) + 0.5).to(device)
        weighter.weights(losses, {"success": [0.5] * K, "progress": 0.5})
        weighter.observe(losses, losses * 0.99 if weighter.needs_after() else None)


class Stopwatch:
    """Wall time spent inside wrapped methods (the weighting's own work), accumulated across calls."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, obj: object, name: str) -> None:
        inner = getattr(obj, name)

        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(obj, name, timed)


def build(preset: str, device: torch.device, method: str, weighting: str, hold: int
          ) -> tuple[MTSAC, MultiTaskReplay, int]:
    """A fresh seeded agent with ``method`` and ``weighting`` routed in, on the shared random replay."""
    agent, replay, batch_size = agent_and_replay(preset, device)
    opts = {} if weighting in ("none", "si", "uw") else {"hold": hold}
    steps = build_steps(method, {}, "auto", 0, 0, weighting, opts, "critic")
    for step in steps.values():
        if step.weighting is not None and step.weighting.name == "igbv2":
            prime(step.weighting, device, windows=step.weighting.meta_warmup_windows())
    agent.reducers.update(steps)
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
    parser.add_argument("--methods", default="mtsac,imgrad")
    parser.add_argument("--weightings", default="si,rlw,igbv1,igbv2,grad_scale,uw,dwa")
    parser.add_argument("--updates", type=int, default=1000, help="timed updates per variant (several windows)")
    parser.add_argument("--hold", type=int, default=100, help="updates per weight choice")
    parser.add_argument("--blocks", type=int, default=10, help="interleaved timing blocks per variant")
    args, device = parse_device_args(parser)
    methods = args.methods.split(",")
    weightings = ["none", *args.weightings.split(",")]
    print(f"device={device} threads={torch.get_num_threads()} preset={args.preset} updates={args.updates} "
          f"hold={args.hold}")
    variants = {(m, w): build(args.preset, device, m, w, args.hold) for m in methods for w in weightings}
    # direct attribution: time inside weights() (incl. IGBv2's meta-SAC at window boundaries) and after_step()
    # (the same-batch re-evaluation and observe()) — robust where the totals drown in the machine's noise
    watches = {key: Stopwatch() for key in variants}
    for key, (agent, _, _) in variants.items():
        for step in agent.reducers.values():
            if getattr(step, "weighting", None) is not None:
                watches[key].wrap(step.weighting, "factors")  # weights() and the factors s
                watches[key].wrap(step.weighting, "observe_norms")
                watches[key].wrap(step, "after_step")
                if step.plain and step.diag_every == 0:  # every per-task pass on this path is grad_scale's
                    watches[key].wrap(step, "gradients_and_gram")
    for agent, replay, batch_size in variants.values():  # warm-up: first windows, allocator, meta networks
        run_block(agent, replay, batch_size, 2 * args.hold + 5)
    for watch in watches.values():
        watch.seconds = 0.0
    blocks: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    per_block = max(1, args.updates // args.blocks)
    for _ in range(args.blocks):
        for key, (agent, replay, batch_size) in variants.items():
            blocks[key].append(run_block(agent, replay, batch_size, per_block))
    ms = {key: 1e3 * sum(times) / (per_block * args.blocks) for key, times in blocks.items()}
    # the ratio of each block to the unweighted block run right before it shares the machine's state: their median
    # is far steadier on a noisy machine than the ratio of the totals
    ratio = {key: statistics.median(t / n for t, n in zip(times, blocks[(key[0], "none")]))
             for key, times in blocks.items()}
    spent = {key: 1e3 * w.seconds / (per_block * args.blocks) for key, w in watches.items()}
    print(f"{'method':<10}{'weighting':<11}{'ms/update':>10}{'block ratio':>12}{'in weighting ms':>16}"
          f"{'share of unweighted':>21}")
    for (method, name), value in ms.items():
        share = spent[(method, name)] / ms[(method, "none")]
        print(f"{method:<10}{name:<11}{value:>10.2f}{ratio[(method, name)]:>12.3f}{spent[(method, name)]:>16.3f}"
              f"{share:>21.3f}")
    for name, preferred in (("grad_scale", "mtsac"), ("igbv2", "imgrad")):
        key = (preferred, name) if (preferred, name) in ms else next((k for k in ms if k[1] == name), None)
        if key is not None:
            print(f"{name}_overhead={spent[key] / ms[(key[0], 'none')]:.3f}")


if __name__ == "__main__":
    main()
