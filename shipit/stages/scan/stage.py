"""The scan stage: Trivy reads the built image, shipit decides the gate, reports are written.

How one scan runs:

1. `trivy image` reads the image from the daemon and writes its JSON report (trivy.py),
   then the CycloneDX SBOM when the policy asks for one (formats/sbom.py), one scan at a
   time per cache folder.
2. shipit parses that JSON (trivy_json.py), counts what Trivy suppressed as ignored,
   applies the ignore rules again itself (ignores.py: an entry whose date has passed no
   longer applies and is reported), then `ignore_unfixed`, and decides the gate from what
   is left (gate.py).
3. The reports the policy asks for are written whether the gate passes or blocks, each
   holding what the gate saw (formats/).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from shipit import log
from shipit.log import Console
from shipit.spec import ScanPolicy
from shipit.stages.scan.findings import ScanReport
from shipit.stages.scan.formats import sbom, write_reports
from shipit.stages.scan.gate import NEVER, counts_text, decide, findings_table, scan_report
from shipit.stages.scan.ignores import policy_ignores, warn_about_ignores
from shipit.stages.scan.trivy import Trivy, cache_lock, default_cache_dir, find_trivy
from shipit.stages.scan.trivy_json import (
    load_report,
    parse_findings,
    scanned_name,
    suppressed_ids,
)

_log = log.get(__name__)


def scan_image(
    image: str,
    policy: ScanPolicy,
    *,
    env: Mapping[str, str],
    console: Console,
    label: str,
    report_suffix: str | None = None,
    root: Path | None = None,
    layout: bool = False,
    platform: str | None = None,
) -> ScanReport:
    """Scan `image` (an id or name in the daemon `env` points at, or with `layout` an OCI
    layout folder of one image) and decide the gate.

    Reports are written whether the gate passes or blocks. A broken scanner is a
    StageError, never a pass. `root` is the spec's folder (the SBOM goes there when no
    report is set; default: the current folder). `platform` labels the findings.
    """
    with console.group(f"scan {label}"):
        now = datetime.now(UTC)
        rules = policy_ignores(policy)
        warn_about_ignores(rules, now)
        cache_dir = policy.cache_dir or default_cache_dir(env)
        trivy = Trivy(
            binary=find_trivy(env), env=env, policy=policy, cache_dir=cache_dir, layout=layout
        )
        with tempfile.TemporaryDirectory(prefix="shipit-scan-") as tmp:
            work = Path(tmp)
            started = datetime.now(UTC)
            raw_json = work / "trivy.json"
            sbom_files = _run_trivy(trivy, image, raw_json, root=root, suffix=report_suffix)
            doc = load_report(raw_json)
            decision = decide(
                parse_findings(doc), rules, ignore_unfixed=policy.ignore_unfixed, now=now
            )
            shown = scanned_name(doc, image)
            written = write_reports(
                trivy,
                doc=doc,
                raw_json=raw_json,
                decision=decision,
                work=work,
                image=shown,
                started=started,
                suffix=report_suffix,
            )
        report = scan_report(
            image=shown,
            policy=policy,
            rules=rules,
            decision=decision,
            suppressed=suppressed_ids(doc),
            now=now,
            written=(*written, *sbom_files),
            sbom=sbom_files[0] if sbom_files else None,
            platform=platform,
        )
        _log_outcome(report, console, label)
        return report


def _run_trivy(
    trivy: Trivy, image: str, raw_json: Path, *, root: Path | None, suffix: str | None
) -> tuple[Path, ...]:
    """The scan's JSON, then the SBOM when asked for, one scan at a time per cache folder."""
    with cache_lock(trivy.cache_dir, trivy.policy.timeout):
        trivy.run(trivy.scan_argv(image, raw_json))
        return sbom.write(trivy, image, root, suffix)


def _log_outcome(report: ScanReport, console: Console, label: str) -> None:
    extra = f"; {len(report.ignored)} ignored" if report.ignored else ""
    if report.fail_on == NEVER:
        verdict = "gate off (fail_on: never)"
    elif report.blocked:
        verdict = f"BLOCKED: {len(report.blocking)} at or above {report.fail_on}"
    else:
        verdict = f"passed (fail_on: {report.fail_on})"
    if console.verbosity >= 0:
        console.write(f"{label}: {counts_text(report.counts)}{extra}; {verdict}")
    if console.verbosity > 0 and report.findings:
        console.write(findings_table(report.findings))
    for path in report.reports:
        _log.info("wrote %s", path)
