"""rl_mtl: multi-task reinforcement learning with pluggable gradient combiners."""

__version__ = "0.1.0"
