"""Cost of per-task gradients inside one multi-task SAC update, in one process (architecture §4, §9).

Four updates on the same network and batch (default: 3×400 MLPs, batch 1280, K = 10, MT10's shapes):
  plain      — plain MTSAC: one backward of the mean loss;
  vmap       — all K per-task gradients with ``vmap(grad)``, their Gram, ``d = mean`` written back;
  k_backward — the same with K separate backward passes (what the papers' code does);
  imgrad     — the ``imgrad`` combiner on the vmap path (Gram + solve + write-back).
Prints ms per update and the ratios; the last line is ``pertask_vs_plain=<x>`` (target ≤ 1.5 on CPU).

    python scripts/bench_pertask.py [--preset mt10|mt10_cpu] [--device cpu|cuda] [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from rl_mtl.agents.mtsac import TaskLoss
from benchutil import K, agent_and_replay, median, parse_device_args, update_times
from rl_mtl.combiners import make
from rl_mtl.config import build_config
from rl_mtl.pertask import detached_params, gram, per_task_gradients, write_direction
from rl_mtl.routing import CombinedStep


def vmap_mean(task_loss: TaskLoss) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task gradients by vmap, Gram, mean direction written back."""
    G, losses, aux = per_task_gradients(task_loss.fn, detached_params(task_loss.params), task_loss.inputs)
    gram(G)
    write_direction(torch.full((K,), 1.0 / K, device=G.device), G, list(task_loss.params.values()))
    return losses, aux


def k_backward_mean(task_loss: TaskLoss) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task gradients by K backward passes through the shared graph, Gram, mean direction written back."""
    params = list(task_loss.params.values())
    losses, aux = task_loss.batched()
    rows = []
    for k in range(K):
        grads = torch.autograd.grad(losses[k], params, retain_graph=k < K - 1, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params)]))
    G = torch.stack(rows)
    gram(G)
    write_direction(torch.full((K,), 1.0 / K, device=G.device), G, params)
    return losses.detach(), aux.detach()


def time_variant(preset: str, device: torch.device, reducer: Callable[[], Callable[[TaskLoss], tuple]] | None,
                 repeats: int) -> float:
    """Median ms per ``agent.update`` with a ``reducer()`` each on critic and actor (None = plain MTSAC)."""
    agent, replay, batch_size = agent_and_replay(preset, device)
    if reducer is not None:
        agent.reducers["critic"] = reducer()
        agent.reducers["actor"] = reducer()
    return median(update_times(agent, replay, batch_size, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mt10")
    parser.add_argument("--repeats", type=int, default=20)
    args, device = parse_device_args(parser)
    cfg = build_config(args.preset)
    print(f"device={device} threads={torch.get_num_threads()} preset={args.preset} hidden={cfg.hidden_sizes} "
          f"batch={cfg.batch_size} K={K}")
    variants: dict[str, Callable[[], Callable[[TaskLoss], tuple]] | None] = {
        "plain": None,
        "vmap": lambda: vmap_mean,
        "k_backward": lambda: k_backward_mean,
        "imgrad": lambda: CombinedStep(make("imgrad"), diag_every=0),
    }
    ms = {}
    for name, reducer in variants.items():
        ms[name] = time_variant(args.preset, device, reducer, args.repeats)
        print(f"{name:<11} {ms[name]:9.2f} ms/update   x{ms[name] / ms['plain']:.2f} of plain")
    print(f"k_backward_vs_vmap={ms['k_backward'] / ms['vmap']:.2f}")
    print(f"imgrad_vs_plain={ms['imgrad'] / ms['plain']:.2f}")
    print(f"pertask_vs_plain={ms['vmap'] / ms['plain']:.2f}")


if __name__ == "__main__":
    main()
