"""The `push:` section: how many uploads run at once and how often one is retried."""

from __future__ import annotations

from typing import Final

from shipit.spec.nodes import Reader
from shipit.spec.records import PushPolicy
from shipit.spec.sections import Mergeable, Section


def read_push(r: Reader, section: Section) -> PushPolicy:
    """The merged `push:` section (defaults when there is none)."""
    e = section.entries
    return PushPolicy(
        parallel=r.field(
            e, "parallel", lambda n: r.integer(n, "parallel", minimum=1, maximum=32), 4
        ),
        retries=r.field(e, "retries", lambda n: r.integer(n, "retries", minimum=0, maximum=10), 3),
    )


PUSH: Final = Mergeable(key="push", keys=("parallel", "retries"), read=read_push)
