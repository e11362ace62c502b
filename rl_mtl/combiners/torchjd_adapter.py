"""TorchJD's Gram-based weightings as rl_mtl combiners: one adapter over ``torchjd.aggregation`` (TorchJD 0.18).

TorchJD (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024) computes many multi-task
weightings behind our seam — a K×K Gram in, K weights out — so each is bridged here instead of re-implemented.
It is the optional ``torchjd`` extra; TorchJD is imported only when a method is built, so ``--help`` and the
registry work without it and ``--method upgrad`` then stops with the install line (:data:`INSTALL`).

| method | TorchJD class | rescale of TorchJD's weights | state (checkpointed) |
|---|---|---|---|
| ``upgrad`` | ``UPGradWeighting`` | 1 (pref 1/K: d = mean of the projected g_k) | — |
| ``dualproj`` | ``DualProjWeighting`` (GEM Eqn 11) | 1 (pref 1/K) | — |
| ``imtl_g`` | ``IMTLGWeighting`` | 1 (weights sum to 1) | — |
| ``fairgrad`` | ``FairGradWeighting`` (Eqn 4) | 1/Σ_k w_k (a convex combination) | — |
| ``gradvac`` | ``GradVacWeighting`` | 1/K (TorchJD sums the K corrected g_k) | EMA φ̂ (K×K), RNG |
| ``cr_mogm`` | ``CRMOGMWeighting(inner)`` | the inner method's | EMA λ, the inner's |
| ``modo`` | ``MoDoWeighting`` | 1 (λ on the simplex) | λ |
| ``sdmgrad`` | ``SDMGradWeighting`` | 1 (on the simplex) | inner SGD iterate w |
| ``pcd`` | ``PCDWeighting`` | 1 (‖d‖ = ‖g_0‖ of task 0) | EMA of ‖g_k‖², its step |
| ``random_weighting`` | ``RandomWeighting`` (RLW, Alg. 2) | 1 (softmax of N(0, I)) | RNG |

Conventions (``base.py``; mean: ``w = 1/K``, ``d = Σ_k w_k g_k``).  TorchJD is handed the trace-normalised Gram
``Ĝ = G / (tr G / K)`` in float64 on the CPU, like every method here, and its weights are multiplied by the factor
above so that ``d`` has the scale of ``mtsac``'s mean (an agreeing batch gives ``d ≈ g``).  Every method but MoDo
gives the same weights on ``G`` itself (up to TorchJD's ``eps`` terms, ~1e-8 relative on ``Ĝ``); MoDo's step
``γ`` thus acts in Gram units where TorchJD's acts in the raw gradient units.  FairGrad's own ‖d‖ (fixed by
``g_kᵀd = w_k^{-1/α}``, whatever the gradient scale) is dropped for the direction only; α = 0 is then exactly the
mean.  TorchJD's random draws (GradVac's visiting order, RLW's weights) come from a private torch generator seeded
with ``seed`` and checkpointed, so they neither shift the trainer's global torch stream nor change on resume.
``stats()`` adds TorchJD's raw weight sum (``raw_weight_sum``) and, for FairGrad, the residual of its equation; a
solver error (quadprog's failed QP, a singular solve) makes that call fall back to the mean, counted as usual.

Deliberate differences from TorchJD's intended use: MoDo and SDMGrad expect ``J₁J₂ᵀ`` of two independent batches
(their convergence proofs need it); the seam has one batch, so they get ``JJᵀ`` — the single-sample variant.  PCD
is hierarchical: task 0 of the benchmark (MT10: reach) is its primary objective.  FairGrad's α has no default in
TorchJD; ours is 2.0, FairGrad's MT10 setting (OptMN-Lab/fairgrad ``mtrl_files/run.sh``).  TorchJD's ExcessMTL is
not bridged: its weights need the full K×P Jacobian (per-parameter squared gradients, Eqn 6–7), not the Gram.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import math
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from rl_mtl.cli import install_hint
from rl_mtl.combiners.base import Combiner

#: what a user without TorchJD is told to run
INSTALL = install_hint("torchjd")
#: a solver error of one call (quadprog's infeasible or non-PD QP, a singular solve): that call falls back to the mean
_SOLVER_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError, torch.linalg.LinAlgError)


class TorchJDCombiner(Combiner):
    """A TorchJD weighting behind the combiner interface; subclasses build it (:meth:`_build`) and pick the rescale."""

    #: modules the method imports (TorchJD and its optional dependencies)
    requires: ClassVar[tuple[str, ...]] = ("torchjd",)
    #: shown next to the method in ``--help``
    extra_note: ClassVar[str] = f"TorchJD, an optional extra: {INSTALL}"
    #: whether TorchJD draws from torch's global RNG (then a private generator stands in for it)
    draws: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        message = self.missing_extra()
        if message:
            raise ModuleNotFoundError(message)
        super().__init__(seed)
        self.num_tasks: int | None = None  # K of the last call (the state's shape)
        self.last_error = ""  # the last solver error, for a user who wonders why a call fell back
        self._weighting = self._build()
        self._torch_rng = _seeded_rng_state(self.seed)

    @classmethod
    def missing_extra(cls) -> str:
        """The install line when TorchJD (or a dependency this method needs) is missing, else ``""``."""
        missing = [name for name in cls.requires if _find_spec(name) is None]
        if not missing:
            return ""
        return f"method {cls.name} needs {', '.join(missing)} (TorchJD, an optional extra): {INSTALL}"

    def check_num_tasks(self, k: int) -> tuple[str, str] | None:
        """``(option, message)`` when a vector option does not fit K tasks, else None (checked by the config)."""
        return None

    @abc.abstractmethod
    def _build(self) -> nn.Module:
        """The TorchJD weighting, built from the hyperparameters."""

    def _rescale(self, raw: np.ndarray) -> np.ndarray:
        """Our weights from TorchJD's (K,): factor 1 unless the method's convention differs (module table)."""
        return raw

    # ------------------------------------------------------------------ the call
    def _solve(self, gram: np.ndarray | None, losses: np.ndarray, scale: float) -> np.ndarray:
        """weights (K,): TorchJD's on the trace-normalised gram (K, K), rescaled; NaN (→ mean) on a solver error."""
        k = losses.shape[0]
        problem = self.check_num_tasks(k)
        if problem:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        matrix = torch.from_numpy(gram) if gram is not None else torch.zeros(k, 1, dtype=torch.float64)
        try:
            raw = self._call(matrix)
        except _SOLVER_ERRORS as exc:
            self._extra["solver_error"] = 1.0
            self.last_error = f"{type(exc).__name__}: {exc}"
            return np.full(k, math.nan)
        self.num_tasks = k
        weights = raw.detach().to("cpu", torch.float64).numpy().reshape(k)
        self._extra["raw_weight_sum"] = float(weights.sum())
        if gram is not None:
            self._extra.update(self._figures(gram, weights))
        return self._rescale(weights)

    def _figures(self, gram: np.ndarray, raw: np.ndarray) -> dict[str, float]:
        """Method-specific diagnostics of one call (logged as ``combiner/<loss>/<key>``); none by default."""
        return {}

    def _call(self, matrix: Tensor) -> Tensor:
        """TorchJD's weighting on ``matrix``, its global-RNG draws taken from the private generator."""
        if not self.draws:
            return self._weighting(matrix)
        outer = torch.get_rng_state()
        torch.set_rng_state(self._torch_rng)
        try:
            return self._weighting(matrix)
        finally:
            self._torch_rng = torch.get_rng_state()
            torch.set_rng_state(outer)

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        super().reset()
        _reset_torchjd(self._weighting)
        self._torch_rng = _seeded_rng_state(self.seed)
        self.num_tasks = None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            torch_rng=bytes(self._torch_rng.numpy()),
            num_tasks=self.num_tasks,
            torchjd={key: value.detach().cpu().clone() for key, value in self._weighting.state_dict().items()},
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: TorchJD creates its state lazily at the first call, so one throw-away call on
        an identity Gram of the saved K (private RNG) materialises it, then ``nn.Module.load_state_dict`` fills it."""
        super().load_state_dict(state)
        _reset_torchjd(self._weighting)
        self.num_tasks = state["num_tasks"]
        saved = state["torchjd"]
        if saved and self.num_tasks is not None:
            self._torch_rng = _seeded_rng_state(0)
            self._call(torch.eye(self.num_tasks, dtype=torch.float64))
            self._weighting.load_state_dict({key: value.cpu() for key, value in saved.items()})
        self._torch_rng = torch.frombuffer(bytearray(state["torch_rng"]), dtype=torch.uint8).clone()


# ---------------------------------------------------------------------------------------------- the methods
class UPGrad(TorchJDCombiner):
    """UPGrad (Quinton & Rey 2024, Eqn 4 with the dual QP of Prop. 1): each g_k projected onto the dual cone of all,
    combined with ``pref_vector`` (default 1/K)."""

    name = "upgrad"
    requires = ("torchjd", "qpsolvers", "quadprog")

    def __init__(self, pref_vector: list[float] | None = None, norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                 seed: int = 0) -> None:
        self.pref_vector = _vector("pref_vector", pref_vector)
        self.norm_eps = _real("norm_eps", norm_eps, ">= 0", lambda x: x >= 0.0)
        self.reg_eps = _real("reg_eps", reg_eps, ">= 0", lambda x: x >= 0.0)
        super().__init__(seed)

    def _build(self) -> nn.Module:
        from torchjd.aggregation import UPGradWeighting
        from torchjd.linalg import QuadprogProjector

        return UPGradWeighting(_tensor(self.pref_vector), QuadprogProjector(norm_eps=self.norm_eps,
                                                                             reg_eps=self.reg_eps))

    def check_num_tasks(self, k: int) -> tuple[str, str] | None:
        return _length("pref_vector", self.pref_vector, k)


class DualProj(UPGrad):
    """DualProj (GEM, Lopez-Paz & Ranzato 2017, Eqn 11): the ``pref_vector``-combination (default the mean)
    projected onto the dual cone of the task gradients."""

    name = "dualproj"

    def _build(self) -> nn.Module:
        from torchjd.aggregation import DualProjWeighting
        from torchjd.linalg import QuadprogProjector

        return DualProjWeighting(_tensor(self.pref_vector), QuadprogProjector(norm_eps=self.norm_eps,
                                                                               reg_eps=self.reg_eps))


class IMTLG(TorchJDCombiner):
    """IMTL-G (Liu et al., ICLR 2021), TorchJD's generalisation to dependent gradients: ``w ∝ pinv(G) diag(G)^½``,
    normalised to sum 1 (equal projections of d on every unit g_k)."""

    name = "imtl_g"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)

    def _build(self) -> nn.Module:
        from torchjd.aggregation import IMTLGWeighting

        return IMTLGWeighting()


class FairGrad(TorchJDCombiner):
    """FairGrad (Ban & Ji, ICML 2024, Eqn 4): α-fair weights solving ``G w = w^{-1/α}`` (scipy least squares),
    rescaled to sum 1."""

    name = "fairgrad"
    requires = ("torchjd", "scipy")

    def __init__(self, alpha: float = 2.0, max_iters: int | None = None, seed: int = 0) -> None:
        self.alpha = _real("alpha", alpha, ">= 0", lambda x: x >= 0.0)
        self.max_iters = None if max_iters is None else _integer("max_iters", max_iters, 1)
        super().__init__(seed)

    def _build(self) -> nn.Module:
        from torchjd.aggregation import FairGradWeighting

        return FairGradWeighting(alpha=self.alpha, max_iters=self.max_iters)

    def _rescale(self, raw: np.ndarray) -> np.ndarray:
        return _convex(raw)

    def _figures(self, gram: np.ndarray, raw: np.ndarray) -> dict[str, float]:
        """``residual``: ‖Ĝw − w^{-1/α}‖ / ‖w^{-1/α}‖ of the least-squares solution (near-singular Grams leave
        it far from 0: the solver stopped short, so the weights are an unconverged iterate)."""
        if self.alpha == 0.0:
            return {"residual": 0.0}
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            target = np.power(raw, -1.0 / self.alpha)
            residual = float(np.linalg.norm(gram @ raw - target) / np.linalg.norm(target))
        return {"residual": residual if math.isfinite(residual) else -1.0}


class GradVac(TorchJDCombiner):
    """Gradient Vaccine (Wang et al., ICLR 2021, Eqn 2-3): each g_k is corrected towards the EMA cosine target
    φ̂ with every other task (random order); TorchJD sums the corrected gradients, we average them."""

    name = "gradvac"
    draws = True

    def __init__(self, beta: float = 0.5, eps: float = 1e-8, seed: int = 0) -> None:
        self.beta = _real("beta", beta, "in [0, 1]", lambda x: 0.0 <= x <= 1.0)
        self.eps = _real("eps", eps, ">= 0", lambda x: x >= 0.0)
        super().__init__(seed)

    def _build(self) -> nn.Module:
        from torchjd.aggregation import GradVacWeighting

        return GradVacWeighting(beta=self.beta, eps=self.eps)

    def _rescale(self, raw: np.ndarray) -> np.ndarray:
        return raw / raw.shape[0]


class MoDo(TorchJDCombiner):
    """MoDo (Chen et al., JMLR 2024, Eqn 2.9a): one projected step ``λ ← Π_Δ(λ − γ(Ĝλ + ρλ))`` per call."""

    name = "modo"

    def __init__(self, gamma: float = 0.1, rho: float = 0.1, seed: int = 0) -> None:
        self.gamma = _real("gamma", gamma, "> 0", lambda x: x > 0.0)
        self.rho = _real("rho", rho, ">= 0", lambda x: x >= 0.0)
        super().__init__(seed)

    def _build(self) -> nn.Module:
        from torchjd.aggregation import MoDoWeighting

        return MoDoWeighting(gamma=self.gamma, rho=self.rho)


class SDMGrad(TorchJDCombiner):
    """SDMGrad (Xiao et al., NeurIPS 2023, Eqn 6): ``n_iter`` momentum-SGD steps on the simplex weights w, warm
    started; returns ``(w + λ w̃)/(1 + λ)`` with w̃ = ``pref_vector`` (default 1/K)."""

    name = "sdmgrad"

    def __init__(self, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20, lambda_: float = 0.3,
                 pref_vector: list[float] | None = None, seed: int = 0) -> None:
        self.lr = _real("lr", lr, "> 0", lambda x: x > 0.0)
        self.momentum = _real("momentum", momentum, "in [0, 1)", lambda x: 0.0 <= x < 1.0)
        self.n_iter = _integer("n_iter", n_iter, 1)
        self.lambda_ = _real("lambda_", lambda_, ">= 0", lambda x: x >= 0.0)
        self.pref_vector = _vector("pref_vector", pref_vector)
        super().__init__(seed)

    def _build(self) -> nn.Module:
        from torchjd.aggregation import SDMGradWeighting

        return SDMGradWeighting(lr=self.lr, momentum=self.momentum, n_iter=self.n_iter, lambda_=self.lambda_,
                                pref_vector=_tensor(self.pref_vector))

    def check_num_tasks(self, k: int) -> tuple[str, str] | None:
        return _length("pref_vector", self.pref_vector, k)


class PCD(TorchJDCombiner):
    """Priority-Constrained Descent (TMLR 2026): the step closest to task 0's normalised gradient that gives every
    other task a fraction ``tau`` of its own normalised progress; ‖d‖ = ‖g_0‖ of task 0."""

    name = "pcd"
    #: task 0 is the primary objective: permuting the tasks changes the weights, not just their order
    symmetric: ClassVar[bool] = False

    def __init__(self, tau: float | list[float] = 0.02, beta: float = 0.999, eps: float = 1e-8,
                 seed: int = 0) -> None:
        in_unit = "in [0, 1] (or a list of such, one per task after the first)"
        if isinstance(tau, (list, tuple)):
            self.tau: float | tuple[float, ...] = _vector("tau", tau) or ()
            if not all(0.0 <= t <= 1.0 for t in self.tau):
                raise ValueError(f"tau must be {in_unit}, got {tau!r}")
        else:
            self.tau = _real("tau", tau, in_unit, lambda x: 0.0 <= x <= 1.0)
        self.beta = _real("beta", beta, "in [0, 1)", lambda x: 0.0 <= x < 1.0)
        self.eps = _real("eps", eps, ">= 0", lambda x: x >= 0.0)
        super().__init__(seed)

    def _build(self) -> nn.Module:
        from torchjd.aggregation import PCDWeighting

        tau = _tensor(self.tau) if isinstance(self.tau, tuple) else self.tau
        return PCDWeighting(tau=tau, beta=self.beta, eps=self.eps)

    def check_num_tasks(self, k: int) -> tuple[str, str] | None:
        return _length("tau", self.tau, k - 1) if isinstance(self.tau, tuple) else None


class RandomWeighting(TorchJDCombiner):
    """Random weighting (Lin et al., TMLR 2022, Algorithm 2): ``w = softmax(ε)``, ε ~ N(0, I) at every call.

    Loss-only: ``d = Σ w_k g_k`` is the gradient of ``Σ w_k L_k``, one backward, as for FAMO."""

    name = "random_weighting"
    needs_gram = False
    draws = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)

    def _build(self) -> nn.Module:
        from torchjd.aggregation import RandomWeighting as Weighting

        return Weighting()


class CRMOGM(TorchJDCombiner):
    """CR-MOGM (Zhou et al., NeurIPS 2022, Eqn 6): the EMA ``λ_t = α λ_{t−1} + (1 − α) λ̂_t`` of an ``inner``
    bridged method's weights (λ_0 = ``initial_weights``, default λ̂_1), then the inner method's rescale."""

    name = "cr_mogm"

    def __init__(self, inner: str = "upgrad", alpha: float = 0.9, initial_weights: list[float] | None = None,
                 seed: int = 0) -> None:
        if inner not in INNER:
            raise ValueError(f"inner must be one of {', '.join(INNER)}, got {inner!r}")
        self.inner = inner
        self.alpha = _real("alpha", alpha, "in [0, 1]", lambda x: 0.0 <= x <= 1.0)
        self.initial_weights = _vector("initial_weights", initial_weights)
        self._inner = INNER[inner](seed=seed)
        super().__init__(seed)

    #: what every inner method needs (the check runs before ``inner`` is known)
    requires = ("torchjd", "qpsolvers", "quadprog", "scipy")

    @property
    def draws(self) -> bool:  # type: ignore[override]
        return self._inner.draws

    def _build(self) -> nn.Module:
        from torchjd.aggregation import CRMOGMWeighting

        return CRMOGMWeighting(self._inner._weighting, alpha=self.alpha, initial_weights=_tensor(self.initial_weights))

    def _rescale(self, raw: np.ndarray) -> np.ndarray:
        return self._inner._rescale(raw)

    def check_num_tasks(self, k: int) -> tuple[str, str] | None:
        return _length("initial_weights", self.initial_weights, k) or self._inner.check_num_tasks(k)


#: the methods ``cr_mogm`` can smooth
INNER: dict[str, type[TorchJDCombiner]] = {cls.name: cls for cls in (
    UPGrad, DualProj, IMTLG, FairGrad, GradVac, MoDo, SDMGrad, PCD, RandomWeighting)}


# ---------------------------------------------------------------------------------------------- helpers
def _convex(raw: np.ndarray) -> np.ndarray:
    """``raw / Σ raw``: a convex combination (the mean's scale); NaN (→ mean fallback) when the sum is not > 0."""
    total = float(raw.sum())
    return raw / total if total > 0.0 else np.full_like(raw, math.nan)


def _find_spec(name: str) -> Any:
    """``importlib.util.find_spec`` that answers None for a module set to None in ``sys.modules`` (blocked)."""
    try:
        return importlib.util.find_spec(name)
    except (ValueError, ImportError):
        return None


def _reset_torchjd(weighting: nn.Module) -> None:
    """Clear a TorchJD weighting's state (stateless ones have none)."""
    stateful = importlib.import_module("torchjd").Stateful
    if isinstance(weighting, stateful):
        weighting.reset()


def _seeded_rng_state(seed: int) -> Tensor:
    """The state torch's CPU generator has after ``torch.manual_seed(seed)``."""
    return torch.Generator().manual_seed(int(seed)).get_state()


def _real(name: str, value: Any, allowed: str, ok: Callable[[float], bool]) -> float:
    """``value`` as a float if it is a finite number with ``ok(value)``; ``ValueError`` naming ``name`` else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be a number {allowed}, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, low: int) -> int:
    """``value`` if it is an integer >= ``low``; ``ValueError`` naming ``name`` else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _vector(name: str, value: Any) -> tuple[float, ...] | None:
    """None, or a non-empty list of finite numbers as a tuple; ``ValueError`` naming ``name`` else."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or not value
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value)):
        raise ValueError(f"{name} must be a list of finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _length(name: str, vector: tuple[float, ...] | None, expected: int) -> tuple[str, str] | None:
    """``(name, message)`` when ``vector`` is given with another length than ``expected``."""
    if vector is None or len(vector) == expected:
        return None
    return name, f"has {len(vector)} entries, the {expected} tasks it weights need {expected}"


def _tensor(vector: tuple[float, ...] | None) -> Tensor | None:
    return None if vector is None else torch.tensor(vector, dtype=torch.float64)
