"""Command-line plumbing shared by the entry points: one-line errors with exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
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


def one_line(message: object) -> str:
    """``message`` with its lines joined by single spaces (an exception text from deeper code may span several)."""
    return " ".join(str(message).split())
