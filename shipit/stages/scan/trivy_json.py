"""Trivy's JSON report (schema version 2), read into findings.

What Trivy suppressed itself (`--show-suppressed` keeps it under
ExperimentalModifiedFindings) is not a finding; `suppressed_ids` lists it for the report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from shipit.errors import StageError
from shipit.stages.scan.findings import Detected, Finding


def load_report(path: Path) -> dict[str, Any]:
    """Trivy's JSON report (schema version 2), or a StageError: never a silent pass."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageError("scan", f"trivy wrote no readable JSON report ({exc})") from None
    if not isinstance(doc, dict):
        raise StageError("scan", "trivy's JSON report is not an object")
    if doc.get("SchemaVersion") != 2:
        raise StageError(
            "scan",
            f"trivy's JSON report has schema version {doc.get('SchemaVersion')!r}; "
            "shipit reads version 2",
            hint="use Trivy 0.50 or newer (0.76 is tested)",
        )
    return doc


def parse_findings(doc: Mapping[str, Any]) -> tuple[Detected, ...]:
    """Every finding of a Trivy JSON report (what Trivy did not suppress)."""
    found: list[Detected] = []
    for result in doc.get("Results") or []:
        target = str(result.get("Target", ""))
        found += [_vulnerability(v, target) for v in result.get("Vulnerabilities") or []]
        found += [_secret(s, target) for s in result.get("Secrets") or []]
        found += [
            _misconfiguration(m, target)
            for m in result.get("Misconfigurations") or []
            if m.get("Status", "FAIL") == "FAIL"
        ]
        found += [_license(item, target) for item in result.get("Licenses") or []]
    return tuple(found)


def _vulnerability(v: Mapping[str, Any], target: str) -> Detected:
    vuln_id = str(v.get("VulnerabilityID", ""))
    finding = Finding(
        id=vuln_id,
        kind="vuln",
        severity=str(v.get("Severity") or "UNKNOWN"),
        package=v.get("PkgName"),
        installed=v.get("InstalledVersion"),
        fixed=v.get("FixedVersion") or None,
        title=str(v.get("Title") or ""),
        target=target,
    )
    purl = (v.get("PkgIdentifier") or {}).get("PURL")
    paths = tuple(p for p in (target, v.get("PkgPath")) if p)
    return Detected(finding=finding, ids=(vuln_id,), paths=paths, purl=purl, raw=v)


def _secret(s: Mapping[str, Any], target: str) -> Detected:
    rule = str(s.get("RuleID", ""))
    finding = Finding(
        id=rule,
        kind="secret",
        severity=str(s.get("Severity") or "UNKNOWN"),
        package=None,
        installed=None,
        fixed=None,
        title=str(s.get("Title") or s.get("Category") or rule),
        target=target,
    )
    return Detected(finding=finding, ids=(rule,), paths=(target,), purl=None, raw=s)


def _misconfiguration(m: Mapping[str, Any], target: str) -> Detected:
    ids = tuple(str(i) for i in (m.get("ID"), m.get("AVDID")) if i)
    finding = Finding(
        id=ids[0] if ids else "",
        kind="misconfig",
        severity=str(m.get("Severity") or "UNKNOWN"),
        package=None,
        installed=None,
        fixed=None,
        title=str(m.get("Title") or m.get("Message") or ""),
        target=target,
    )
    return Detected(finding=finding, ids=ids, paths=(target,), purl=None, raw=m)


def _license(item: Mapping[str, Any], target: str) -> Detected:
    name = str(item.get("Name", ""))
    category = item.get("Category")
    finding = Finding(
        id=name,
        kind="license",
        severity=str(item.get("Severity") or "UNKNOWN"),
        package=item.get("PkgName") or None,
        installed=None,
        fixed=None,
        title=f"{category} license {name}" if category else f"license {name}",
        target=target,
    )
    path = str(item.get("FilePath") or "")
    return Detected(
        finding=finding, ids=(name,), paths=(path,) if path else (), purl=None, raw=item
    )


_MODIFIED_ID_KEYS: Final = {
    "vulnerability": ("VulnerabilityID",),
    "secret": ("RuleID",),
    "misconfiguration": ("ID", "AVDID"),
    "license": ("Name",),
}


def suppressed_ids(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """The ids Trivy itself suppressed (`--show-suppressed`: ExperimentalModifiedFindings)."""
    ids: list[str] = []
    for result in doc.get("Results") or []:
        for modified in result.get("ExperimentalModifiedFindings") or []:
            finding = modified.get("Finding") or {}
            keys = _MODIFIED_ID_KEYS.get(str(modified.get("Type")), ())
            ids += [str(finding[k]) for k in keys[:1] if finding.get(k)]
    return tuple(ids)


def scanned_name(doc: Mapping[str, Any], image: str) -> str:
    """The name to show for the scanned image: its first tag when we were given an id."""
    tags = (doc.get("Metadata") or {}).get("RepoTags") or []
    looks_like_id = image.startswith("sha256:") or re.fullmatch(r"[0-9a-f]{12,64}", image)
    return str(tags[0]) if looks_like_id and tags else image


def operating_system(doc: Mapping[str, Any]) -> str:
    os_info = (doc.get("Metadata") or {}).get("OS") or {}
    name = " ".join(str(os_info[k]) for k in ("Family", "Name") if os_info.get(k))
    return name or "Unknown"
