"""User-facing errors and the one-line error handling of every command-line tool.

A user's mistake (a config typo, a missing file, a wrong checkpoint) raises :class:`UserError` with a message
that names the key, file or line it concerns and, where one helps, a hint. Every CLI runs through
:func:`run_cli`, which prints such an error as one line (``prog: error: message (hint: ...)``) and exits 2;
``--debug`` (or ``IVF_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line by the CLIs, never as a traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(UserError, ValueError):
    """An invalid config: an unknown key, a wrong type, an impossible value. Names the dotted key."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the model. Names the file."""


# Exceptions that a user's input commonly causes deep inside the library; shown as one line too.
_ONE_LINE = (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def run_cli(prog: str, main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and turn a user's mistake into one line on stderr and exit code 2.

    ``--debug`` anywhere in ``argv`` (removed before ``main`` sees it) or ``IVF_DEBUG=1`` re-raises instead,
    so the traceback shows."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("IVF_DEBUG", "") not in ("", "0")
    if "--debug" in args:
        args = [arg for arg in args if arg != "--debug"]
        debug = True
    try:
        return main(args)
    except _ONE_LINE as error:
        if debug:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
