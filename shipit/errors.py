"""The failures shipit reports, each with its exit code and a hint of what to do next.

The command line turns a `ShipitError` into a message and an exit code in one place
(`shipit.cli`); nothing else prints tracebacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BLOCKED = 3
EXIT_INTERRUPTED = 130


class ShipitError(Exception):
    """A failure that shipit explains to its user; `exit_code` follows DESIGN section 1."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ShipitError):
    """Bad command-line usage or an input that cannot be used (exit 2)."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True, kw_only=True)
class Location:
    """A place in a file: 1-based line and column, as editors show them."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing wrong with a spec, at its place."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {printable(self.message)}"


def printable(text: str) -> str:
    """`text` on one line: control and other invisible characters escaped, as repr() would."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class SpecError(UsageError):
    """The spec is invalid: every problem found, each with FILE:LINE:COL (exit 2)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: Sequence[Problem] = tuple(problems)
        count = len(self.problems)
        lines = "\n".join(str(p) for p in self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{lines}\n{count} {noun} in the spec")


class StageError(ShipitError):
    """A pipeline stage failed: build, push, sign, or a tool that broke (exit 1)."""

    def __init__(self, stage: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{stage}: {message}", hint=hint)
        self.stage = stage


class GateBlocked(ShipitError):
    """The scan gate found what the policy forbids; nothing was pushed (exit 3)."""

    exit_code = EXIT_BLOCKED


class Interrupted(ShipitError):
    """The run was stopped by Ctrl-C or SIGTERM (exit 130)."""

    exit_code = EXIT_INTERRUPTED
