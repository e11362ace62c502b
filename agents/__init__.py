"""Multi-task SAC: networks, per-task replay and the agent with per-task loss vectors."""

from rl_mtl.agents.mtsac import MTSAC, Reducer, SACConfig, TaskLoss, mean_reducer
from rl_mtl.agents.networks import MLP, Actor, MultiHeadLinear, TaskMLP, TwinCritic
from rl_mtl.agents.replay import Batch, MultiTaskReplay

__all__ = [
    "MLP",
    "MTSAC",
    "Actor",
    "Batch",
    "MultiHeadLinear",
    "MultiTaskReplay",
    "Reducer",
    "SACConfig",
    "TaskLoss",
    "TaskMLP",
    "TwinCritic",
    "mean_reducer",
]
