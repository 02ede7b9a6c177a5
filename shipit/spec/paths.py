"""Paths written in the spec, checked before the filesystem ever sees them.

Every path value (context, dockerfile, ignorefile, key, ca_file, reports, secret files,
cache_dir) goes through `check` and `resolve`, and every look at the filesystem through
`kind`, so a hostile value is a message the `Reader` locates, never an exception: a NUL or
other control character, a path longer than PATH_MAX (4096 bytes on Linux) or a component
longer than NAME_MAX (255 bytes), a symlink loop, a folder that cannot be searched.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from pathlib import Path
from typing import Final, Literal

PATH_MAX: Final = 4096  # bytes, with the terminating NUL (linux/limits.h)
NAME_MAX: Final = 255  # bytes in one component
SHOWN: Final = 60  # characters of a value quoted in a message

Kind = Literal["file", "folder", "other", "missing"]


class PathProblem(Exception):
    """A path that cannot be used; the message says why, without the path's own quoting."""


def shown(text: str) -> str:
    """`text` quoted for a message, cut short when long (the length says how long)."""
    if len(text) <= SHOWN:
        return f"'{text}'"
    return f"'{text[:SHOWN]}...' ({len(text)} characters)"


def check(text: str) -> None:
    """Raise PathProblem for text no system call should be given."""
    for char in text:
        if char == "\x00":
            raise PathProblem("contains a NUL character")
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise PathProblem(f"contains the control character U+{ord(char):04X}")
    encoded = os.fsencode(text)
    if len(encoded) >= PATH_MAX:
        raise PathProblem(f"is {len(encoded)} bytes long; a path has at most {PATH_MAX - 1}")
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if longest > NAME_MAX:
        raise PathProblem(f"has a name of {longest} bytes; a file name has at most {NAME_MAX}")


def resolve(base: Path, text: str) -> Path:
    """`text` (checked) relative to `base`, made absolute with symlinks followed."""
    check(text)
    try:
        path = (base / text).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a symlink loop (3.11)
        raise PathProblem(f"cannot be resolved: {_reason(exc)}") from None
    check(str(path))  # the joined path may be longer than the text
    return path


def kind(path: Path) -> Kind:
    """What is at `path`; PathProblem when the system cannot tell (permissions, loops)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing"
        raise PathProblem(f"cannot be read: {_reason(exc)}") from None
    except ValueError as exc:
        raise PathProblem(f"cannot be used: {exc}") from None
    if stat.S_ISREG(mode):
        return "file"
    return "folder" if stat.S_ISDIR(mode) else "other"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
