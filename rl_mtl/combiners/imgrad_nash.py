"""IMGrad-Nash: Nash-MTL with imbalance sensitivity (IMGrad paper, §5.2, Eqn 12-13).

Eqn 13 re-weights the two parts of Nash-MTL's programme (Eqn 12, Navon et al. 2022, Eqn 3):

    min_ω  (1 − μ) Σ_i g_iᵀGω + μ φ(ω)   s.t.  φ_i(ω) = log ω_i + log (Mω)_i ≥ 0,  ω > 0,   φ = Σ_i φ_i,

with ``μ = cos θ`` between ``g_0`` and the MGDA direction ``g_m`` (clamped to [0, 1]; 0 when ``g_m = 0``; IMGrad's
:func:`imbalance_mu`, warm-started from call to call) and ``Σ_i g_iᵀGω = 1ᵀMω``. The authors released no code for it
(zzpustc/IMGrad holds only the IMGrad trainers), so it is solved in the reference's concave-convex framework: φ is
concave, so each step minimises the convex programme with φ linearised at the current point, ``min (1−μ)1ᵀMω + μ
∇φ(ω_t)ᵀω`` under the same constraints, until the iterates stop moving (relative change ``tol``) or Eqn 13 stops
decreasing by more than ``1e-3·tol`` relative (at most ``max_iter`` programmes) — a stationary point of Eqn 13, not
the reference's 20-step truncation.  ``solver="exact"`` (default) solves each programme exactly through its KKT
conditions (compiled active-set Newton with a barrier fallback, :mod:`concave_convex`); ``solver="cvxpy"`` solves it
with a conic solver (Clarabel at tolerances 1e-12), the reference the tests compare against.  Both share the start
and stop rules.

Start (:func:`feasible_start`).  Each iteration is warm-started from the previous call's stationary point, blended
with the bargaining point where the new Gram makes some ``(Mω)_i ≤ 0`` and lifted along its ray
(``ω / sqrt(min_i ω_i(Mω)_i)``) when it violates the new constraints — without the lift the descent test compared a
feasible step with an infeasible start and returned that start in about half the calls on drifting Grams.  The
exact solver also carries the last step's KKT multipliers (its active set).

Exact shortcut.  At the bargaining point α* (all constraints active, found by Newton, see ``nashmtl``), ∇φ = 2/α*
and the KKT multipliers of the linearised programme are ``λ = μ + (1−μ) [(diag(1/α*²) + M)⁻¹ M1] / α*``.  If
λ ≥ 0, α* is the programme's optimum at its own linearisation point, i.e. a fixed point of the iteration, and is
returned without any iteration.  Otherwise (strong imbalance with conflict: some multiplier negative) the
iteration runs, releasing the constraints of the tasks that the first term pushes up.

Conventions as Nash-MTL: solved on the trace-normalised Gram (so, unlike the reference's raw-unit programme, the
balance between the two terms does not depend on the gradient scale), weights mapped back as ``ω / sqrt(scale)``,
``max_norm`` clips ``‖d‖``.  A failed programme (no feasible start, a zero task gradient, a singular KKT system the
barrier cannot get past; for cvxpy also a non-optimal status or a returned point violating the constraints by over
1e-6) is counted in ``failures`` and the last good weights (else α*) are used; ``fallbacks`` (the mean) is untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rl_mtl.combiners import bargaining, concave_convex
from rl_mtl.combiners.base import Combiner
from rl_mtl.combiners.imgrad import imbalance_mu
from rl_mtl.combiners.nashmtl import _as_array, _as_list, _installed_conic_solver, solve_bargaining

SOLVERS = ("exact", "cvxpy")
#: conic-solver tolerances of the reference: at their defaults (1e-8) Clarabel's steps are off by up to 1e-4 in ω
#: on imbalanced Grams, which stops the iteration early; at 1e-12 a step agrees with the exact one to ~1e-7
_TIGHT = {
    "CLARABEL": {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12},
    "ECOS": {"abstol": 1e-12, "reltol": 1e-12, "feastol": 1e-12},
    "SCS": {"eps_abs": 1e-10, "eps_rel": 1e-10},
}


def feasible_start(gram: np.ndarray, warm: np.ndarray | None, fallback: np.ndarray) -> np.ndarray:
    """A start for the iteration on gram (K, K) that satisfies ``ω_i (Mω)_i ≥ 1``: ``warm`` (K,), moved towards
    ``fallback`` (the bargaining point, ``M α = 1/α > 0``) just far enough that ``Mω > 0`` where some ``(Mω)_i ≤ 0``
    (1.5× the smallest such blend), then lifted along its ray (``ω / sqrt(min_i ω_i(Mω)_i)``) when it violates a
    constraint; ``fallback`` when there is no usable warm start."""
    if warm is None or warm.shape != fallback.shape or not np.all(warm > 0):
        return fallback
    mw, ma = gram @ warm, gram @ fallback
    bad = mw <= 0
    if bad.any():
        if not np.all(ma[bad] > 0):
            return fallback
        theta = min(1.0, 1.5 * float(np.max(-mw[bad] / (ma[bad] - mw[bad]))))
        warm = (1.0 - theta) * warm + theta * fallback
        mw = gram @ warm
        if not np.all(mw > 0):
            return fallback
    low = float(np.min(warm * mw))
    return warm / np.sqrt(low) if low < 1.0 else warm


class IMGradNash(Combiner):
    """Eqn 13 weights; see the module docstring for the formulation, the solvers and the shortcut."""

    name = "imgrad_nash"
    warm_starts = {"_warm_mgda": "mgda_support"}

    def __init__(
        self, max_norm: float = 1.0, max_iter: int = 50, tol: float = 1e-6, solver: str = "exact", seed: int = 0
    ) -> None:
        if not max_norm >= 0.0:
            raise ValueError(f"max_norm must be >= 0 (0 disables the clip), got {max_norm}")
        if int(max_iter) < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter}")
        if not 0.0 < tol < 1.0:
            raise ValueError(f"tol must be in (0, 1), got {tol}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        super().__init__(seed)
        self.max_norm, self.max_iter, self.tol, self.solver = float(max_norm), int(max_iter), float(tol), solver
        self._programme: Any = None
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._warm: np.ndarray | None = None  # bargaining point of the last call (Newton warm start)
        self._last: np.ndarray | None = None  # last good ω on the normalised Gram
        self._ccp_prev: np.ndarray | None = None  # last stationary point found by the iteration (its warm start)
        self._ccp_lam: np.ndarray | None = None  # KKT multipliers of the exact solver's last step (its active set)
        self.failures = 0

    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        g = gram
        k = g.shape[0]
        mu = imbalance_mu(g, self._warm_mgda)
        nash, _, ok = solve_bargaining(g, self._warm)
        self._warm = nash if ok else None
        start = nash if ok else np.ones(k)
        mult = bargaining.shortcut_multipliers(g, start, mu)
        iters = 0
        if ok and float(mult.min()) >= -1e-12:
            omega: np.ndarray | None = nash
        else:
            # warm start from the last iteration's stationary point when there was one: consecutive Grams are close
            begin = feasible_start(g, self._ccp_prev, start)
            omega, iters = self._ccp(g, mu, begin, mult) if self.solver == "exact" else self._ccp_cvxpy(g, mu, begin)
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

    def _ccp(self, g: np.ndarray, mu: float, start: np.ndarray, mult: np.ndarray) -> tuple[np.ndarray | None, int]:
        """The iteration with exact steps (:func:`concave_convex.ccp`); (None, steps) when a step fails."""
        k = g.shape[0]
        warm = self._ccp_lam
        lam = warm.copy() if warm is not None and len(warm) == k else np.where(mult > 0, mult, 0.0)
        if not np.all(np.isfinite(lam)):
            lam = np.zeros(k)
        omega, iters, outcome, newton, global_steps, approx_steps = concave_convex.ccp(
            g, float(mu), np.ascontiguousarray(start, dtype=np.float64), lam, self.max_iter, self.tol
        )
        self._extra.update(
            ccp_newton_iters=float(newton), ccp_global_steps=float(global_steps), ccp_barrier_steps=float(approx_steps)
        )
        if outcome == concave_convex.FAILED:
            self._ccp_lam = None
            return None, int(iters)
        self._ccp_lam = lam
        return omega, int(iters)

    def _ccp_cvxpy(self, g: np.ndarray, mu: float, start: np.ndarray) -> tuple[np.ndarray | None, int]:
        """The same iteration with each programme solved by cvxpy; (None, steps) when a programme fails."""
        import cvxpy as cp  # local: only the reference solver needs it

        k = g.shape[0]
        if self._programme is None or self._programme[0] != k:
            var, gp, lin = cp.Variable(k, nonneg=True), cp.Parameter((k, k)), cp.Parameter(k)
            prob = cp.Problem(cp.Minimize(lin @ var), [cp.log(var) + cp.log(gp @ var) >= 0])
            self._programme = (k, prob, var, gp, lin)
        _, prob, var, gp, lin = self._programme
        gp.value = g
        push = (1.0 - mu) * (g @ np.ones(k))  # ∇ of (1−μ)·1ᵀMω
        omega = start
        value = concave_convex.eqn13(g, mu, omega)
        for it in range(1, self.max_iter + 1):
            mo = g @ omega
            if not (np.all(omega > 0) and np.all(mo > 0)):
                return None, it  # outside the logs' domain: no ∇φ (as the exact solver)
            grad_phi = 1.0 / omega + g.T @ (1.0 / mo)
            if not np.all(np.isfinite(grad_phi)):
                return None, it
            lin.value = push + mu * grad_phi
            try:
                solver = _installed_conic_solver()
                prob.solve(solver=solver, warm_start=True, **_TIGHT.get(solver, {}))
            except cp.SolverError:
                return None, it
            if var.value is None or prob.status not in ("optimal", "optimal_inaccurate"):
                return None, it
            new = np.maximum(np.asarray(var.value, dtype=np.float64), 1e-12)
            if not float(np.min(new * (g @ new))) >= 1.0 - 1e-6:
                return None, it  # an 'optimal' point that violates the constraints (near-singular Gram)
            moved = float(np.linalg.norm(new - omega)) / float(np.linalg.norm(omega))
            new_value = concave_convex.eqn13(g, mu, new)
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
            warm=_as_list(self._warm), last=_as_list(self._last), ccp_prev=_as_list(self._ccp_prev),
            ccp_lam=_as_list(self._ccp_lam), failures=self.failures,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._warm, self._last = _as_array(state["warm"]), _as_array(state["last"])
        self._ccp_prev = _as_array(state["ccp_prev"])
        self._ccp_lam = _as_array(state.get("ccp_lam"))  # absent in checkpoints from before the exact solver
        self.failures = int(state["failures"])
