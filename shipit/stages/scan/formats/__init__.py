"""The report files, one module per format.

- json.py: Trivy's JSON report, holding exactly what the gate saw.
- sarif.py: SARIF, converted by Trivy from that JSON.
- gitlab.py: GitLab's container scanning report, rendered here.
- sbom.py: the CycloneDX SBOM, written by Trivy from the image itself.

JSON, SARIF and GitLab are each a `Format` (interface.py): `write(scanned, path)`, given
one finished scan. paths.py says where a report goes when one spec has several images.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from shipit.stages.scan.findings import Decision
from shipit.stages.scan.formats import gitlab, json, sarif
from shipit.stages.scan.formats.interface import Format, Scanned
from shipit.stages.scan.formats.paths import place
from shipit.stages.scan.trivy import Trivy


def write_reports(
    trivy: Trivy,
    *,
    doc: Mapping[str, Any],
    raw_json: Path,
    decision: Decision,
    work: Path,
    image: str,
    started: datetime,
    suffix: str | None,
) -> tuple[Path, ...]:
    """The JSON, SARIF and GitLab reports the policy asks for, all of what the gate saw."""
    reports = trivy.policy.reports
    wanted: tuple[tuple[Path | None, Format], ...] = (
        (reports.json, json.write),
        (reports.sarif, sarif.write),
        (reports.gitlab, gitlab.write),
    )
    gate_json = raw_json
    if (reports.json or reports.sarif) and decision.dropped:
        gate_json = json.gate_json(trivy, raw_json, decision, work)
    scanned = Scanned(
        trivy=trivy,
        image=image,
        doc=doc,
        gate_json=gate_json,
        decision=decision,
        started=started,
        work=work,
    )
    written: list[Path] = []
    for path, write in wanted:
        if path:
            written.append(place(path, suffix))
            write(scanned, written[-1])
    return tuple(written)
