"""Progress of long transfers: bytes and rate per registry, shown without flooding a log.

On a terminal, one line redrawn in place a few times a second; in CI or any other log, a
plain line every few seconds, and only when something moved. Quiet runs show nothing.
Counting is separate from showing: uploads count their bytes whenever they happen (some start
while the image is still being exported), and the line is shown only while the run waits on
them, so it never tangles with a build log.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from shipit.log import Console

TERMINAL_INTERVAL: Final = 0.25  # seconds between redraws of the live line
LOG_INTERVAL: Final = 5.0  # seconds between plain lines in CI logs


@dataclass
class _Count:
    done: int = 0
    expected: int = 0


class Transfer:
    """Bytes done and expected per registry for one image's upload; safe to call from threads."""

    def __init__(self, title: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.title = title
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, _Count] = {}
        self._started: float | None = None

    def expect(self, registry: str, size: int) -> None:
        with self._lock:
            self._counts.setdefault(registry, _Count()).expected += size

    def add(self, registry: str, change: int) -> None:
        with self._lock:
            if self._started is None:
                self._started = self._clock()
            count = self._counts.setdefault(registry, _Count())
            count.done = max(0, count.done + change)

    def total_done(self) -> int:
        with self._lock:
            return sum(c.done for c in self._counts.values())

    def line(self) -> str | None:
        """`push app: 127.0.0.1:5000 48.1/153.2 MB 95.3 MB/s, ghcr.io/acme 12.0/153.2 MB ...`;
        None while no blob is on its way yet (nothing worth a line)."""
        with self._lock:
            if not self._counts:
                return None
            elapsed = self._clock() - self._started if self._started is not None else 0.0
            parts = []
            for registry, count in self._counts.items():
                shown = min(count.done, count.expected) if count.expected else count.done
                part = f"{registry} {_mb(shown)}/{_mb(count.expected)} MB"
                if elapsed > 0 and 0 < count.done < count.expected:
                    part += f" {count.done / elapsed / 1e6:.1f} MB/s"
                elif count.expected and count.done >= count.expected:
                    part += " done"
                parts.append(part)
        return f"{self.title}: {', '.join(parts)}"


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f}"


class Shower:
    """What `showing` does at each tick: redraw the live line, or write a plain line when the
    bytes moved since the last one (so an idle upload adds nothing to a log)."""

    def __init__(self, transfer: Transfer, console: Console) -> None:
        self.transfer = transfer
        self.console = console
        self.live = console.interactive
        self._shown = transfer.total_done()

    @property
    def interval(self) -> float:
        return TERMINAL_INTERVAL if self.live else LOG_INTERVAL

    def tick(self) -> None:
        line = self.transfer.line()
        if line is None:
            return
        if self.live:
            self.console.live(line)
            return
        done = self.transfer.total_done()
        if done != self._shown:
            self._shown = done
            self.console.write(line)

    def done(self) -> None:
        if self.live:
            self.console.live(None)


@contextlib.contextmanager
def showing(transfer: Transfer, console: Console) -> Iterator[None]:
    """Show `transfer` while the body runs: a live line on a terminal, else a line now and then."""
    if console.verbosity < 0:
        yield
        return
    shower = Shower(transfer, console)
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(shower.interval):
            shower.tick()

    ticker = threading.Thread(target=run, name="shipit-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        shower.done()
