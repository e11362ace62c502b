"""Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, Eqn 2-3).

The Nash bargaining weights ``α > 0`` solve ``Mα = 1/α`` on the raw Gram ``M = G Gᵀ``, i.e.
``α_i (Mα)_i = 1`` for every task.  That is the stationarity condition of the strictly convex, self-concordant
``f(α) = ½ αᵀMα − Σ log α_i``, so ``solver="newton"`` (default) runs Newton's method with a positivity-keeping
backtracking line search, warm-started from the previous solution: a few iterations to machine precision, compiled
(:mod:`bargaining`, numba) because at K = 10 numpy's per-call overhead was 20× the arithmetic.  A tiny
ridge is added when ``M`` is numerically singular: without it ``f`` is unbounded below exactly when some
non-negative combination of gradients vanishes (a Pareto-stationary point), and the ridge then sends ``α`` along
that combination, whose direction is ~0 — the right answer there.

``solver="reference"`` is the procedure of AvivNavon/nash-mtl ``weight_methods.py``: up to ``optim_niter = 20``
convex programmes ``min Σ_i (Gn α)_i + ∇φ(α_t)ᵀα / nf  s.t.  log(α_i nf) + log((Gn α)_i) ≥ 0`` (Gn = M/‖M‖_F,
nf = ‖M‖_F, φ linearised at the previous iterate), its stop tests and its "return the iterate before the last
solve".  Deliberate differences: the programme is compiled once with parameters (DPP; the reference rebuilt it every
call) and solved by Clarabel (ECOS, the reference's choice, is not installed), and a failed solve is counted.

Conventions.  The weights returned are the raw α of the paper (no rescaling to sum 1), so ``d = Σ α_i g_i`` has
``‖d‖² = αᵀMα = K`` at the exact solution whatever the gradient scale.  ``max_norm`` then clips ``‖d‖`` for real
(α scaled down when ``sqrt(αᵀMα) > max_norm``; 0 disables).  The reference's default is 1.0, applied with
``clip_grad_norm_`` on the shared parameters; in several copies of it (e.g. the RL port in Cranial-XIX/FAMO) the clip
runs *before* ``loss.backward()`` and so never clips anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rl_mtl.combiners import bargaining
from rl_mtl.combiners.base import Combiner


def solve_bargaining(
    gram: np.ndarray, start: np.ndarray | None = None, max_iter: int = 100, rtol: float = 1e-13
) -> tuple[np.ndarray, int, bool]:
    """Newton's method for ``α_i (Mα)_i = 1`` (argmin of ``½αᵀMα − Σ log α_i``), compiled
    (:func:`bargaining.bargaining`).

    gram: (K, K) PSD, ideally trace-normalised; start: (K,) positive warm start or None (then ``1/sqrt(M_ii)``, exact
    for orthogonal gradients).  Returns ``(α (K,), Newton iterations, converged)``; converged means
    ``max_i |α_i (Mα)_i − 1| ≤ rtol``, or ≤ 1e-9 where rounding stops the quadratic convergence earlier.
    """
    warm = _NO_START if start is None else np.ascontiguousarray(start, dtype=np.float64).reshape(-1)
    a, iters, ok = bargaining.bargaining(np.ascontiguousarray(gram, dtype=np.float64), warm, int(max_iter), float(rtol))
    return a, int(iters), bool(ok)


_NO_START = np.zeros(0)


class NashMTL(Combiner):
    """Nash bargaining weights; see the module docstring for the solvers and the raw-α convention."""

    name = "nashmtl"

    def __init__(
        self, solver: str = "newton", max_norm: float = 1.0, update_weights_every: int = 1, seed: int = 0
    ) -> None:
        if solver not in ("newton", "reference"):
            raise ValueError(f"solver must be one of 'newton', 'reference', got {solver!r}")
        if not max_norm >= 0.0:
            raise ValueError(f"max_norm must be >= 0 (0 disables the clip), got {max_norm}")
        if int(update_weights_every) < 1:
            raise ValueError(f"update_weights_every must be an integer >= 1, got {update_weights_every}")
        super().__init__(seed)
        self.solver = solver
        self.max_norm = float(max_norm)
        self.update_weights_every = int(update_weights_every)
        self.optim_niter = 20
        self._programme: Any = None
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._warm: np.ndarray | None = None  # last solution on the normalised Gram (Newton warm start)
        self._ref_prev: np.ndarray | None = None  # reference procedure's raw warm start (ones at first)
        self._last_raw: np.ndarray | None = None  # last good raw α, reused between updates and on failure
        self._step = 0
        self.failures = 0

    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        g = gram
        k = g.shape[0]
        due = self._step % self.update_weights_every == 0 or self._last_raw is None or len(self._last_raw) != k
        self._step += 1
        if due:
            raw = self._newton(g, scale) if self.solver == "newton" else self._reference(g, scale)
            if raw is None:
                self.failures += 1
                self._warm = None
                raw = self._last_raw if self._last_raw is not None and len(self._last_raw) == k else np.full(k, 1 / k)
            self._last_raw = raw
        else:
            raw = self._last_raw
        # ‖d‖ = sqrt(α_rawᵀ M α_raw) with M = scale · gram
        norm_d = float(np.sqrt(max(scale * float(raw @ g @ raw), 0.0)))
        clipped = self.max_norm > 0 and norm_d > self.max_norm
        weights = raw * (self.max_norm / norm_d) if clipped else raw
        self._extra.update(
            kkt_residual=float(np.max(np.abs(raw * (g @ raw) * scale - 1.0))),
            norm_d=norm_d,
            clipped=float(clipped),
            failures_total=float(self.failures),
        )
        return np.array(weights, dtype=np.float64)

    def _newton(self, g: np.ndarray, scale: float) -> np.ndarray | None:
        a, iters, ok = solve_bargaining(g, self._warm)
        self._extra["solver_iters"] = float(iters)
        if not ok or not np.all(np.isfinite(a)):
            return None
        self._warm = a
        return a / np.sqrt(scale)  # Mα = 1/α on M = scale·gram  ⇔  α = α_norm / sqrt(scale)

    def _reference(self, g: np.ndarray, scale: float) -> np.ndarray | None:
        import cvxpy as cp  # local: cvxpy is slow to import and only this solver needs it

        k = g.shape[0]
        if self._programme is None or self._programme[0] != k:
            var = cp.Variable(k, nonneg=True)
            gp, lin, lognf = cp.Parameter((k, k)), cp.Parameter(k), cp.Parameter()
            # the reference's −log(α_i nf) − log(Gn α)_i ≤ 0; its objective without the constant −∇φᵀα_t/nf
            prob = cp.Problem(cp.Minimize(cp.sum(gp @ var) + lin @ var), [cp.log(var) + cp.log(gp @ var) >= -lognf])
            self._programme = (k, prob, var, gp, lin, lognf)
        _, prob, var, gp, lin, lognf = self._programme
        nf = scale * float(np.linalg.norm(g))  # Frobenius norm of the raw Gram
        gn = g / np.linalg.norm(g)
        gp.value, lognf.value = gn, float(np.log(nf))
        a_t = self._ref_prev if self._ref_prev is not None and len(self._ref_prev) == k else np.ones(k)
        failed, iters = False, 0
        for iters in range(1, self.optim_niter + 1):
            with np.errstate(divide="ignore"):
                grad_phi = 1.0 / a_t + gn.T @ (1.0 / (gn @ a_t))  # ∇φ at α_t, as the reference forms it
            if not np.all(np.isfinite(grad_phi)):
                failed = True
                break
            lin.value = grad_phi / nf
            try:
                prob.solve(solver=_installed_conic_solver(), warm_start=True)
            except cp.SolverError:
                failed = True
                break
            if var.value is None or prob.status not in ("optimal", "optimal_inaccurate"):
                failed = True
                break
            new = np.asarray(var.value, dtype=np.float64)
            if np.linalg.norm(gn @ a_t - 1.0 / (a_t + 1e-10)) < 1e-3 or np.linalg.norm(new - a_t) < 1e-6:
                break  # the reference returns the iterate from before this last solve
            a_t = new
        self._extra["solver_iters"] = float(iters)
        if failed and iters == 1:
            return None  # nothing solved in this call: the caller falls back to the last good α
        self._ref_prev = a_t
        return a_t.copy()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            warm=_as_list(self._warm),
            ref_prev=_as_list(self._ref_prev),
            last_raw=_as_list(self._last_raw),
            step=self._step,
            failures=self.failures,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._warm = _as_array(state["warm"])
        self._ref_prev = _as_array(state["ref_prev"])
        self._last_raw = _as_array(state["last_raw"])
        self._step = int(state["step"])
        self.failures = int(state["failures"])


def _installed_conic_solver() -> str:
    """ECOS as in the reference when installed, else Clarabel, else SCS (all handle the exponential cone)."""
    import cvxpy as cp

    installed = cp.installed_solvers()
    return next(s for s in ("ECOS", "CLARABEL", "SCS") if s in installed)


def _as_list(x: np.ndarray | None) -> list[float] | None:
    return None if x is None else [float(v) for v in x]


def _as_array(x: list[float] | None) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype=np.float64)
