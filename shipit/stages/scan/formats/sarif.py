"""The SARIF report, converted by Trivy (`trivy convert`) from the JSON the gate saw."""

from __future__ import annotations

from pathlib import Path

from shipit.stages.scan.formats.interface import Scanned


def write(scanned: Scanned, path: Path) -> None:
    """SARIF of what the gate saw, written by `trivy convert`."""
    trivy = scanned.trivy
    trivy.run(trivy.convert_argv(scanned.gate_json, path, "sarif", ""), cwd=scanned.work)
