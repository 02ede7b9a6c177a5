"""The scan's results: frozen records of what Trivy found, what shipit kept, what it decided.

`Detected` is a finding as Trivy reported it (with what ignore entries match on),
`Decision` splits those into kept and dropped, and `ScanReport` is the stage's answer: the
counts, the blocking findings, the gate's verdict and the files written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shipit.spec import SEVERITIES

KINDS: Final = ("vuln", "secret", "misconfig", "license")


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One thing Trivy found that the gate counts."""

    id: str  # CVE id, secret rule id, misconfiguration id, or license name
    kind: str  # vuln | secret | misconfig | license
    severity: str  # UNKNOWN..CRITICAL
    package: str | None
    installed: str | None
    fixed: str | None
    title: str
    target: str  # Trivy's Target: "image (debian 12.5)", a file path, ...

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity,
            "package": self.package,
            "installed": self.installed,
            "fixed": self.fixed,
            "title": self.title,
            "target": self.target,
        }


@dataclass(frozen=True, kw_only=True)
class ScanReport:
    image: str  # what was scanned (name shown to users)
    counts: Mapping[str, int]  # every severity UNKNOWN..CRITICAL, after ignores
    findings: tuple[Finding, ...]  # after ignores, most severe first
    blocking: tuple[Finding, ...]  # the findings at or above fail_on
    blocked: bool
    ignored: tuple[str, ...]  # ids the ignore file / ignore_unfixed removed
    expired_ignores: tuple[str, ...]  # ignore entries whose date has passed
    reports: tuple[Path, ...]  # files written
    fail_on: str = "HIGH"
    sbom: Path | None = None  # the CycloneDX SBOM, when `scan.sbom` asked for one
    platform: str | None = None  # which platform of a multi-platform image this is

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "blocked": self.blocked,
            "blocking": [f.to_json() for f in self.blocking],
            "expired_ignores": list(self.expired_ignores),
        }


def combined_json(reports: Sequence[ScanReport]) -> dict[str, Any] | None:
    """The report document's `scan` of an image: one scan as it is; several platforms summed
    (counts, blocked if any is), each platform's own under `platforms`."""
    if not reports:
        return None
    if len(reports) == 1 and reports[0].platform is None:
        return reports[0].to_json()
    counts = dict.fromkeys(SEVERITIES, 0)
    for report in reports:
        for severity, count in report.counts.items():
            counts[severity] = counts.get(severity, 0) + count
    return {
        "counts": counts,
        "blocked": any(r.blocked for r in reports),
        "blocking": [{**f.to_json(), "platform": r.platform} for r in reports for f in r.blocking],
        "expired_ignores": sorted({e for r in reports for e in r.expired_ignores}),
        "platforms": {str(r.platform): r.to_json() for r in reports},
    }


@dataclass(frozen=True, kw_only=True)
class Detected:
    """A finding as Trivy reported it, with what ignore rules match on."""

    finding: Finding
    ids: tuple[str, ...]  # the ids an ignore entry may name (misconfigurations have two)
    paths: tuple[str, ...]  # the paths an ignore entry's `paths` are matched against
    purl: str | None  # the package URL an entry's `purls` are matched against
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)  # Trivy's record


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What shipit kept and what it dropped from Trivy's report."""

    kept: tuple[Detected, ...]  # most severe first
    dropped: tuple[tuple[Detected, str], ...]  # (finding, why), still in Trivy's JSON


def severity_rank(severity: str) -> int:
    """0 (UNKNOWN) .. 4 (CRITICAL); anything Trivy might invent counts as UNKNOWN."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def sort_key(detected: Detected) -> tuple[int, int, str, str, str, str]:
    """Most severe first, then by kind, id, package, installed version and target."""
    f = detected.finding
    kind = KINDS.index(f.kind) if f.kind in KINDS else len(KINDS)
    return (-severity_rank(f.severity), kind, f.id, f.package or "", f.installed or "", f.target)


def count_severities(findings: Iterable[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for f in findings:
        counts[f.severity if f.severity in counts else "UNKNOWN"] += 1
    return counts


def cut(text: str, limit: int) -> str:
    """`text` shortened to `limit` characters, the last one an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
