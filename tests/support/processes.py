"""Processes the test services start: spawned in sessions of their own, stopped by PID.

* Everything is started in its own session (``setsid``), so its whole process group can be
  signalled; SIGTERM first, SIGKILL after a timeout. Nothing is ever stopped by name.
* Every wait is bounded in time.
* A PID is only signalled while it still is the process we meant: descendants are recorded
  with their start times before the first signal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Processes this interpreter started, so that we reap them ourselves and a PID cannot be
# reused behind our back while we still hold it.
_children: dict[int, subprocess.Popen[bytes]] = {}


class ServiceError(RuntimeError):
    """A service did not start, or did not answer in time."""


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start cmd in a new session (setsid), stdout and stderr appended to log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    _children[proc.pid] = proc
    return proc.pid


def exited(pid: int) -> bool:
    """True when pid is gone (reaping it if it is our child)."""
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is not None
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    else:
        if waited == pid:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # a zombie that someone else has to reap is gone for our purposes
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def proc_stats() -> dict[int, list[str]]:
    """/proc/PID/stat of every process, the fields after the command name."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
    return stats


# fields after the command name in /proc/PID/stat: 0 state, 1 ppid, 2 pgrp, 3 session, ...
# 19 starttime (proc(5))
_STATE, _PPID, _PGRP, _SESSION, _START = 0, 1, 2, 3, 19


def start_time(pid: int) -> str | None:
    """pid's start time (clock ticks after boot), None if there is no such process.

    A PID and its start time name one process: a reused PID has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[_START]


def _group_alive(pgid: int) -> bool:
    """True while some non-zombie process is in process group pgid."""
    return any(f[_PGRP] == str(pgid) and f[_STATE] != "Z" for f in proc_stats().values())


def _descendants(pid: int) -> dict[int, str]:
    """Every process below pid, with its start time (to tell a reused PID apart)."""
    stats = proc_stats()
    children: dict[int, list[int]] = {}
    for p, f in stats.items():
        children.setdefault(int(f[_PPID]), []).append(p)
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p not in found and p in stats:
            found[p] = stats[p][_START]
            todo.extend(children.get(p, []))
    return found


def _session(sid: int) -> dict[int, str]:
    """Every process of session sid but its leader, and everything below them, with start times.

    containerd's shims leave its process tree (their parent becomes PID 1) but stay in the
    session containerd was started in (checked with containerd 2.1 from Debian sid).
    """
    found: dict[int, str] = {}
    for p, f in proc_stats().items():
        if f[_SESSION] == str(sid) and p != sid:
            found[p] = f[_START]
            found.update(_descendants(p))
    return found


def _still_there(procs: dict[int, str]) -> list[int]:
    stats = proc_stats()
    return [
        p
        for p, start in procs.items()
        if p in stats and stats[p][_START] == start and stats[p][_STATE] != "Z"
    ]


def _signal(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def wait_ended(pid: int) -> None:
    """Return once `pid` has ended (a zombie waiting for its parent counts), with no clock.

    A pidfd becomes readable when its process exits (pidfd_open(2)); the wait is bounded by
    the test's own timeout, never by a guess at how fast the machine is.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone, reaped and all
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_process(pid: int, timeout: float = 10, *, whole_session: bool = False) -> None:
    """Stop the process pid and what it started: SIGTERM, then SIGKILL.

    pid's process group is signalled when pid leads one (we start everything with setsid).
    Descendants that moved to groups of their own (dockerd starts containerd with its own
    process group, and containerd its shims) are taken too, by PID, if they outlive pid:
    they are recorded before the first signal, with their start times, so a PID reused in
    the meantime is never hit. Every wait is bounded: up to ``timeout`` seconds after
    SIGTERM, then SIGKILL and up to 5 more seconds.

    With ``whole_session``, the processes of pid's session (pid leads one: spawn() starts it
    with setsid) are taken too, with what runs below them, although they are not pid's
    descendants any more (containerd's shims).
    """
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        group = False
    below = _descendants(pid)
    if whole_session:
        with contextlib.suppress(ProcessLookupError):
            if os.getsid(pid) == pid:
                below.update(_session(pid))

    def leader_gone() -> bool:
        return exited(pid) and not (group and _group_alive(pid))

    deadline = time.monotonic() + timeout
    if not leader_gone():
        _signal(pid, signal.SIGTERM, group)
        if not wait_until(leader_gone, timeout):
            _signal(pid, signal.SIGKILL, group)
            if not wait_until(leader_gone, 5.0):
                raise ServiceError(f"process {pid} did not end after SIGKILL")
    _children.pop(pid, None)
    _stop_recorded(below, max(deadline - time.monotonic(), 1.0), f"below {pid}")


def _stop_recorded(procs: dict[int, str], timeout: float, what: str) -> None:
    """SIGTERM the recorded processes that still run, then SIGKILL after timeout."""
    if not _still_there(procs):
        return
    for p in _still_there(procs):
        _signal(p, signal.SIGTERM, group=False)
    if not wait_until(lambda: not _still_there(procs), timeout):
        for p in _still_there(procs):
            _signal(p, signal.SIGKILL, group=False)
        if not wait_until(lambda: not _still_there(procs), 5.0):
            raise ServiceError(f"processes {_still_there(procs)} ({what}) did not end")


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"(no log at {log})"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def file_locked(
    path: Path, *, timeout: float, interval: float, error: type[Exception]
) -> Iterator[None]:
    """An exclusive flock on `path` (made with its folder when missing) for the block, taken
    within `timeout` seconds (polled every `interval`), else `error` naming the file: test
    sessions running at once take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise error(f"could not lock {path}") from None
                time.sleep(interval)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
