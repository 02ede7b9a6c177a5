"""The report files: Trivy's JSON and SARIF of what the gate saw, GitLab's container
scanning report, the CycloneDX SBOM, and where each is written.

When shipit dropped findings that are still in Trivy's JSON (the unfixed ones), Trivy
rewrites its JSON with exactly those suppressed (`trivy convert` with a generated ignore
file that names each one by id and package URL), so the JSON and SARIF reports hold what
the gate saw, whatever formats are asked for. SARIF comes from `trivy convert`, GitLab's
report is rendered here (the template Trivy documents is not in the wheel), and the SBOM
from `trivy image --format cyclonedx`.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from shipit import __version__, log
from shipit.spec import Reports, ScanPolicy
from shipit.stages.scan.findings import Decision, Detected, cut, sort_key
from shipit.stages.scan.ignores import suppression_file
from shipit.stages.scan.trivy import Trivy
from shipit.stages.scan.trivy_json import load_report, operating_system, parse_findings

_log = log.get(__name__)

GITLAB_SCHEMA_VERSION: Final = "15.2.1"
GITLAB_SCHEMA_URL: Final = (
    "https://gitlab.com/gitlab-org/security-products/security-report-schemas/-/raw/"
    f"v{GITLAB_SCHEMA_VERSION}/dist/container-scanning-report-format.json"
)

_GITLAB_SEVERITY: Final = {
    "UNKNOWN": "Unknown",
    "LOW": "Low",
    "MEDIUM": "Medium",
    "HIGH": "High",
    "CRITICAL": "Critical",
}
_UUID_NAMESPACE: Final = uuid.UUID("6f1d2c8e-5c0b-4f47-9a55-6a1e1f0c2b7d")


def render_gitlab(
    kept: Sequence[Detected],
    *,
    image: str,
    os_name: str,
    trivy_version: str,
    started: datetime,
    finished: datetime,
) -> dict[str, Any]:
    """GitLab's container scanning report (schema 15.2.1) for the vulnerabilities kept.

    The schema places every finding at a package of the image, so secrets, misconfigurations
    and licenses are left out (they are in the JSON and SARIF reports); a scan message says
    how many.
    """
    vulns = [d for d in kept if d.finding.kind == "vuln"]
    others = len(kept) - len(vulns)
    scan: dict[str, Any] = {
        "analyzer": {
            "id": "shipit",
            "name": "shipit",
            "version": __version__,
            "vendor": {"name": "shipit"},
        },
        "scanner": {
            "id": "trivy",
            "name": "Trivy",
            "url": "https://github.com/aquasecurity/trivy",
            "version": trivy_version or "unknown",
            "vendor": {"name": "Aqua Security"},
        },
        "type": "container_scanning",
        "start_time": _gitlab_time(started),
        "end_time": _gitlab_time(finished),
        "status": "success",
    }
    if others:
        scan["messages"] = [
            {
                "level": "info",
                "value": f"{others} secret, misconfiguration or license findings are in "
                "the Trivy JSON and SARIF reports, not here",
            }
        ]
    return {
        "version": GITLAB_SCHEMA_VERSION,
        "schema": GITLAB_SCHEMA_URL,
        "scan": scan,
        "vulnerabilities": [_gitlab_vulnerability(d, image, os_name) for d in vulns],
        "remediations": [],
    }


def _gitlab_vulnerability(item: Detected, image: str, os_name: str) -> dict[str, Any]:
    f = item.finding
    key = "|".join((f.id, f.package or "", f.installed or "", f.target))
    primary = str(item.raw.get("PrimaryURL") or "")
    identifier: dict[str, str] = {"type": _identifier_type(f.id), "name": f.id, "value": f.id}
    if _is_url(primary):
        identifier["url"] = primary
    vuln: dict[str, Any] = {
        "id": str(uuid.uuid5(_UUID_NAMESPACE, key)),
        "name": cut(f.title or f.id, 255),
        "severity": _GITLAB_SEVERITY.get(f.severity, "Unknown"),
        "identifiers": [identifier],
        "location": {
            "dependency": {"package": {"name": f.package or ""}, "version": f.installed or ""},
            "operating_system": os_name or "Unknown",
            "image": image,
        },
    }
    description = str(item.raw.get("Description") or "")
    if description:
        vuln["description"] = cut(description, 1_048_576)
    if f.fixed:
        vuln["solution"] = cut(f"Upgrade {f.package} to {f.fixed}", 7000)
    urls = dict.fromkeys([primary, *(str(u) for u in item.raw.get("References") or [])])
    links = [{"url": u} for u in urls if _is_url(u)]
    if links:
        vuln["links"] = links
    return vuln


def _identifier_type(vuln_id: str) -> str:
    prefix = vuln_id.split("-", 1)[0].lower()
    return prefix if prefix in ("cve", "ghsa", "osv", "rustsec", "pysec", "go") else "trivy"


def _is_url(text: str) -> bool:
    return re.match(r"(https?|ftp)://.", text) is not None


def _gitlab_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def with_suffix_tag(path: Path, tag: str | None) -> Path:
    """`trivy.json` + `backend` -> `trivy.backend.json` (several images in one spec)."""
    if not tag:
        return path
    if path.suffix:
        return path.with_name(f"{path.stem}.{_safe_tag(tag)}{path.suffix}")
    return path.with_name(f"{path.name}.{_safe_tag(tag)}")


def sbom_path(reports: Reports, root: Path, tag: str | None) -> Path:
    """`sbom.cdx.json` next to the JSON report (or the first report set), else in `root`."""
    anchor = reports.json or reports.sarif or reports.gitlab
    folder = anchor.parent if anchor else root
    return folder / (f"sbom.{_safe_tag(tag)}.cdx.json" if tag else "sbom.cdx.json")


def _safe_tag(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).strip("-.") or "image"


def write_sbom(
    trivy: Trivy, image: str, policy: ScanPolicy, root: Path | None, suffix: str | None
) -> tuple[Path, ...]:
    if policy.sbom != "cyclonedx":
        return ()
    path = sbom_path(policy.reports, root or Path.cwd(), suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    trivy.run(trivy.sbom_argv(image, path))
    return (path,)


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
    written: list[Path] = []
    source = raw_json
    if (reports.json or reports.sarif) and decision.dropped:
        source = _trivy_filtered(trivy, raw_json, decision, work)
    if reports.json:
        written.append(_place(reports.json, suffix))
        shutil.copyfile(source, written[-1])
    if reports.sarif:
        written.append(_place(reports.sarif, suffix))
        trivy.run(trivy.convert_argv(source, written[-1], "sarif", ""), cwd=work)
    if reports.gitlab:
        written.append(_place(reports.gitlab, suffix))
        gitlab = render_gitlab(
            decision.kept,
            image=image,
            os_name=operating_system(doc),
            trivy_version=str((doc.get("Trivy") or {}).get("Version") or ""),
            started=started,
            finished=datetime.now(UTC),
        )
        written[-1].write_text(json.dumps(gitlab, indent=2) + "\n", encoding="utf-8")
    return tuple(written)


def _place(path: Path, suffix: str | None) -> Path:
    target = with_suffix_tag(path, suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _trivy_filtered(trivy: Trivy, raw_json: Path, decision: Decision, work: Path) -> Path:
    """Trivy's JSON with what shipit dropped suppressed by Trivy itself; checked against
    shipit's own decision, so a disagreement is said out loud."""
    ignores = work / "shipit-ignore.yaml"
    ignores.write_text(json.dumps(suppression_file(decision.dropped), indent=2), encoding="utf-8")
    filtered = work / "trivy-filtered.json"
    trivy.run(trivy.convert_argv(raw_json, filtered, "json", ignores.name), cwd=work)
    theirs = sorted(sort_key(d) for d in parse_findings(load_report(filtered)))
    ours = sorted(sort_key(d) for d in decision.kept)
    if theirs != ours:
        _log.warning(
            "Trivy's rewritten report and shipit's gate disagree; the gate counts %d findings, "
            "the report holds %d",
            len(ours),
            len(theirs),
        )
    return filtered
