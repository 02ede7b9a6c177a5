"""GitLab's container scanning report, rendered here (the template Trivy documents is not
in the wheel)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from shipit import __version__
from shipit.stages.scan.findings import Detected, cut
from shipit.stages.scan.formats.interface import Scanned
from shipit.stages.scan.trivy_json import operating_system

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


def write(scanned: Scanned, path: Path) -> None:
    """GitLab's report of the vulnerabilities the gate kept."""
    doc = scanned.doc
    gitlab = render_gitlab(
        scanned.decision.kept,
        image=scanned.image,
        os_name=operating_system(doc),
        trivy_version=str((doc.get("Trivy") or {}).get("Version") or ""),
        started=scanned.started,
        finished=datetime.now(UTC),
    )
    path.write_text(json.dumps(gitlab, indent=2) + "\n", encoding="utf-8")
