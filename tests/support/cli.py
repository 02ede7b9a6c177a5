"""shipit's command line, run in-process the way the tests need it."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping

import pytest

from shipit.cli import main


def run_shipit(
    args: list[str], capsys: pytest.CaptureFixture[str], env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `shipit ARGS` with exactly `env` (plus PATH if missing)."""
    code = main(args, env={"PATH": os.environ["PATH"], **(env or {})})
    out, err = capsys.readouterr()
    return code, out, err


def run_shipit_captured(args: list[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """Like `run_shipit`, for fixtures without `capsys`: stdout and stderr caught here."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args, env={"PATH": os.environ["PATH"], **env})
    return code, out.getvalue(), err.getvalue()
