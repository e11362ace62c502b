"""The install hint of an optional extra as setup.cfg says it should read, for the tests of every place that prints
one (``rl_mtl.cli.install_hint``): an expectation built from setup.cfg itself, not from the installed metadata."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def extras() -> list[str]:
    """The optional extras setup.cfg declares (``[options.extras_require]``)."""
    return list(_extras_section())


def setup_cfg_requirements(extra: str) -> list[Requirement]:
    """The requirements of ``extra`` as setup.cfg lists them, in its order."""
    lines = _extras_section()[extra].splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip()]


def expected_hint(extra: str, checkout: Path | None = ROOT) -> str:
    """``pip install`` of the extra's requirements (packaging's normal form: extras and specifiers sorted), then, for
    a checkout, ``or pip install -e '<checkout>[extra]'``."""
    hint = "pip install " + " ".join(shlex.quote(str(r)) for r in setup_cfg_requirements(extra))
    return hint if checkout is None else f"{hint} or pip install -e {shlex.quote(f'{checkout}[{extra}]')}"


def _extras_section() -> configparser.SectionProxy:
    """setup.cfg's ``[options.extras_require]``."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser["options.extras_require"]
