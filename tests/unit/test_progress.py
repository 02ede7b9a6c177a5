"""The upload progress line: what it says, and how often it reaches a log."""

from __future__ import annotations

import io

import pytest

from shipit.log import Console
from shipit.progress import Shower, Transfer, showing


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_shows_bytes_and_rate_per_registry() -> None:
    clock = Clock()
    transfer = Transfer("push app", clock=clock)
    assert transfer.line() is None  # nothing on its way yet: no line
    transfer.expect("ghcr.io/acme", 100_000_000)
    transfer.expect("127.0.0.1:5000", 100_000_000)
    transfer.add("ghcr.io/acme", 10_000_000)
    clock.now += 2
    transfer.add("ghcr.io/acme", 40_000_000)
    transfer.add("127.0.0.1:5000", 100_000_000)
    assert transfer.line() == (
        "push app: ghcr.io/acme 50.0/100.0 MB 25.0 MB/s, 127.0.0.1:5000 100.0/100.0 MB done"
    )


def test_an_upload_that_starts_over_goes_back_and_never_below_zero() -> None:
    transfer = Transfer("push app", clock=Clock())
    transfer.expect("r", 10_000_000)
    transfer.add("r", 6_000_000)
    transfer.add("r", -6_000_000)  # the upload restarted in a new session
    transfer.add("r", -1)
    assert transfer.total_done() == 0
    assert "r 0.0/10.0 MB" in str(transfer.line())


def test_a_log_gets_a_plain_line_only_when_the_bytes_moved() -> None:
    stream = io.StringIO()
    console = Console({"GITLAB_CI": "true"}, stream=stream, color="never")
    transfer = Transfer("push app", clock=Clock())
    shower = Shower(transfer, console)
    assert not shower.live
    shower.tick()  # nothing expected yet
    transfer.expect("r", 2_000_000)
    transfer.add("r", 1_000_000)
    shower.tick()
    shower.tick()  # nothing moved: no second line
    transfer.add("r", 1_000_000)
    shower.tick()
    assert stream.getvalue().splitlines() == [
        "push app: r 1.0/2.0 MB",
        "push app: r 2.0/2.0 MB done",
    ]


def test_a_terminal_gets_one_line_redrawn_in_place_and_cleared_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the live line is cut to the terminal's width: a known one, not that of the terminal
    # (or COLUMNS) pytest runs in
    monkeypatch.setenv("COLUMNS", "80")
    stream = Tty()
    console = Console({}, stream=stream, color="never")
    transfer = Transfer("push app", clock=Clock())
    transfer.expect("r", 2_000_000)
    shower = Shower(transfer, console)
    assert shower.live
    transfer.add("r", 1_000_000)
    shower.tick()
    console.write("r: manifest stored")  # a log line keeps the live line below it
    shower.done()
    text = stream.getvalue()
    assert text == (
        "\r\x1b[Kpush app: r 1.0/2.0 MB\r\x1b[Kr: manifest stored\npush app: r 1.0/2.0 MB\r\x1b[K"
    )


def test_quiet_runs_show_no_progress() -> None:
    stream = Tty()
    console = Console({}, stream=stream, verbosity=-1)
    transfer = Transfer("push app", clock=Clock())
    transfer.expect("r", 1)
    with showing(transfer, console):
        transfer.add("r", 1)
    assert stream.getvalue() == ""
