"""What a report format is written from, and the one function each format provides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from shipit.stages.scan.findings import Decision
from shipit.stages.scan.trivy import Trivy


@dataclass(frozen=True, kw_only=True)
class Scanned:
    """One finished scan of one image, as every report format receives it."""

    trivy: Trivy  # the runner, for the formats Trivy converts itself
    image: str  # the scanned image's name, as shown to users
    doc: Mapping[str, Any]  # Trivy's JSON report, as Trivy wrote it
    gate_json: Path  # Trivy's JSON holding exactly what the gate saw (json.py)
    decision: Decision  # what the gate kept and dropped
    started: datetime  # when the scan began
    work: Path  # the scan's scratch folder, where `trivy convert` runs


class Format(Protocol):
    """Writes the report of `scanned` to `path`, whose folder exists."""

    def __call__(self, scanned: Scanned, path: Path, /) -> None: ...
