"""Command-line plumbing shared by the entry points: one-line errors with exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import shlex
import sys
from pathlib import Path
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line (``prog: error: --flag: message``) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` on stderr and exit 2 (the convention of argparse usage errors)."""
    error(prog, message)
    raise SystemExit(2)


def error(prog: str, message: str) -> None:
    """Print ``prog: error: message`` on stderr as one line, whatever newlines ``message`` holds."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)


def program_name(module: str) -> str:
    """How the user started entry point ``module``, for its usage and error lines: ``rl-mtl-train`` when run by that
    console script (setup.cfg's ``rl-mtl-<name>``), ``python -m rl_mtl.train`` otherwise."""
    script = "rl-mtl-" + module.rsplit(".", 1)[-1]
    return script if Path(sys.argv[0]).name == script else f"python -m {module}"


def one_line(message: object) -> str:
    """``message`` with its lines joined by single spaces (an exception text from deeper code may span several)."""
    return " ".join(str(message).split())


@functools.cache
def install_hint(extra: str) -> str:
    """The one-line command that installs optional extra ``extra`` (setup.cfg's ``[options.extras_require]``): its
    requirements, from the installed metadata (right for a wheel), and ``pip install -e`` of the checkout if any."""
    commands = []
    requirements = extra_requirements(extra)
    if requirements:
        commands.append("pip install " + " ".join(shlex.quote(r) for r in requirements))
    checkout = checkout_dir()
    if checkout is not None:
        commands.append(f"pip install -e {shlex.quote(f'{checkout}[{extra}]')}")
    return " or ".join(commands) or f"install rl_mtl with its {extra!r} extra"


def extra_requirements(extra: str) -> list[str]:
    """The requirements of optional extra ``extra`` on this platform, from the installed rl_mtl's metadata (``[]``
    when rl_mtl is not installed or has no such extra)."""
    from packaging.requirements import Requirement  # (install_requires); imported only when a hint is wanted

    try:
        entries = importlib.metadata.requires("rl_mtl") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    out = []
    for entry in entries:
        requirement = Requirement(entry)
        marker = requirement.marker
        # the extra's own entries: true for this extra, false for none (a core dependency's is the same for both)
        if marker is not None and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
            requirement.marker = None
            out.append(str(requirement))
    return out


def checkout_dir() -> Path | None:
    """The source checkout rl_mtl is imported from (an editable install or a plain checkout), ``None`` for a wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "setup.cfg").is_file() else None
