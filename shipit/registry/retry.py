"""When to try a registry request again, and how long to wait first.

Policy only, no I/O and no waiting (`transport` waits): which statuses may pass on a second
try (429 and most 5xx), a server's `Retry-After` (seconds or an HTTP date), and bounded
exponential backoff with jitter.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from typing import Final

MAX_BACKOFF: Final = 30.0
MAX_RETRY_AFTER: Final = 60.0


def is_retryable_status(status: int) -> bool:
    """429 and the 5xx answers that may pass (not 501 Not Implemented or 505)."""
    return status == 429 or (500 <= status <= 599 and status not in (501, 505))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date), if usable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(
    attempt: int,
    *,
    backoff: float,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` + 1 (`attempt` counts from 0).

    Exponential backoff with up to 50 % jitter, at most MAX_BACKOFF; a server's Retry-After is
    honoured up to MAX_RETRY_AFTER.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
    base = backoff * 2.0 ** min(attempt, 16)
    return min(MAX_BACKOFF, base * (1 + 0.5 * rng()))
