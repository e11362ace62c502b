"""The run labels (``cagrad``, ``imgrad+igbv2``, ``stl``, ``cagrad[c=0.5]``) and ``--grid`` option grids of
``rl_mtl.sweep``: parsed and checked here, apart from planning and running the sweep (this module never imports it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

from rl_mtl import combiners, weighting
from rl_mtl.config import METHOD_ALIASES, METHODS, WEIGHTING_METHODS, ConfigError, parse_set

#: the options the sweep sets itself, each with the sweep flag that sets it (neither ``--set`` nor ``--grid`` may)
SWEEP_KEYS = {"env": "--env", "method": "--methods", "seed": "--seeds/--first-seed", "steps": "--steps"}
#: the label of single-task SAC: one ``mt1:<task>`` run of plain SAC per task of ``--env mt10``/``mt50``
STL = "stl"
#: options a grid may vary besides ``combiner.NAME`` and ``weighting.NAME``: those ``rl_mtl.report`` lets differ
#: between labels (report_runs.METHOD_FIELDS); a protocol option (``batch_size``, ``critic_lr``) varied inside one sweep
#: would make the report leave the minority's runs out as "different config"
GRID_FIELDS = ("combine", "weighted")


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid KEY=V1,V2`` flag: the option, its values as given (passed on as ``--set KEY=V``), the same
    values as they appear in labels, and the option's name in labels."""

    key: str
    values: tuple[str, ...]
    shown: tuple[str, ...]
    name: str



# ---------------------------------------------------------------------------------------------------------------
# run labels: a method, method+weighting, or stl
def split_label(label: str) -> tuple[str, str | None]:
    """``"imgrad+igbv2"`` → ``("imgrad", "igbv2")`` (a method with a loss weighting); ``"cagrad"`` → ``("cagrad", None)``."""
    method, _, weighting = label.partition("+")
    return method, (weighting or None)


def label_overrides(label: str) -> dict[str, str]:
    """The config options a run label sets: ``method`` and, for ``method+weighting``, ``weighting``."""
    method, weighting = split_label(label)
    return {"method": method, **({"weighting": weighting} if weighting else {})}


def parse_methods(text: str) -> list[str]:
    """``"mtsac,cagrad,imgrad+igbv2"`` → run labels (aliases resolved, duplicates dropped, none empty); a label
    ``method+weighting`` trains ``--method method --weighting weighting``.

    The names are checked by building each run's config, so any name ``rl_mtl.train --method`` takes is accepted.
    """
    out: list[str] = []
    for raw in text.split(","):
        method, weighting = split_label(raw.strip())
        method = METHOD_ALIASES.get(method, method)
        name = f"{method}+{weighting}" if weighting else method
        if not name:
            raise ConfigError("--methods", f"empty method name in '{text}'")
        if method == STL and weighting:
            raise ConfigError("--methods", f"'{name}': stl is plain SAC on one task; it takes no loss weighting")
        if name not in out:
            out.append(name)
    return out


def resolve_label(label: str) -> tuple[str, str]:
    """The ``(method, weighting)`` a run label trains: ``imgrad+igbv2`` → ``(imgrad, igbv2)``, ``igbv2`` → ``(mtsac,
    igbv2)`` (the shorthand), ``stl`` → ``(mtsac, none)``."""
    method, weighting_name = split_label(label)
    if method == STL:
        return "mtsac", "none"
    if method in WEIGHTING_METHODS and not weighting_name:
        return "mtsac", method
    return method, weighting_name or "none"


# ---------------------------------------------------------------------------------------------------------------
# option grids: --grid KEY=V1,V2 makes one label per point of the product, e.g. cagrad[c=0.5,hold=50]
def split_values(text: str) -> list[str]:
    """``"0.5,0.9"`` → ``["0.5", "0.9"]``; commas inside brackets belong to a value (``[256,256],[64,64]``)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    return values + [current.strip()]


def shown_value(value: Any) -> str:
    """A parsed option value as a label shows it: ``0.5``, ``true``, ``none``, a list as ``256x256``; so ``0.50`` and
    ``0.5`` name the same run directory."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "x".join(shown_value(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{shown_value(v)}" for k, v in value.items())
    return repr(value) if isinstance(value, float) else str(value)


def _parsed(key: str, raw: str) -> Any:
    """A grid value parsed as ``--set KEY=VALUE`` parses it (``rl_mtl.config.parse_set``)."""
    parsed = parse_set([f"{key}={raw}"])
    for group, prefix in (("combiner", "combiner."), ("weighting_opts", "weighting.")):
        if key.startswith(prefix):
            return parsed[group][key[len(prefix):]]
    return parsed[key]


def _given_by_set(key: str, overrides: dict[str, Any]) -> bool:
    """Whether ``--set`` already sets grid option ``key`` (as ``combiner.c`` or inside ``combiner={c: ...}``)."""
    for group, prefix in (("combiner", "combiner."), ("weighting_opts", "weighting.")):
        if key.startswith(prefix):
            return key[len(prefix):] in overrides.get(group, {})
    return key in overrides


def parse_grid(items: Sequence[str], overrides: dict[str, Any]) -> list[GridAxis]:
    """The ``--grid KEY=V1,V2,...`` flags as axes, checked: each value parsed like ``--set`` (an unknown option or a
    malformed value is a :class:`ConfigError` naming ``--grid``), no key twice or also given by ``--set``, no key
    the sweep sets itself, no value twice."""
    axes: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--grid", f"expected KEY=V1,V2,... (e.g. combiner.c=0.5,0.9), got '{item}'")
        flag = f"--grid {key}"
        if key in SWEEP_KEYS or key in ("weighting", "preset"):
            use = {"weighting": "--methods METHOD+WEIGHTING", "preset": "--config"}.get(key) or SWEEP_KEYS[key]
            raise ConfigError(flag, f"is set by the sweep; use {use}")
        if any(key == k for k, _, _ in axes):
            raise ConfigError(flag, "given twice; put all its values in one --grid")
        values = split_values(text)
        if not text.strip() or any(not v for v in values):
            raise ConfigError(flag, f"empty value in '{item}'; expected {key}=V1,V2,...")
        try:
            shown = tuple(shown_value(_parsed(key, v)) for v in values)
        except ConfigError as exc:
            raise ConfigError("--grid" if exc.flag == "--set" else f"--grid {key}", str(exc).split(": ", 1)[1]) \
                from None
        if not key.startswith(("combiner.", "weighting.")) and key not in GRID_FIELDS:
            raise ConfigError(flag, f"a grid varies method options (combiner.NAME, weighting.NAME, "
                              f"{', '.join(GRID_FIELDS)}), which the report compares side by side; sweep {key} "
                              f"with --set {key}=... into another --out")
        if _given_by_set(key, overrides):
            raise ConfigError(flag, "also given by --set; keep one")
        twice = next((v for v in shown if shown.count(v) > 1), None)
        if twice is not None:
            raise ConfigError(flag, f"value {twice} given twice")
        bad = next((v for v in shown if "/" in v or v in (".", "..") or any(c.isspace() for c in v)), None)
        if bad is not None:
            raise ConfigError(flag, f"value '{bad}' cannot be part of a run directory's name")
        axes.append((key, tuple(values), shown))
    short = [key.rsplit(".", 1)[-1] for key, _, _ in axes]
    return [GridAxis(key, values, shown, name if short.count(name) == 1 else key)
            for (key, values, shown), name in zip(axes, short)]


def grid_applies(key: str, label: str) -> bool:
    """Whether the method a label trains has grid option ``key``: ``combiner.c`` for cagrad and imgrad, not for
    mtsac; ``weighting.hold`` for labels with a weighting; ``combine`` for a combiner; ``weighted`` with a
    weighting. ``stl`` (plain SAC per task) has none."""
    method, weighting_name = resolve_label(label)
    if split_label(label)[0] == STL or method not in METHODS:
        return False
    if key.startswith("combiner."):
        return method != "mtsac" and key[len("combiner."):] in set(combiners.hparams(method)) - {"seed"}
    if key.startswith("weighting."):
        return (weighting_name != "none" and weighting_name in weighting.names()
                and key[len("weighting."):] in set(weighting.hparams(weighting_name)) - {"seed"})
    return method != "mtsac" if key == "combine" else weighting_name != "none"


def grid_points(label: str, axes: Sequence[GridAxis]) -> list[tuple[str, dict[str, str]]]:
    """``(run label, {key: value as given})`` of every point of the product of the axes that apply to ``label``, in
    the order of the ``--grid`` flags: ``cagrad`` with c=0.5,0.9 → ``cagrad[c=0.5]``, ``cagrad[c=0.9]``; a label
    no axis applies to runs once, as itself."""
    mine = [axis for axis in axes if grid_applies(axis.key, label)]
    if not mine:
        return [(label, {})]
    points = []
    for combo in itertools.product(*(range(len(axis.values)) for axis in mine)):
        shown = ",".join(f"{axis.name}={axis.shown[i]}" for axis, i in zip(mine, combo))
        points.append((f"{label}[{shown}]", {axis.key: axis.values[i] for axis, i in zip(mine, combo)}))
    return points


def with_point(overrides: dict[str, Any], options: dict[str, str]) -> dict[str, Any]:
    """``overrides`` plus a grid point's options (``combiner.*`` merged into the ``combiner`` mapping)."""
    point = parse_set([f"{key}={value}" for key, value in options.items()])
    merged = {**overrides, **point}
    for group in ("combiner", "weighting_opts"):
        if group in overrides or group in point:
            merged[group] = {**overrides.get(group, {}), **point.get(group, {})}
    return merged
