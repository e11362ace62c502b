"""IMGrad (imbalance-sensitive CAGrad; IMGrad paper §5.1, Eqn 8–11).

``μ = cos θ`` between ``g_0`` and the MGDA direction ``g_m`` (Eqn 9; clamped to [0, 1], 0 when ``g_m = 0``),
``s = c‖g_0‖``; ``w*`` minimises one of three objectives over the simplex, then — in every form, as in the
released code — ``d = (g_0 + s g_w*/‖g_w*‖)·rescale``, i.e. ``weights = (1/K + s/‖g_w*‖ · w*)·rescale``:

* ``form="release"`` (default; zzpustc/IMGrad ``nyuv2/utils.py::imgrad``, which produced the published numbers):
  ``(1.5 − μ) g_wᵀg_0 + μ s‖g_w‖`` — CAGrad's Eqn 10 with its two terms re-weighted.  At μ = 0 the norm term
  vanishes and the problem is the linear programme ``min_k g_kᵀg_0`` (a vertex), so it does NOT reduce to CAGrad;
  at μ = 1 it is CAGrad with c doubled (the objective is ½·(g_wᵀg_0 + 2s‖g_w‖)).
* ``form="eqn11"`` (paper Eqn 11): ``(1 − μ) g_wᵀg_0 + μ s‖g_w‖²``.  At μ = 0 it is the same linear programme.
* ``form="eqn9"`` (paper Eqn 9, before the "simplification"): ``(1 − μ)(g_wᵀg_0 + s‖g_w‖) + μ‖g_w‖²``; at μ = 0
  it is exactly CAGrad, at μ = 1 exactly MGDA's min-norm point.

Paper vs release: Eqn 11 squares ‖g_w‖ and weights the linear term by (1 − μ); the code keeps ‖g_w‖ and uses
(1.5 − μ).  The released code feeds the raw (unclamped) cosine; ours clamps to [0, 1], which changes nothing in
theory since ``g_0ᵀg_m ≥ ‖g_m‖² ≥ 0``.  Defaults c = 0.9 and rescale 1/(1+c²) follow CAGrad's MT10 setup (no RL
code was released; the authors used c = 0.8 on NYUv2).  ``mu`` fixes μ for ablations.
"""

from __future__ import annotations

import numpy as np

from rl_mtl.combiners import active_set, solvers
from rl_mtl.combiners.base import Combiner
from rl_mtl.combiners.cagrad import check_c_rescale, conflict_averse_weights, rescale_factor

FORMS = ("release", "eqn11", "eqn9")


def imbalance_mu(gram: np.ndarray, warm: solvers.WarmStart | None = None) -> float:
    """μ = cos θ between g_0 and the MGDA direction, clamped to [0, 1]; gram: (K, K) PSD; ``warm`` carries the
    MGDA support from call to call."""
    wm = (warm.min_norm(gram) if warm is not None else solvers.min_norm(gram)).weights
    gm_norm, floor, g0_gm, g0 = active_set.norm_stats(gram, wm)
    if gm_norm <= 1e-7 * floor or g0 <= 0.0:
        # Pareto-stationary (g_m = 0): the released code's cosine_similarity (eps 1e-8) returns ~0 here too
        return 0.0
    return min(max(g0_gm / (g0 * gm_norm), 0.0), 1.0)


class IMGrad(Combiner):
    """Imbalance-sensitive conflict-averse gradient descent."""

    name = "imgrad"
    warm_starts = {"_warm": "support", "_warm_mgda": "mgda_support"}

    def __init__(
        self,
        c: float = 0.9,
        rescale: str = "1/(1+c^2)",
        form: str = "release",
        mu: float | None = None,
        solver: str = "exact",
        seed: int = 0,
    ) -> None:
        check_c_rescale(c, rescale)
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        if mu is not None and not 0.0 <= mu <= 1.0:
            raise ValueError(f"mu must be None (adaptive cos θ) or in [0, 1], got {mu}")
        if solver not in ("exact", "cvxpy"):
            raise ValueError(f"solver must be one of ('exact', 'cvxpy'), got {solver!r}")
        super().__init__(seed)
        self.c = float(c)
        self.rescale = rescale
        self.form = form
        self.mu = mu
        self.solver = solver

    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        """weights: (K,); gram: (K, K) PSD with trace K."""
        m = gram
        k = m.shape[0]
        factor = rescale_factor(self.rescale, self.c)
        mu = imbalance_mu(m, self._warm_mgda) if self.mu is None else float(self.mu)
        self._extra.update(mu=mu)
        if self.c == 0.0:
            return np.full(k, factor / k)
        s = self.c * solvers.g0_norm(m)
        lin, root, quad = solvers.coefficients(self.form, m, self.c, mu)
        if self.solver == "exact":
            sol = self._warm.solve(m, lin, root, quad)
        else:
            sol = solvers.solve_cvxpy(m, lin, root, quad)
        self._extra.update(solver_iterations=float(sol.iterations), solver_gap=sol.gap)
        return conflict_averse_weights(m, sol.weights, s, factor)
