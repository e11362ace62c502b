"""Trajectories of every registered combiner on the two-task toy problem (IMGrad Figures 2-3, Nash-MTL Figure 1).

    python scripts/toy.py --weights 0.9,0.1 --out toy_0.9_0.1.png
    python scripts/toy.py --methods imgrad,nashmtl --steps 5000

Draws, per method, the contour of ``λ1 L1 + λ2 L2``, the Pareto set, the global optimum ★ and the trajectories from
the five starts of the papers; prints per method and start the final point, its distance to ★ and whether it ended
within ``--tol`` of ★.  Runs the (method, start) pairs in ``--jobs`` processes.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl_mtl import combiners, toy  # noqa: E402  (after the sys.path line so the script runs uninstalled)


def _run(args: tuple[str, tuple[float, float], tuple[float, float], int]) -> np.ndarray:
    method, start, weights, steps = args
    return toy.trajectory(method, start, weights=weights, steps=steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="0.5,0.5", help="λ1,λ2 multiplying L1, L2 (Figure 2: 0.9,0.1)")
    parser.add_argument("--steps", type=int, default=35_000, help="Adam steps per trajectory")
    parser.add_argument("--methods", default=",".join(combiners.names()), help="comma-separated combiner names")
    parser.add_argument("--out", type=Path, default=Path("toy.png"), help="PNG to write")
    parser.add_argument("--tol", type=float, default=0.1, help="distance to ★ that counts as reaching it")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    args = parser.parse_args(argv)

    weights = tuple(float(v) for v in args.weights.split(","))
    if len(weights) != 2 or min(weights) < 0:
        parser.error(f"--weights must be two non-negative numbers, got {args.weights!r}")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(combiners.names()))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(combiners.names())}")

    jobs = [(m, s, weights, args.steps) for m in methods for s in toy.STARTS]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        paths = list(pool.map(_run, jobs))
    star = toy.global_optimum(weights)

    print(f"weights {weights}, {args.steps} steps, ★ = ({star[0]:.3f}, {star[1]:.3f}), tolerance {args.tol}")
    print(f"{'method':<12} {'start':<14} {'final point':<22} {'dist to ★':>9}  reached")
    reached: dict[str, int] = {m: 0 for m in methods}
    for (method, start, _, _), path in zip(jobs, paths):
        dist = float(np.linalg.norm(path[-1] - star))
        ok = dist <= args.tol
        reached[method] += ok
        final = f"({path[-1][0]:.3f}, {path[-1][1]:.3f})"
        print(f"{method:<12} {str(start):<14} {final:<22} {dist:>9.3f}  {'yes' if ok else 'no'}")
    print("reached ★: " + ", ".join(f"{m} {reached[m]}/{len(toy.STARTS)}" for m in methods))

    _plot(methods, jobs, paths, weights, star, args.out)
    print(f"wrote {args.out}")
    return 0


def _plot(
    methods: list[str],
    jobs: list[tuple[str, tuple[float, float], tuple[float, float], int]],
    paths: list[np.ndarray],
    weights: tuple[float, float],
    star: np.ndarray,
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    grid = np.linspace(-10.0, 10.0, 201)
    xx, yy = np.meshgrid(grid, grid)
    pts = torch.tensor(np.stack([xx.ravel(), yy.ravel()]), dtype=torch.float64)
    values = toy.losses(pts).numpy()  # losses() broadcasts over a (2, N) batch
    zz = (weights[0] * values[0] + weights[1] * values[1]).reshape(xx.shape)
    front = toy.pareto_front()

    cols = min(len(methods), 3)
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 5 * rows), squeeze=False)
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    for ax, method in zip(axes.ravel(), methods):
        ax.contour(xx, yy, zz, levels=30, cmap="Greys", linewidths=0.6)
        ax.plot(front[:, 0], front[:, 1], color="grey", lw=3, alpha=0.6, label="Pareto set")
        for i, ((m, start, _, _), path) in enumerate((j, p) for j, p in zip(jobs, paths) if j[0] == method):
            ax.plot(path[:, 0], path[:, 1], color=colours[i], lw=1.5)
            ax.plot(*start, "o", color=colours[i], ms=5)
            ax.plot(*path[-1], "x", color=colours[i], ms=7)
        ax.plot(*star, "*", color="gold", mec="k", ms=16, label="★ global optimum")
        ax.set_title(method)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
    for ax in axes.ravel()[len(methods) :]:
        ax.axis("off")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"toy problem, weights {weights}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
