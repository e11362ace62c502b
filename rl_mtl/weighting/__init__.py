"""Loss weightings: ``names()`` lists them, ``make(name, **hparams)`` builds one (architecture §6).

Weights ``λ`` (detached, summing to K) scale the per-task losses before the per-task gradients are taken, so they
compose with every gradient combiner.  A new weighting is one file here plus one line in ``_REGISTRY``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from rl_mtl.weighting.base import Weighting, floored_weights, gradient_scale, loss_ratio

_REGISTRY: dict[str, str] = {
    "none": "none:NoWeighting",
    "rlw": "rlw:RLW",
    "igbv1": "igbv1:IGBv1",
    "igbv2": "igbv2:IGBv2",
    "si": "si:SI",
    "grad_scale": "grad_scale:GradScale",
    "uw": "uw:UW",
    "dwa": "dwa:DWA",
}


def names() -> list[str]:
    """Registered weighting names (``none`` first)."""
    return list(_REGISTRY)


def get_class(name: str) -> type[Weighting]:
    """The class registered under ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown weighting '{name}'; known: {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"rl_mtl.weighting.{module_name}"), class_name)


def hparams(name: str) -> dict[str, Any]:
    """Hyperparameters of a weighting and their defaults (``seed`` included)."""
    signature = inspect.signature(get_class(name).__init__)
    return {p.name: p.default for p in signature.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def make(name: str, **kwargs: Any) -> Weighting:
    """Build weighting ``name``; an unknown hyperparameter raises ``ValueError`` naming the known ones."""
    known = hparams(name)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)} for weighting '{name}'; "
                         f"known: {', '.join(known)}")
    return get_class(name)(**kwargs)


__all__ = ["Weighting", "floored_weights", "get_class", "gradient_scale", "hparams", "loss_ratio", "make", "names"]
