"""The YAML presets of ``--config`` (installed as package data of ``rl_mtl.configs``; no code)."""
