"""shipit's command line, run in-process the way the tests need it."""

from __future__ import annotations

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
