"""What both training and evaluation build from a run config: the learner's device and the agent's config.

It sits below :mod:`rl_mtl.trainer` and :mod:`rl_mtl.evaluate` (neither imports the other for it).
"""

from __future__ import annotations

from typing import Any

import torch

from rl_mtl.agents.mtsac import SACConfig
from rl_mtl.config import ConfigError, TrainConfig, build_config


def check_flags(**values: Any) -> None:
    """Check options given outside a run config (``rl_mtl.evaluate``'s ``--seed``, ``--device``) with training's own
    validation, so a bad value gets the very :class:`ConfigError` (flag and message) ``rl_mtl.train`` gives."""
    build_config(overrides=values)


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available; ``cuda`` without CUDA is a :class:`ConfigError` naming ``--device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "cuda was asked for but CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def sac_config(cfg: TrainConfig) -> SACConfig:
    """The agent's view of the run config."""
    return SACConfig(
        hidden_sizes=cfg.hidden_sizes, arch=cfg.arch, gamma=cfg.gamma, tau=cfg.tau, actor_lr=cfg.actor_lr,
        critic_lr=cfg.critic_lr, alpha_lr=cfg.alpha_lr, init_alpha=cfg.init_alpha, shared_alpha=cfg.shared_alpha,
        target_entropy=cfg.target_entropy, actor_update_every=cfg.actor_update_every,
        target_update_every=cfg.target_update_every, grad_clip=cfg.grad_clip,
    )
