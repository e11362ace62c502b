"""Environment builders: Meta-World MT10 / MT50 / MT1 as one multi-task vector env (one sub-env per task)."""

from rl_mtl.envs.metaworld import (
    ENV_NAMES,
    MultiTaskVectorEnv,
    StepResult,
    make_env,
    parse_env_name,
)

__all__ = ["ENV_NAMES", "MultiTaskVectorEnv", "StepResult", "make_env", "parse_env_name"]
