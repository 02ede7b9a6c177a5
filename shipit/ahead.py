"""Work started before it is needed, in a thread of its own, its result taken later."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def ahead(work: Callable[[], T], name: str) -> Future[T]:
    """`work()` started now in a daemon thread named `name`; its result (or the exception it
    raised) is the future's. A daemon thread: a run that ends without asking does not wait."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # handed to whoever takes the result
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
