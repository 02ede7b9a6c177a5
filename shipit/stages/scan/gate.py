"""The gate: what shipit drops from Trivy's findings, what of the rest blocks, and the text
that says why a release was blocked.

Ignore entries still in force are applied first, then `ignore_unfixed` (shipit's own: Trivy
is never asked to drop unfixed vulnerabilities, so the report can say what was ignored).
What is left blocks when it is at or above `fail_on`; `never` turns the gate off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Final

from shipit.log import PLAIN, Style
from shipit.spec import SEVERITIES, ScanPolicy
from shipit.stages.scan.findings import (
    Decision,
    Detected,
    Finding,
    ScanReport,
    count_severities,
    cut,
    severity_rank,
    sort_key,
)
from shipit.stages.scan.ignores import IgnoreRules

NEVER: Final = "never"
UNFIXED_STATEMENT: Final = "unfixed: no fixed version yet (scan.ignore_unfixed)"
_TITLE_WIDTH = 60


def decide(
    detected: Iterable[Detected], rules: IgnoreRules, *, ignore_unfixed: bool, now: datetime
) -> Decision:
    """Apply the ignore entries still in force, then `ignore_unfixed`."""
    kept: list[Detected] = []
    dropped: list[tuple[Detected, str]] = []
    for item in detected:
        entry = rules.match(item, now)
        if entry is not None:
            dropped.append((item, entry.statement or f"ignored by {entry.where}"))
        elif ignore_unfixed and item.finding.kind == "vuln" and not item.finding.fixed:
            dropped.append((item, UNFIXED_STATEMENT))
        else:
            kept.append(item)
    return Decision(kept=tuple(sorted(kept, key=sort_key)), dropped=tuple(dropped))


def blocking_findings(findings: Iterable[Finding], fail_on: str) -> tuple[Finding, ...]:
    """The findings at or above `fail_on`; none when it is `never`."""
    if fail_on == NEVER:
        return ()
    threshold = severity_rank(fail_on)
    return tuple(f for f in findings if severity_rank(f.severity) >= threshold)


def scan_report(
    *,
    image: str,
    policy: ScanPolicy,
    rules: IgnoreRules,
    decision: Decision,
    suppressed: Sequence[str],
    now: datetime,
    written: tuple[Path, ...],
    sbom: Path | None,
    platform: str | None = None,
) -> ScanReport:
    """The verdict over what the gate kept; `suppressed` are the ids Trivy itself dropped."""
    findings = tuple(d.finding for d in decision.kept)
    blocking = blocking_findings(findings, policy.fail_on)
    ignored = [*suppressed, *(d.finding.id for d, _ in decision.dropped)]
    return ScanReport(
        image=image,
        counts=MappingProxyType(count_severities(findings)),
        findings=findings,
        blocking=blocking,
        blocked=bool(blocking),
        ignored=tuple(dict.fromkeys(ignored)),
        expired_ignores=tuple(dict.fromkeys(e.id for e in rules.expired(now))),
        reports=written,
        fail_on=policy.fail_on,
        sbom=sbom,
        platform=platform,
    )


def counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in reversed(SEVERITIES))


def findings_table(findings: Sequence[Finding], style: Style = PLAIN) -> str:
    """ID, package, installed, fixed, severity, title; one finding a line (the severity
    coloured when `style` is)."""
    header = ("ID", "PACKAGE", "INSTALLED", "FIXED", "SEVERITY", "TITLE")
    rows = [
        (
            f.id,
            f.package or f.target,
            f.installed or "-",
            f.fixed or "-",
            f.severity,
            cut(f.title, _TITLE_WIDTH),
        )
        for f in findings
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    severity = header.index("SEVERITY")

    def cells(row: Sequence[str], body: bool) -> str:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        if body:
            padded[severity] = style.severity(padded[severity], row[severity])
        return "  ".join(padded) + "  " + row[-1]

    return "\n".join([cells(header, False), *(cells(row, True) for row in rows)])


def blocking_text(report: ScanReport, style: Style = PLAIN) -> str:
    """What blocked the release: a table, most severe first, then the counts."""
    n = len(report.blocking)
    noun = "finding" if n == 1 else "findings"
    where = f"{report.image} ({report.platform})" if report.platform else report.image
    lines = [
        f"scan gate: {n} {noun} in {where} at or above {report.fail_on}",
        findings_table(report.blocking, style),
        f"counts: {counts_text(report.counts)}",
    ]
    if report.expired_ignores:
        lines.append(f"expired ignores (no longer applied): {', '.join(report.expired_ignores)}")
    return "\n".join(lines)
