"""Run configuration: one flat frozen dataclass, YAML presets from ``configs/``, CLI overrides, validation.

Every option is a field of :class:`TrainConfig` and is reachable by its name with ``--set name=value``; the
presets in ``configs/`` are flat YAML files overriding the defaults. Validation happens in ``__post_init__`` so
that a bad value fails with a :class:`ConfigError` naming the flag before any environment is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from rl_mtl import combiners, weighting

#: the presets: ``configs/`` of the checkout, installed as package data of ``rl_mtl.configs`` (setup.cfg)
CONFIG_DIR = Path(str(resources.files("rl_mtl.configs")))

#: ``mtsac`` (plain: the per-task losses are averaged) and every gradient combiner of the registry
METHODS: tuple[str, ...] = ("mtsac", *(name for name in combiners.names() if name != "mean"))
METHOD_ALIASES: dict[str, str] = {"mean": "mtsac"}
#: ``--method igbv2`` is shorthand for ``--method mtsac --weighting igbv2`` (likewise igbv1, rlw)
WEIGHTING_METHODS: tuple[str, ...] = tuple(name for name in weighting.names() if name != "none")
COMBINE_PARTS = ("critic", "actor")


def split_parts(text: str) -> tuple[str, ...]:
    """``"critic, actor"`` → ``("critic", "actor")``: the losses named by ``combine`` or ``weighted``."""
    return tuple(part.strip() for part in text.split(","))


def _check_parts(text: str, flag: str, allowed: str) -> tuple[str, ...]:
    """The parts named in ``text``, each a known loss and none twice; :class:`ConfigError` naming ``flag`` else."""
    parts = split_parts(text)
    if not parts or any(p not in COMBINE_PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(flag, f"'{text}' must be {allowed}{', '.join(COMBINE_PARTS)}")
    return parts


class ConfigError(ValueError):
    """A bad option: ``flag`` names the command-line flag (``--steps``, ``--set batch_size``) at fault."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; the resolved copy is saved as ``config.yaml`` in the run directory."""

    # --- what to train
    env: str = "mt10"
    """Benchmark: ``mt10``, ``mt50`` or ``mt1:<task>`` (Meta-World spelling, e.g. ``mt1:reach-v3``)."""
    method: str = "mtsac"
    """Multi-task optimisation method (``mtsac`` = plain multi-task SAC, losses averaged over tasks)."""
    seed: int = 0
    """Seeds torch, numpy, the replay sampler and the environments."""
    device: str = "auto"
    """Learner device: ``auto`` (cuda when available), ``cpu`` or ``cuda``."""
    torch_threads: int = 0
    """Intra-op threads for torch on the CPU; 0 keeps torch's default."""
    compile: bool = False
    """Run the update's tensor work through ``torch.compile`` (``--compile``; on CUDA also as CUDA graphs): the same
    numbers within float tolerance after a one-off compilation of tens of seconds (``rl_mtl/compiled.py``)."""
    combiner: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters of the method's gradient combiner (``--set combiner.c=0.5``); see ``--help``."""
    combine: str = "auto"
    """Losses routed through the combiner: ``critic,actor``, ``critic``, ``actor``; ``auto`` = both, FAMO critic."""
    combine_params: str = "all"
    """Parameters the combiner acts on: ``all`` (mtrl's reference: the task heads too, scaled by the weights) or
    ``shared`` (the trunk only; each head gets its own task's gradient; needs ``arch=multihead``)."""
    diag_every: int = 10
    """Compute the per-task gradient diagnostics (imbalance, cos θ, Pareto failures) every this many updates."""
    weighting: str = "none"
    """Loss weighting applied before the combiner (architecture §6): ``none``, ``si``, ``rlw``, ``igbv1``, ``igbv2``,
    ``grad_scale``, ``uw``, ``dwa``."""
    weighting_opts: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters of the loss weighting (``--set weighting.hold=50``); see ``--help``."""
    weighted: str = "critic"
    """Losses the weighting scales: ``critic``, ``actor`` or ``critic,actor`` (actor losses need linear space)."""

    # --- loop
    steps: int = 2_000_000
    """Loop steps; each steps every task's environment once and runs ``updates_per_step`` updates."""
    warmup_steps: int = 1500
    """Loop steps of uniformly random actions before the first update."""
    updates_per_step: int = 1
    """Gradient updates per loop step after the warm-up."""
    batch_size: int = 1280
    """Transitions per update, split equally over the tasks (must be a multiple of the task count)."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions over all tasks (each task gets ``buffer_size // K``)."""

    # --- environment
    max_episode_steps: int = 500
    """Episode length (time-limit truncation, bootstrapped through)."""
    reward_version: str = "v2"
    """Meta-World reward function: ``v2`` (default, in [0, 10]) or ``v1``."""
    reward_scale: tuple[float, ...] = ()
    """Per-task multipliers of the rewards the agent learns from (the replay's): one value for every task or K in
    task order (``--set reward_scale=0.1,1,1,1,1,1,1,1,1,1``); empty = 1.  A controlled imbalance: a task scaled by
    0.1 has TD targets up to 10× and critic losses up to 100× smaller (less while the entropy bonus dominates its
    targets).  Logged returns and success stay the env's own."""
    fixed_goals: bool = False
    """Freeze one goal per task for the whole run (the published v1 protocol) instead of a new goal per reset."""
    one_hot: bool = True
    """Append the one-hot task id to the observation (39 + K dims)."""
    vector_strategy: str = "sync"
    """How the vector env steps its environments: ``sync`` (in-process) or ``async`` (worker processes)."""
    rollout: str = "sync"
    """``sync``: step the envs in this process, then update (simple, for debugging); ``async``: step them in worker
    processes while the learner updates (``envs/rollout.py``, architecture §7; the update lags the data by one step)."""
    workers: int = 0
    """Rollout worker processes with ``rollout=async``, each owning a share of the tasks balanced by measured step
    cost; 0 = one per core left free by the learner (at most one per task)."""

    # --- agent
    hidden_sizes: tuple[int, ...] = (400, 400, 400)
    """Hidden layer widths of the actor and of each critic."""
    arch: str = "shared"
    """``shared`` (one MLP, task from the one-hot) or ``multihead`` (shared trunk, one output head per task)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the entropy temperatures."""
    init_alpha: float = 1.0
    """Initial entropy temperature."""
    shared_alpha: bool = False
    """One temperature for all tasks instead of one per task."""
    target_entropy: float | None = None
    """Entropy target of each temperature; ``None`` means ``-action_dim``."""
    actor_update_every: int = 1
    """Update the actor (and temperatures) every this many critic updates."""
    target_update_every: int = 1
    """Polyak-update the target critics every this many critic updates."""
    grad_clip: float = 0.0
    """Clip each network's gradient norm to this value; 0 disables."""
    max_skipped_updates: int = 100
    """Stop the run (checkpoint, exit 3) after this many consecutive updates skipped for a non-finite loss or
    gradient; 0 never stops."""

    # --- evaluation, logging, checkpoints
    eval_every: int = 30_000
    """Evaluate the deterministic policy every this many loop steps (and at the end); 0 evaluates only at the end."""
    eval_episodes: int = 10
    """Evaluation episodes per task."""
    log_every: int = 1000
    """Write training scalars every this many loop steps."""
    checkpoint_every: int = 50_000
    """Checkpoint every this many loop steps (and on SIGINT/SIGTERM and at the end); 0 disables the periodic ones."""
    save_replay: bool = False
    """Also checkpoint the replay buffer (can be GBs) so a resumed run continues with its data."""

    # --- provenance (filled by the loader, not meant to be set by hand)
    preset: str = field(default="", compare=False)
    """Name of the preset the config started from."""

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ derived views
    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`envs.metaworld.make_env` (besides name and seed)."""
        return {
            "max_episode_steps": self.max_episode_steps,
            "reward_version": self.reward_version,
            "fixed_goals": self.fixed_goals,
            "one_hot": self.one_hot,
            "vector_strategy": self.vector_strategy,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        out["reward_scale"] = list(self.reward_scale)
        out["combiner"] = dict(self.combiner)
        out["weighting_opts"] = dict(self.weighting_opts)
        return out


# ---------------------------------------------------------------------- validation
_CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "reward_version": ("v1", "v2"),
    "vector_strategy": ("sync", "async"),
    "rollout": ("sync", "async"),
    "arch": ("shared", "multihead"),
    "combine_params": ("all", "shared"),
}
_POSITIVE_INT = ("steps", "batch_size", "buffer_size", "max_episode_steps", "eval_episodes", "log_every",
                 "updates_per_step", "actor_update_every", "target_update_every")
_NON_NEGATIVE_INT = ("warmup_steps", "eval_every", "checkpoint_every", "torch_threads", "seed", "diag_every",
                     "workers", "max_skipped_updates")
_POSITIVE_FLOAT = ("actor_lr", "critic_lr", "alpha_lr", "init_alpha")
_ENV_PATTERN = re.compile(r"^(mt10|mt50|mt1:[a-z0-9-]+)$")


def _flag(name: str) -> str:
    """The command-line spelling of a field: dedicated flags for the common ones, ``--set name`` otherwise."""
    dedicated = ("env", "method", "seed", "device", "steps", "weighting", "rollout", "workers")
    return f"--{name}" if name in dedicated else f"--set {name}"


def _validate(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid field."""
    if not _ENV_PATTERN.match(cfg.env):
        raise ConfigError("--env", f"unknown environment '{cfg.env}'; valid: mt10, mt50, mt1:<task> (e.g. mt1:reach-v3)")
    if cfg.env.startswith("mt1:"):
        _check_mt1_task(cfg.env[len("mt1:"):])
    if cfg.method not in METHODS:
        raise ConfigError("--method", f"unknown method '{cfg.method}'; known: {', '.join(METHODS)}")
    for name, choices in _CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(_flag(name), f"'{getattr(cfg, name)}' is not one of {', '.join(choices)}")
    for name in _POSITIVE_INT:
        if getattr(cfg, name) < 1:
            raise ConfigError(_flag(name), f"must be an integer >= 1, got {getattr(cfg, name)}")
    for name in _NON_NEGATIVE_INT:
        if getattr(cfg, name) < 0:
            raise ConfigError(_flag(name), f"must be an integer >= 0, got {getattr(cfg, name)}")
    for name in _POSITIVE_FLOAT:
        if not getattr(cfg, name) > 0:
            raise ConfigError(_flag(name), f"must be > 0, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.gamma < 1.0:
        raise ConfigError("--set gamma", f"must be in [0, 1), got {cfg.gamma}")
    if not 0.0 < cfg.tau <= 1.0:
        raise ConfigError("--set tau", f"must be in (0, 1], got {cfg.tau}")
    if cfg.grad_clip < 0:
        raise ConfigError("--set grad_clip", f"must be >= 0 (0 disables), got {cfg.grad_clip}")
    if not cfg.hidden_sizes or any(h < 1 for h in cfg.hidden_sizes):
        raise ConfigError("--set hidden_sizes", f"must be a non-empty list of positive widths, got {cfg.hidden_sizes}")
    if cfg.rollout == "async" and cfg.vector_strategy != "sync":
        raise ConfigError("--rollout", "async rollouts run their own worker processes; leave vector_strategy at sync")
    _validate_combiner(cfg)
    _validate_weighting(cfg)
    k = num_tasks(cfg.env)
    if cfg.reward_scale and (len(cfg.reward_scale) not in (1, k)
                             or not all(math.isfinite(v) and v > 0 for v in cfg.reward_scale)):
        raise ConfigError("--set reward_scale", f"must be one positive number or {k} (one per task of {cfg.env}), "
                          f"got {','.join(map(str, cfg.reward_scale))}")
    if cfg.batch_size % k:
        raise ConfigError("--set batch_size", f"must be a multiple of the {k} tasks of {cfg.env}, got {cfg.batch_size}")
    if cfg.buffer_size < k:
        raise ConfigError("--set buffer_size", f"must give each of the {k} tasks at least one slot, got {cfg.buffer_size}")


@functools.lru_cache(maxsize=None)
def _check_mt1_task(task: str) -> None:
    """``mt1:<task>`` names a Meta-World v3 task.  Imports metaworld (~1-2 s), so only for ``mt1:`` names and once
    per task name per process."""
    from rl_mtl.envs.metaworld import MT1_TASKS

    if task in MT1_TASKS:
        return
    close = difflib.get_close_matches(task, MT1_TASKS, n=3)
    hint = f"did you mean {' or '.join('mt1:' + t for t in close)}? " if close else ""
    examples = [t for t in ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3") if t in MT1_TASKS]
    raise ConfigError("--env", f"unknown MT1 task '{task}'; {hint}Meta-World has {len(MT1_TASKS)}, e.g. "
                               f"{', '.join(examples or MT1_TASKS[:4])}; list them with python -c \"from "
                               "rl_mtl.envs.metaworld import MT1_TASKS; print(*MT1_TASKS)\"")


def _validate_combiner(cfg: TrainConfig) -> None:
    """``combine`` names known losses; ``combiner.*`` hyperparameters exist for the method and are in range."""
    if cfg.combine != "auto":
        _check_parts(cfg.combine, "--set combine", "auto or a list of ")
    if cfg.combine_params == "shared" and cfg.arch != "multihead":
        raise ConfigError("--set combine_params", "'shared' gives each task head its own gradient, but arch=shared "
                          "has no heads; add --set arch=multihead or keep combine_params=all")
    if cfg.method == "mtsac":
        if cfg.combiner:
            raise ConfigError(f"--set combiner.{next(iter(cfg.combiner))}", "method mtsac has no combiner options")
        return
    missing = combiners.missing_extra(cfg.method)  # TorchJD's methods: an optional extra
    if missing:
        raise ConfigError("--method", missing)
    built = _build_with_options(combiners, cfg.method, cfg.combiner, "combiner", "--method")
    check = getattr(built, "check_num_tasks", None)  # vector options (TorchJD's pref_vector) must fit K
    problem = check(num_tasks(cfg.env)) if check is not None else None
    if problem:
        raise ConfigError(f"--set combiner.{problem[0]}", problem[1])


def _build_with_options(registry: Any, name: str, options: Mapping[str, Any], prefix: str, flag: str) -> Any:
    """Build ``registry.make(name, **options)`` (a combiner or a weighting) to validate its options; an unknown
    option or a value out of range is a :class:`ConfigError` naming ``--set <prefix>.<option>``."""
    known = registry.hparams(name)
    for option in options:
        if option not in known or option == "seed":
            allowed = ", ".join(k for k in known if k != "seed")
            raise ConfigError(f"--set {prefix}.{option}", f"unknown option of {name}; known: {allowed}")
    for option, value in options.items():  # a number given as text: say so, not Python's "must be real number"
        default = known[option]
        if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            raise ConfigError(f"--set {prefix}.{option}", f"expected a number, got '{value}'")
    try:
        return registry.make(name, **options)
    except (ValueError, TypeError) as exc:
        option = next((n for n in options if n in str(exc)), next(iter(options), ""))
        raise ConfigError(f"--set {prefix}.{option}" if option else flag, str(exc)) from None


def _validate_weighting(cfg: TrainConfig) -> None:
    """The weighting exists, its options exist and are in range, and it weights losses it can take the log of."""
    if cfg.weighting not in weighting.names():
        raise ConfigError("--weighting", f"unknown weighting '{cfg.weighting}'; known: {', '.join(weighting.names())}")
    parts = _check_parts(cfg.weighted, "--set weighted", "a list of ")
    if cfg.weighting == "none":
        if cfg.weighting_opts:
            raise ConfigError(f"--set weighting.{next(iter(cfg.weighting_opts))}",
                              "no loss weighting is selected (--weighting none)")
        return
    built = _build_with_options(weighting, cfg.weighting, cfg.weighting_opts, "weighting", "--weighting")
    if "actor" in parts and built.space == "log":
        raise ConfigError("--set weighted", "SAC's actor loss can be negative, so it cannot be weighted in log "
                                            "space; add --set weighting.space=linear or weight the critic only")
    if "actor" in parts and cfg.weighting == "uw":
        raise ConfigError("--set weighted", "SAC's actor loss can be negative, where uw's log-variance has no "
                                            "equilibrium; weight the critic only")


def method_help() -> str:
    """One line per method with its combiner hyperparameters and defaults (for ``--help``)."""
    lines = ["mtsac: plain multi-task SAC (mean of the per-task losses; alias mean)"]
    for name in METHODS[1:]:
        options = ", ".join(f"{k}={v!r}" for k, v in combiners.hparams(name).items() if k != "seed")
        note = getattr(combiners.get_class(name), "extra_note", "")  # TorchJD's methods: the install line
        lines.append(f"{name}: {options or '(no options)'}" + (f"  [{note}]" if note else ""))
    lines.append("")
    lines.append("loss weightings (--weighting NAME, --set weighting.NAME=VALUE; --method igbv2 = mtsac + igbv2):")
    for name in WEIGHTING_METHODS:
        options = ", ".join(f"{k}={v!r}" for k, v in weighting.hparams(name).items() if k != "seed")
        lines.append(f"{name}: {options}")
    return "\n  ".join(lines)


def num_tasks(env: str) -> int:
    """Task count of a benchmark name (10, 50 or 1)."""
    return {"mt10": 10, "mt50": 50}.get(env, 1)


# ---------------------------------------------------------------------- loading and overrides
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-3`` is the number 0.001 (YAML 1.1, PyYAML's default,
    reads it as the string '1e-3' because it has no dot), in presets, ``config.yaml`` and ``--set`` alike."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`_Loader` (safe, YAML 1.2 floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader subclass


def presets() -> list[str]:
    """Names of the YAML presets in ``configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def is_config_path(name: str) -> bool:
    """Whether ``--config`` names a YAML file (a path) rather than a preset: it ends in ``.yaml``/``.yml``, holds a
    path separator, or is an existing file that is not a preset's name."""
    if name.endswith((".yaml", ".yml")) or "/" in name or os.sep in name:
        return True
    return name not in presets() and Path(name).expanduser().is_file()


def resolve_preset(name: str) -> str:
    """What a run records as its ``preset``: the preset's name, or the absolute path of a YAML file (so a sweep's
    runs, started elsewhere, read the same file)."""
    return str(Path(name).expanduser().resolve()) if is_config_path(name) else name


def load_preset(name: str) -> dict[str, Any]:
    """The overrides of preset ``name`` (``configs/<name>.yaml``) or of the YAML file ``name`` names, checked for
    unknown keys; the errors name the file."""
    if is_config_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError("--config", f"no such YAML file {path}")
        data = _read_yaml(path, "--config")
        if not data:  # an empty file would silently give the code's defaults (paper scale, 2M steps)
            raise ConfigError("--config", f"{path} holds no options; give at least one (e.g. env: mt10) or a preset")
        return data
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("--config", f"unknown preset '{name}'; known: {', '.join(presets())} (or the path of a "
                                      "YAML file, e.g. ./my.yaml)")
    return _read_yaml(path, "--config")


def _read_yaml(path: Path, flag: str) -> dict[str, Any]:
    try:
        data = load_yaml(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(flag, f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(flag, f"cannot read {path}: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(flag, f"{path} must hold a mapping of option: value")
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise ConfigError(flag, f"{path} has unknown option(s) {', '.join(unknown)}")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where it is (``expected ',' or ']', but got ':' at line 3,
    column 2``), instead of PyYAML's several lines of context and carets."""
    def where(mark: Any) -> str:
        return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    if not problem:
        return "YAML syntax error: " + (f"{context}{where(getattr(exc, 'context_mark', None))}" if context
                                        else " ".join(str(exc).split()))
    text = f"{problem}{where(getattr(exc, 'problem_mark', None))}"
    if context:  # where the construct the parser was in began: often the line that holds the mistake
        text += f" ({context}{where(getattr(exc, 'context_mark', None))})"
    return f"YAML syntax error: {text}"


def field_names() -> list[str]:
    """All option names, in declaration order."""
    return [f.name for f in fields(TrainConfig)]


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` → typed overrides; values are parsed as YAML (``hidden_sizes=256,256`` works too)."""
    out: dict[str, Any] = {}
    names = field_names()
    seen: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--set", f"expected key=value, got '{item}'")
        if key in seen:  # the last one would win silently: say which two disagree (or repeat)
            raise ConfigError(f"--set {key}", f"given twice ({seen[key]} and {item.strip()}); keep one")
        seen[key] = item.strip()
        if key.startswith("combiner.") and len(key) > len("combiner."):
            out.setdefault("combiner", {})[key[len("combiner."):]] = load_yaml(raw.strip())
            continue
        if key.startswith("weighting.") and len(key) > len("weighting."):
            out.setdefault("weighting_opts", {})[key[len("weighting."):]] = load_yaml(raw.strip())
            continue
        if key not in names:
            raise ConfigError("--set", f"unknown option '{key}'; known: {', '.join(n for n in names if n != 'preset')}")
        out[key] = _coerce(key, raw.strip())
    return out


def _coerce(name: str, raw: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, raising :class:`ConfigError` naming the field."""
    hint = typing.get_type_hints(TrainConfig)[name]
    value = load_yaml(raw) if isinstance(raw, str) else raw
    if name in ("combiner", "weighting_opts"):
        if not isinstance(value, dict):
            raise ConfigError(f"--set {name}", f"expected a mapping of option: value, got '{raw}'")
        return dict(value)
    try:
        if name == "reward_scale":
            if value is None or value == "":
                return ()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            elif isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            return tuple(float(v) for v in value)
        if name == "hidden_sizes":
            if isinstance(value, int):
                value = [value]
            elif isinstance(value, str):
                value = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
            return tuple(int(v) for v in value)
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise TypeError
        if hint is int:
            if isinstance(value, bool) or not float(value).is_integer():
                raise TypeError
            return int(float(value))  # accepts 2e6
        if hint is float:
            return float(value)
        if hint == (float | None):
            return None if value in (None, "none", "None") else float(value)
        return str(value)
    except (TypeError, ValueError):
        expected = {bool: "true/false", int: "an integer", float: "a number"}.get(hint, str(hint))
        raise ConfigError(_flag(name), f"expected {expected}, got '{raw}'") from None


def build_config(
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults ← ``base`` (a saved config) or preset ← overrides, coerced and validated."""
    values: dict[str, Any] = {}
    if base is not None:
        values.update(base)
    elif preset:
        values.update(load_preset(preset))
        values["preset"] = resolve_preset(preset)
    overrides = dict(overrides or {})
    # combiner options merge key by key (a preset's c survives --set combiner.rescale=...)
    values["combiner"] = {**values.get("combiner", {}), **overrides.pop("combiner", {})}
    values["weighting_opts"] = {**values.get("weighting_opts", {}), **overrides.pop("weighting_opts", {})}
    values.update(overrides)
    values["method"] = METHOD_ALIASES.get(values.get("method", "mtsac"), values.get("method", "mtsac"))
    if values["method"] in WEIGHTING_METHODS:  # --method igbv2: the plain mean with the igbv2 weighting
        if values.get("weighting", "none") not in ("none", values["method"]):
            raise ConfigError("--method", f"'{values['method']}' is shorthand for --method mtsac --weighting "
                                          f"{values['method']}, but --weighting {values['weighting']} was given")
        values["weighting"], values["method"] = values["method"], "mtsac"
    typed = {k: (_coerce(k, v) if k != "preset" else str(v)) for k, v in values.items()}
    return TrainConfig(**typed)


def load_config_file(path: Path) -> dict[str, Any]:
    """A saved ``config.yaml`` as a dict (for ``--resume`` and ``rl_mtl.evaluate``)."""
    if not path.is_file():
        raise ConfigError("--resume", f"no saved config at {path}")
    return _read_yaml(path, "--resume")


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as flat YAML."""
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_table(cfg: TrainConfig) -> str:
    """Markdown table of every resolved option (TensorBoard text at step 0, as CleanRL does)."""
    rows = "\n".join(f"|{k}|{v}|" for k, v in cfg.to_dict().items())
    return f"|option|value|\n|-|-|\n{rows}"
