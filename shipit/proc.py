"""The one door to subprocesses: argument lists (never a shell), logged with secrets
redacted, bounded in time, and stoppable as a group when the run is interrupted.

Secrets reach tools through their environment or stdin, never through argv; every command
line is still passed through the redaction filter before it is logged, in case a value
slipped in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shipit import log
from shipit.errors import ShipitError

_log = log.get(__name__)
_TAIL = 20  # lines of a failed command's output shown in its error
_MASK = "********"


@dataclass(frozen=True, kw_only=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class ToolMissing(ShipitError):
    """A tool shipit runs is not installed; the hint says how to get it."""


class CommandError(ShipitError):
    """A command failed or timed out; names the tool and shows the end of its output."""

    def __init__(
        self, result: Result, *, timed_out: bool = False, secrets: Iterable[str] = ()
    ) -> None:
        tool = Path(result.argv[0]).name
        what = "timed out" if timed_out else f"exited with {result.returncode}"
        tail = "\n".join(_tail(result.stderr or result.stdout))
        message = f"{tool} {what}: {redact(' '.join(result.argv), secrets)}"
        if tail:
            message += "\n" + redact(tail, secrets)
        super().__init__(message)
        self.result = result
        self.timed_out = timed_out
        self.tool = tool


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


def find_tool(name: str, env: Mapping[str, str], *, hint: str) -> str:
    """The path of an executable on the environment's PATH, or ToolMissing with `hint`."""
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if not found:
        raise ToolMissing(f"{name} is not installed (not found on PATH)", hint=hint)
    return found


class _Running:
    """Children alive right now, so an interrupted run can stop every one of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[str]] = set()

    def add(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def terminate_all(self, grace: float = 5.0) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _stop(proc, grace)


RUNNING = _Running()


def terminate_children(grace: float = 5.0) -> None:
    """Stop every child process still running (on Ctrl-C or SIGTERM)."""
    RUNNING.terminate_all(grace)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    secrets: Iterable[str] = (),
    timeout: float | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> Result:
    """Run `argv` to completion and capture its output.

    The child gets exactly `env` (nothing inherited), runs in its own process group (so it
    can be stopped with everything it started), and is killed after `timeout` seconds.
    """
    secret_list = [s for s in secrets if s]
    started = time.monotonic()
    proc = _start(
        argv,
        env=env,
        cwd=cwd,
        secrets=secret_list,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    RUNNING.add(proc)
    timed_out = False
    try:
        try:
            out, err = proc.communicate(input=stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc, signal.SIGKILL)
            out, err = proc.communicate()
        except BaseException:  # Ctrl-C or SIGTERM while waiting: the child goes too
            _stop(proc)
            raise
    finally:
        RUNNING.discard(proc)
    result = Result(
        argv=tuple(argv),
        returncode=proc.returncode,
        stdout=out,
        stderr=err,
        seconds=time.monotonic() - started,
    )
    _log.debug("  %s exited %d in %.1fs", Path(argv[0]).name, proc.returncode, result.seconds)
    if timed_out or (check and proc.returncode != 0):
        raise CommandError(result, timed_out=timed_out, secrets=secret_list)
    return result


def stream(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    secrets: Iterable[str] = (),
    timeout: float | None = None,
    cwd: Path | None = None,
    keep: int = 400,
) -> Result:
    """Run `argv`, handing each line of its output (stdout and stderr, merged) to `on_line`
    as it comes, with secrets redacted; a build log in CI wants to be seen while it runs.

    The same rules as `run`: exactly `env`, its own process group, killed after `timeout`
    seconds. The result's `stdout` holds the last `keep` lines (a long build's log is not
    kept whole in memory); a non-zero exit raises CommandError with that tail.
    """
    secret_list = [s for s in secrets if s]
    started = time.monotonic()
    proc = _start(
        argv,
        env=env,
        cwd=cwd,
        secrets=secret_list,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        line_buffered=True,
    )
    tail: deque[str] = deque(maxlen=keep)

    def keep_and_hand_on(line: str) -> None:
        tail.append(line)
        on_line(line)

    expired = _pump(proc, timeout, keep_and_hand_on, secret_list)
    result = Result(
        argv=tuple(argv),
        returncode=proc.returncode,
        stdout="\n".join(tail),
        stderr="",
        seconds=time.monotonic() - started,
    )
    _log.debug("  %s exited %d in %.1fs", Path(argv[0]).name, proc.returncode, result.seconds)
    if expired or proc.returncode != 0:
        raise CommandError(result, timed_out=expired, secrets=secret_list)
    return result


def _start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    secrets: Sequence[str],
    stdin: int,
    stderr: int,
    line_buffered: bool = False,
) -> subprocess.Popen[str]:
    """Start `argv` (logged, redacted) with exactly `env`, in a process group of its own."""
    _log.debug("+ %s", redact(" ".join(argv), secrets))
    try:
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            errors="replace" if line_buffered else None,
            bufsize=1 if line_buffered else -1,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise ToolMissing(f"{argv[0]} is not installed") from None


def _pump(
    proc: subprocess.Popen[str],
    timeout: float | None,
    on_line: Callable[[str], None],
    secrets: Sequence[str],
) -> bool:
    """Hand each line of `proc`'s output on, redacted, until it exits; kill it (and its
    group) after `timeout` seconds. Returns whether the timeout killed it."""
    RUNNING.add(proc)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _signal_group(proc, signal.SIGKILL)

    timer = threading.Timer(timeout, expire) if timeout else None
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            assert proc.stdout is not None  # noqa: S101 - PIPE was asked for
            for raw in proc.stdout:
                on_line(redact(raw.rstrip("\n"), secrets))
            proc.wait()
        except BaseException:  # Ctrl-C or SIGTERM while streaming: the child goes too
            _stop(proc)
            raise
    finally:
        if timer is not None:
            timer.cancel()
        RUNNING.discard(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    return expired.is_set()


def _stop(proc: subprocess.Popen[str], grace: float = 5.0) -> None:
    """SIGTERM to the child's process group, SIGKILL if it is still there after `grace`."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _tail(text: str) -> list[str]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-_TAIL:]
