"""Gradient combiners: ``names()`` lists them, ``make(name, **hparams)`` builds one.

A new method is one file in this package plus one line in ``_REGISTRY``.  Entries are resolved lazily so that
importing the package does not import cvxpy (slow) unless a method that needs it is built.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from rl_mtl.combiners.base import Combiner

# name -> "module:Class" inside rl_mtl.combiners
_REGISTRY: dict[str, str] = {
    "mean": "mean:Mean",
    "pcgrad": "pcgrad:PCGrad",
    "mgda": "mgda:MGDA",
    "cagrad": "cagrad:CAGrad",
    "imgrad": "imgrad:IMGrad",
    "nashmtl": "nashmtl:NashMTL",
    "imgrad_nash": "imgrad_nash:IMGradNash",
    "famo": "famo:FAMO",
    "aligned_mtl": "aligned_mtl:AlignedMTL",
    # TorchJD's Gram-based weightings (the optional torchjd extra), one adapter file
    "upgrad": "torchjd_adapter:UPGrad",
    "dualproj": "torchjd_adapter:DualProj",
    "imtl_g": "torchjd_adapter:IMTLG",
    "fairgrad": "torchjd_adapter:FairGrad",
    "gradvac": "torchjd_adapter:GradVac",
    "cr_mogm": "torchjd_adapter:CRMOGM",
    "modo": "torchjd_adapter:MoDo",
    "sdmgrad": "torchjd_adapter:SDMGrad",
    "pcd": "torchjd_adapter:PCD",
    "random_weighting": "torchjd_adapter:RandomWeighting",
}


def names() -> list[str]:
    """Registered combiner names, in registry order."""
    return list(_REGISTRY)


def get_class(name: str) -> type[Combiner]:
    """The class registered under ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown combiner '{name}'; known: {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[name].split(":")
    module = importlib.import_module(f"rl_mtl.combiners.{module_name}")
    return getattr(module, class_name)


def hparams(name: str) -> dict[str, Any]:
    """Hyperparameters of a combiner and their defaults (``seed`` included)."""
    signature = inspect.signature(get_class(name).__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def missing_extra(name: str) -> str:
    """The install line when combiner ``name`` needs an optional extra that is not installed (TorchJD), else ``""``."""
    check = getattr(get_class(name), "missing_extra", None)
    return check() if check is not None else ""


def make(name: str, **kwargs: Any) -> Combiner:
    """Build combiner ``name``; an unknown hyperparameter raises ``ValueError`` naming the known ones."""
    known = hparams(name)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for combiner '{name}'; known: {', '.join(known)}"
        )
    return get_class(name)(**kwargs)


__all__ = ["Combiner", "get_class", "hparams", "make", "missing_extra", "names"]
