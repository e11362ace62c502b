"""Snapshot and restore one Meta-World sub-env exactly, mid-episode, for bit-identical resumes.

A checkpoint of a training run must hold what the next step of every task depends on.  For one Meta-World env
(the gymnasium wrapper chain around a ``SawyerXYZEnv``) that is:

* the simulator: MuJoCo's *integration state* (``mj_getState(..., mjSTATE_INTEGRATION)``: time, qpos, qvel, act,
  ctrl, applied forces, mocap poses, equality activations, user data and the solver warm start — what MuJoCo
  documents as the state that makes ``mj_step`` reproducible), plus the model fields Meta-World moves at a reset
  (object and goal ``body_pos`` / ``site_pos``, the mocap weld ``eq_data``) and the goal sites' positions it writes
  into ``data.site_xpos`` after each step;
* Meta-World's Python state: the episode counter ``curr_path_length``, the frame-stacked ``_prev_obs``, the current
  goal and object positions (``_target_pos``, ``obj_init_pos``, ``_last_rand_vec``, …) — every plain attribute of
  the unwrapped env, whatever its task class adds;
* the wrappers' state: ``TimeLimit``'s elapsed steps, the task-sampling wrapper's goal list, the episode
  statistics — again every plain attribute;
* every random generator (Meta-World's own ``get_checkpoint``: the goal sampler and the spaces' generators).

Only *plain* values are copied (numbers, strings, NumPy arrays and scalars, and lists / tuples / dicts / deques of
them); MuJoCo objects, spaces, renderers and generators are left in place (the generators travel through
``get_checkpoint``).  A snapshot is a small picklable dict (a few kB per env) that restores into any env built by the
same builder, in this process or in a rollout worker.
"""

from __future__ import annotations

import collections
import copy
import functools
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

#: the MuJoCo state that makes ``mj_step`` reproducible
_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
#: model fields Meta-World changes at a reset (goal and object placement, mocap weld)
_MODEL_FIELDS = ("body_pos", "body_quat", "site_pos", "site_quat", "eq_data")
#: attributes that are not state (pickling arguments, specs) or that travel otherwise: the task-sampling wrapper's
#: ``tasks`` (its goals) are part of Meta-World's own RNG checkpoint
_SKIP = frozenset({"_ezpickle_args", "_ezpickle_kwargs", "_saved_kwargs", "spec", "_cached_spec", "metadata",
                   "_metadata", "tasks"})
_SCALARS = (type(None), bool, int, float, complex, str, bytes, np.generic)


def _is_plain(value: Any) -> bool:
    """True for values that are data (copied into a snapshot), False for objects that are machinery."""
    if isinstance(value, _SCALARS) or isinstance(value, np.ndarray) and value.dtype != object:
        return True
    if isinstance(value, (list, tuple, collections.deque)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, _SCALARS) and _is_plain(v) for k, v in value.items())
    return False


def _plain_attributes(obj: Any) -> dict[str, Any]:
    """Deep copies of ``obj``'s plain instance attributes."""
    return {k: copy.deepcopy(v) for k, v in vars(obj).items() if k not in _SKIP and _is_plain(v)}


def _put(obj: Any, name: str, value: Any) -> None:
    """Set ``obj.name`` to a copy of ``value``; an array is written in place, so that an attribute that is a live
    view of the simulator (Meta-World's ``init_left_pad`` is a view of ``data.xpos``) stays one."""
    current = vars(obj).get(name)
    if (isinstance(current, np.ndarray) and isinstance(value, np.ndarray) and current.flags.writeable
            and current.shape == value.shape and current.dtype == value.dtype):
        current[...] = value
    else:
        setattr(obj, name, copy.deepcopy(value))


def _drop_cached(obj: Any) -> None:
    """Forget ``obj``'s cached properties, so they are recomputed from the restored attributes (Meta-World caches
    its observation space, whose goal bounds depend on ``_partially_observable``; a stale one clips the goal to 0)."""
    for name in dir(type(obj)):
        if isinstance(getattr(type(obj), name, None), functools.cached_property):
            vars(obj).pop(name, None)


def _chain(env: gym.Env) -> list[Any]:
    """The wrappers from the outermost inwards, then the unwrapped env (less layers that hold no env state)."""
    out = [env]
    while isinstance(out[-1], gym.Wrapper):
        out.append(out[-1].env)
    return [layer for layer in out if not getattr(type(layer), "state_transparent", False)]


def _rng_keeper(chain: list[Any]) -> Any | None:
    """The outermost layer with Meta-World's ``get_checkpoint`` / ``load_checkpoint`` (wrappers do not forward
    attributes in gymnasium 1.x), or None."""
    return next((layer for layer in chain if hasattr(type(layer), "get_checkpoint")), None)


def capture(env: gym.Env) -> dict[str, Any]:
    """A snapshot of ``env`` (a Meta-World env with its wrappers) that :func:`restore` puts back exactly."""
    chain = _chain(env)
    base = chain[-1]
    model, data = base.model, base.data
    physics = np.empty(mujoco.mj_stateSize(model, _SPEC), dtype=np.float64)
    mujoco.mj_getState(model, data, physics, _SPEC)
    return {
        "types": [type(layer).__name__ for layer in chain],
        "attributes": [_plain_attributes(layer) for layer in chain],
        "rng": None if (keeper := _rng_keeper(chain)) is None else keeper.get_checkpoint(),
        "physics": physics,
        "model": {name: getattr(model, name).copy() for name in _MODEL_FIELDS},
        "site_xpos": data.site_xpos.copy(),
    }


def restore(env: gym.Env, state: dict[str, Any]) -> None:
    """Put a :func:`capture` snapshot back into ``env``, built by the same builder; ``ValueError`` otherwise."""
    chain = _chain(env)
    types = [type(layer).__name__ for layer in chain]
    if types != state["types"]:
        raise ValueError(f"env state of a {' > '.join(state['types'])} env cannot go into a {' > '.join(types)} env")
    base = chain[-1]
    model, data = base.model, base.data
    physics = np.asarray(state["physics"], dtype=np.float64)
    if physics.shape != (mujoco.mj_stateSize(model, _SPEC),):
        raise ValueError(f"env state holds {physics.size} physics values, the {types[-1]} model needs "
                         f"{mujoco.mj_stateSize(model, _SPEC)}")
    for layer, attributes in zip(chain, state["attributes"], strict=True):
        for name, value in attributes.items():
            _put(layer, name, value)
        _drop_cached(layer)
    keeper = _rng_keeper(chain)
    if (keeper is None) != (state["rng"] is None):
        raise ValueError("env state and env disagree on whether the env has Meta-World RNG checkpoints")
    if keeper is not None:
        # Meta-World's CheckpointWrapper hands out (env_id, checkpoint) and takes a list of them
        keeper.load_checkpoint([state["rng"]] if isinstance(state["rng"], tuple) else state["rng"])
    for name, value in state["model"].items():
        getattr(model, name)[...] = value
    mujoco.mj_setState(model, data, physics, _SPEC)
    # no mj_forward here: it rewrites the solver warm start (by ~1e-14), and the next mj_step recomputes every
    # derived quantity from the restored state anyway; the goal sites Meta-World placed are put back as they were
    data.site_xpos[...] = state["site_xpos"]
