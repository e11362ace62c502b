"""IMGrad-Nash: Nash-MTL with imbalance sensitivity (IMGrad paper, §5.2, Eqn 12-13).

Eqn 13 re-weights the two parts of Nash-MTL's programme (Eqn 12, Navon et al. 2022, Eqn 3):

    min_ω  (1 − μ) Σ_i g_iᵀGω + μ φ(ω)   s.t.  φ_i(ω) = log ω_i + log (Mω)_i ≥ 0,  ω > 0,   φ = Σ_i φ_i,

with ``μ = cos θ`` between ``g_0`` and the MGDA direction ``g_m`` (clamped to [0, 1]; 0 when ``g_m = 0``; IMGrad's
:func:`imbalance_mu`, warm-started from call to call) and ``Σ_i g_iᵀGω = 1ᵀMω``. The authors released no code for it
(zzpustc/IMGrad holds only the IMGrad trainers), so it is solved in the reference's concave-convex framework: φ is
concave, so each step minimises the convex programme with φ linearised at the current point, ``min (1−μ)1ᵀMω + μ
∇φ(ω_t)ᵀω`` under the same constraints, until the iterates stop moving (relative change ``tol``) or Eqn 13 stops
decreasing by more than the conic solver's accuracy (at most ``max_iter`` programmes) — a stationary point of Eqn 13
up to that accuracy, not the reference's 20-step truncation. Each run is warm-started from the previous call's
stationary point. At ``μ = ½`` the programme is Nash-MTL's (up to a factor 2).

Exact shortcut.  At the bargaining point α* (all constraints active, found by Newton, see ``nashmtl``), ∇φ = 2/α*
and the KKT multipliers of the linearised programme are ``λ = μ + (1−μ) [(diag(1/α*²) + M)⁻¹ M1] / α*``.  If
λ ≥ 0, α* is the programme's optimum at its own linearisation point, i.e. a fixed point of the iteration, and is
returned without any cvxpy call.  Otherwise (strong imbalance with conflict: some multiplier negative) the
iteration runs from α*, releasing the constraints of the tasks that the first term pushes up.

Conventions as Nash-MTL: solved on the trace-normalised Gram (so, unlike the reference's raw-unit programme, the
balance between the two terms does not depend on the gradient scale), weights mapped back as ``ω / sqrt(scale)``,
``max_norm`` clips ``‖d‖``.  A failed programme (infeasible or unbounded linearisation) is counted and the last good
weights (else α*) are used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rl_mtl.combiners.base import Combiner
from rl_mtl.combiners.imgrad import imbalance_mu
from rl_mtl.combiners.nashmtl import _as_array, _as_list, _installed_conic_solver, solve_bargaining


class IMGradNash(Combiner):
    """Eqn 13 weights; see the module docstring for the formulation and the shortcut."""

    name = "imgrad_nash"
    warm_starts = {"_warm_mgda": "mgda_support"}

    def __init__(self, max_norm: float = 1.0, max_iter: int = 50, tol: float = 1e-6, seed: int = 0) -> None:
        if not max_norm >= 0.0:
            raise ValueError(f"max_norm must be >= 0 (0 disables the clip), got {max_norm}")
        if int(max_iter) < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter}")
        if not 0.0 < tol < 1.0:
            raise ValueError(f"tol must be in (0, 1), got {tol}")
        super().__init__(seed)
        self.max_norm, self.max_iter, self.tol = float(max_norm), int(max_iter), float(tol)
        self._programme: Any = None
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._warm: np.ndarray | None = None  # bargaining point of the last call (Newton warm start)
        self._last: np.ndarray | None = None  # last good ω on the normalised Gram
        self._ccp_prev: np.ndarray | None = None  # last stationary point found by the iteration (its warm start)
        self.failures = 0

    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        g = gram
        k = g.shape[0]
        mu = imbalance_mu(g, self._warm_mgda)
        nash, _, ok = solve_bargaining(g, self._warm)
        self._warm = nash if ok else None
        start = nash if ok else np.ones(k)
        ones = np.ones(k)
        mult = mu + (1.0 - mu) * np.linalg.solve(np.diag(1.0 / start**2) + g, g @ ones) / start
        iters = 0
        if ok and float(mult.min()) >= -1e-12:
            omega: np.ndarray | None = nash
        else:
            # warm start from the last iteration's stationary point when there was one: consecutive Grams are close
            warm = self._ccp_prev if self._ccp_prev is not None and len(self._ccp_prev) == k else start
            omega, iters = self._ccp(g, mu, warm)
            self._ccp_prev = omega
        if omega is None:
            self.failures += 1
            omega = self._last if self._last is not None and len(self._last) == k else start
        self._last = omega
        raw = omega / np.sqrt(scale)
        norm_d = float(np.sqrt(max(float(omega @ g @ omega), 0.0)))  # ‖d‖ is scale-free: ω_rawᵀM ω_raw = ωᵀgram ω
        clipped = self.max_norm > 0 and norm_d > self.max_norm
        self._extra.update(
            cos_theta_used=mu,
            ccp_iters=float(iters),
            min_multiplier=float(mult.min()),
            norm_d=norm_d,
            clipped=float(clipped),
            failures_total=float(self.failures),
        )
        return raw * (self.max_norm / norm_d) if clipped else raw

    def _ccp(self, g: np.ndarray, mu: float, start: np.ndarray) -> tuple[np.ndarray | None, int]:
        """Concave-convex iteration on Eqn 13 from ``start``; (None, iterations) when a programme fails."""
        import cvxpy as cp  # local: only the non-shortcut branch needs it

        k = g.shape[0]
        if self._programme is None or self._programme[0] != k:
            var, gp, lin = cp.Variable(k, nonneg=True), cp.Parameter((k, k)), cp.Parameter(k)
            prob = cp.Problem(cp.Minimize(lin @ var), [cp.log(var) + cp.log(gp @ var) >= 0])
            self._programme = (k, prob, var, gp, lin)
        _, prob, var, gp, lin = self._programme
        gp.value = g
        push = (1.0 - mu) * (g @ np.ones(k))  # ∇ of (1−μ)·1ᵀMω
        omega = start
        value = _eqn13(g, mu, omega)
        for it in range(1, self.max_iter + 1):
            with np.errstate(divide="ignore"):
                grad_phi = 1.0 / omega + g.T @ (1.0 / (g @ omega))
            if not np.all(np.isfinite(grad_phi)):
                return None, it
            lin.value = push + mu * grad_phi
            try:
                prob.solve(solver=_installed_conic_solver(), warm_start=True)
            except cp.SolverError:
                return None, it
            if var.value is None or prob.status not in ("optimal", "optimal_inaccurate"):
                return None, it
            new = np.maximum(np.asarray(var.value, dtype=np.float64), 1e-12)
            moved = float(np.linalg.norm(new - omega)) / float(np.linalg.norm(omega))
            new_value = _eqn13(g, mu, new)
            # each step can only lower Eqn 13 (φ's linearisation majorises it); a rise is the conic solver's
            # tolerance, so stop there, keeping the better point
            if np.isfinite(value) and new_value >= value - self.tol * 1e-3 * (abs(value) + 1.0):
                return (new if new_value < value else omega), it
            omega, value = new, new_value
            if moved <= self.tol:
                return omega, it
        return omega, self.max_iter

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            warm=_as_list(self._warm), last=_as_list(self._last), ccp_prev=_as_list(self._ccp_prev), failures=self.failures
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._warm, self._last = _as_array(state["warm"]), _as_array(state["last"])
        self._ccp_prev = _as_array(state["ccp_prev"])
        self.failures = int(state["failures"])


def _eqn13(gram: np.ndarray, mu: float, omega: np.ndarray) -> float:
    """Objective of Eqn 13 at ω (K,) (+inf outside the domain of the logs)."""
    mo = gram @ omega
    if np.any(mo <= 0) or np.any(omega <= 0):
        return float("inf")
    return (1.0 - mu) * float(mo.sum()) + mu * float(np.sum(np.log(omega)) + np.sum(np.log(mo)))
