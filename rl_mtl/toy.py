"""The two-objective toy problem on R² (CAGrad's toy, reused by Nash-MTL and IMGrad Figures 2-3).

With ``LOWER = 5e-6`` and x = (x1, x2) (formulas: ``docs/architecture.md`` §11, "The toy two-task problem"):

    a1 = log(max(|0.5(−x1−7) − tanh(−x2)|, LOWER)) + 6,   a2 = log(max(|0.5(−x1+3) + tanh(−x2) + 2|, LOWER)) + 6
    b1 = ((−x1+7)² + 0.1(−x2−8)²)/10 − 20,               b2 = ((−x1−7)² + 0.1(−x2−8)²)/10 − 20
    c1 = max(tanh(x2/2), 0),   c2 = max(tanh(−x2/2), 0),   L1 = c1 a1 + c2 b1,   L2 = c1 a2 + c2 b2.

:func:`losses` is the torch definition (autograd-able).  The hot loop of :func:`trajectory` uses the hand-derived
Jacobian :func:`losses_and_jacobian` in numpy instead (tested against autograd, including torch's convention that a
clamp passes the gradient at its boundary, which matters at the start (0, 0)): 35k steps then cost about as much as
the 35k combiner calls.  The optimiser is Adam (lr 1e-3) on x fed with ``d = Σ w_k ∇(λ_k L_k)``, as in the Nash-MTL
and IMGrad toy scripts.  Loss-based combiners (FAMO) see ``λ_k L_k − λ_k·LOSS_FLOOR``: the losses are ≥ −21
(``b`` ≥ −20 and ``a`` ≥ log(5e-6) + 6 > −7), and FAMO's toy sets the same floor (``min_losses = −21``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar
from torch import Tensor

from rl_mtl.combiners import make

LOWER = 5e-6
#: a lower bound of both losses, subtracted before they reach loss-based combiners (FAMO needs ℓ ≥ 0)
LOSS_FLOOR = -21.0
#: the initial points of the Nash-MTL / IMGrad figures
STARTS: list[tuple[float, float]] = [(-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)]


def losses(x: Tensor) -> Tensor:
    """(L1, L2) at x: (2,) tensor (any float dtype; differentiable)."""
    x1, x2 = x[0], x[1]
    a1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    a2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    b1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    b2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = torch.clamp(torch.tanh(x2 / 2), 0)
    c2 = torch.clamp(torch.tanh(-x2 / 2), 0)
    return torch.stack([c1 * a1 + c2 * b1, c1 * a2 + c2 * b2])


def losses_and_jacobian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Losses (2,) and Jacobian (2, 2) (row k = ∇L_k) at x: (2,), in closed form matching torch's autograd."""
    x1, x2 = float(x[0]), float(x[1])
    th, th_half = np.tanh(x2), np.tanh(x2 / 2)
    sech2, sech2_half = 1.0 - th * th, 1.0 - th_half * th_half
    u1, u2 = -0.5 * x1 - 3.5 + th, -0.5 * x1 + 3.5 - th
    du1, du2 = np.array([-0.5, sech2]), np.array([-0.5, -sech2])
    a1, a2 = np.log(max(abs(u1), LOWER)) + 6, np.log(max(abs(u2), LOWER)) + 6
    da1 = du1 / u1 if abs(u1) >= LOWER else np.zeros(2)  # torch's clamp passes the gradient where |u| ≥ LOWER
    da2 = du2 / u2 if abs(u2) >= LOWER else np.zeros(2)
    sq = 0.1 * (x2 + 8) ** 2
    b1, b2 = ((x1 - 7) ** 2 + sq) / 10 - 20, ((x1 + 7) ** 2 + sq) / 10 - 20
    db1, db2 = np.array([(x1 - 7) / 5, 0.02 * (x2 + 8)]), np.array([(x1 + 7) / 5, 0.02 * (x2 + 8)])
    c1, c2 = max(th_half, 0.0), max(-th_half, 0.0)
    dc1 = np.array([0.0, 0.5 * sech2_half if th_half >= 0 else 0.0])
    dc2 = np.array([0.0, -0.5 * sech2_half if th_half <= 0 else 0.0])
    values = np.array([c1 * a1 + c2 * b1, c1 * a2 + c2 * b2])
    jac = np.stack([c1 * da1 + a1 * dc1 + c2 * db1 + b1 * dc2, c1 * da2 + a2 * dc1 + c2 * db2 + b2 * dc2])
    return values, jac


def trajectory(
    method: str,
    start: tuple[float, float],
    weights: tuple[float, float] = (0.5, 0.5),
    steps: int = 35_000,
    lr: float = 1e-3,
    **hparams: float | int | str,
) -> np.ndarray:
    """Points (steps + 1, 2) visited by Adam on x from ``start`` with combiner ``method`` on the weighted losses.

    weights: λ multiplying (L1, L2) before the task gradients are taken (IMGrad Figure 2 uses (0.9, 0.1)).
    """
    combiner = make(method, **hparams)
    lam = np.asarray(weights, dtype=np.float64)
    floor = lam * LOSS_FLOOR
    x = np.asarray(start, dtype=np.float64).copy()
    m, v = np.zeros(2), np.zeros(2)
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults, as the reference scripts use
    path = np.empty((steps + 1, 2))
    path[0] = x
    values, jac = losses_and_jacobian(x)
    for t in range(1, steps + 1):
        grads = lam[:, None] * jac
        gram = torch.from_numpy(grads @ grads.T) if combiner.needs_gram else None
        w = combiner(gram, torch.from_numpy(lam * values - floor)).numpy()
        d = w @ grads
        m = beta1 * m + (1 - beta1) * d
        v = beta2 * v + (1 - beta2) * d * d
        x = x - lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + adam_eps)
        values, jac = losses_and_jacobian(x)
        combiner.after_step(torch.from_numpy(lam * values - floor))
        path[t] = x
    return path


def global_optimum(weights: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """★ = argmin_x λ1 L1 + λ2 L2 (2,), by L-BFGS from a grid of starts (≈ (0, −8.36) for equal weights)."""
    return _global_optimum(float(weights[0]), float(weights[1]))


@lru_cache(maxsize=64)
def _global_optimum(w1: float, w2: float) -> np.ndarray:
    lam = np.array([w1, w2])

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        values, jac = losses_and_jacobian(x)
        return float(lam @ values), lam @ jac

    best = None
    for s1 in np.linspace(-9.0, 9.0, 7):
        for s2 in (-9.0, -6.0, -3.0):
            res = minimize(fun, np.array([s1, s2]), jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
            if best is None or res.fun < best.fun:
                best = res
    return best.x.copy()


@lru_cache(maxsize=4)
def pareto_front(n: int = 101) -> np.ndarray:
    """Points (n, 2) of the Pareto set in x-space: the minimisers of ``λL1 + (1−λ)L2`` for λ ∈ [0.005, 0.995].

    Below x2 = 0 the losses are ``c2(x2)·b_k``, so for fixed x2 the x1-minimiser is ``14λ − 7`` and only x2 needs a
    scalar search (the optima all lie in that half-plane, where the losses reach −20).
    """
    points = []
    for lam in np.linspace(0.005, 0.995, n):
        x1 = 14.0 * lam - 7.0
        res = minimize_scalar(
            lambda x2: float(np.array([lam, 1.0 - lam]) @ losses_and_jacobian(np.array([x1, x2]))[0]),
            bounds=(-12.0, -1e-6),
            method="bounded",
            options={"xatol": 1e-9},
        )
        points.append((x1, float(res.x)))
    return np.array(points)
