"""The hosted registries' documented quirks, each met by a real `shipit run` through a quirk proxy.

Every test puts `tests.support.quirks.QuirkProxy` with one profile (a faithful emulation of
what that registry answers, sources cited there) in front of a real distribution 2.8, runs
shipit against the proxy, and asserts what the registry holds afterwards, what shipit printed
and its exit code, and what shipit sent (the proxy's log). Nothing here depends on timing.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import requests

from shipit.registry import OCI_MANIFEST, Endpoint, Manifest, Registry, RegistryError
from tests.support.cli import run_shipit
from tests.support.gitrepo import git
from tests.support.project import make_project, run_env
from tests.support.quirks import (
    Acr,
    Artifactory,
    ArtifactRegistry,
    DockerHub,
    Ecr,
    Ghcr,
    Harbor,
    Profile,
    QuirkProxy,
)
from tests.support.services import Dockerd, RegistryFactory, registry_client
from tests.support.services import Registry as RunningRegistry

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
BIG_DOCKERFILE = "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY big.bin /big.bin\n"


@pytest.fixture
def upstream(registry_factory: RegistryFactory) -> RunningRegistry:
    """A registry of the test's own, behind the proxy."""
    return registry_factory()


def proxied(upstream: RunningRegistry, profile: Profile) -> QuirkProxy:
    return QuirkProxy(upstream.url(), profile)


def client(host: str) -> Registry:
    return Registry(Endpoint(host=host), retries=1, backoff=0.01)


def report_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def project_with(tmp_path: Path, registries: list[str], *, big: int = 0) -> Path:
    spec = f"version: 1\nregistries: [{', '.join(registries)}]\nimage: {{name: hello}}\n"
    if not big:
        return make_project(tmp_path / "project", spec)
    # `big` MiB of random bytes: incompressible, so the layer stays that large
    files: dict[str, str | bytes] = {"big.bin": os.urandom(big * MiB)}
    return make_project(tmp_path / "project", spec, dockerfile=BIG_DOCKERFILE, files=files)


def shipit_run(
    project: Path, tmp_path: Path, dockerd: Dockerd, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str, dict[str, Any]]:
    report = tmp_path / f"report-{secrets.token_hex(3)}.json"
    env = run_env(dockerd.host, tmp_path)
    code, out, err = run_shipit(
        ["run", "-C", str(project), "--report", str(report), "-v"], capsys, env
    )
    return code, out, err, report_of(report) if report.exists() else {}


def tags_of(document: dict[str, Any]) -> list[str]:
    return list(document["images"][0]["tags"])


# -- Amazon ECR ---------------------------------------------------------------------------------


def test_ecr_a_missing_repository_stops_preflight_and_an_immutable_rerun_passes(
    tmp_path: Path,
    dockerd: Dockerd,
    upstream: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    profile = Ecr(repositories=set(), immutable=True)
    with proxied(upstream, profile) as proxy:
        project = project_with(tmp_path, [f"{proxy.host}/team"])

        code, _out, err, _ = shipit_run(project, tmp_path, dockerd, capsys)
        assert code == 1
        assert f"{proxy.host}/team" in err and "has no repository" in err
        assert "aws ecr create-repository" in err and "NAME_UNKNOWN" in err
        assert "==> build" not in err  # found before the build
        assert registry_client(upstream).tags("team/hello") == []

        profile.create("team/hello")  # what `aws ecr create-repository` does
        code, _out, err, first = shipit_run(project, tmp_path, dockerd, capsys)
        assert code == 0, err
        digest = first["images"][0]["digest"]
        tags = tags_of(first)

        mark = len(proxy.log)  # the same commit again: every tag is there already
        code, _out, err, again = shipit_run(project, tmp_path, dockerd, capsys)
        assert code == 0, err
        assert again["images"][0]["digest"] == digest
        rerun = proxy.log[mark:]
        tag_puts = [line for line in rerun if line.startswith("PUT ") and "/manifests/" in line]
        assert [line for line in tag_puts if "/manifests/sha256:" not in line] == []
        assert not [line for line in rerun if " 400" in line]

        (project / "hello.txt").write_text("another image\n", encoding="utf-8")
        git(project, "commit", "-q", "-am", "change")  # a new image under the branch's tag
        code, out, err, moved = shipit_run(project, tmp_path, dockerd, capsys)
        assert proxy.violations == []  # never a chunk under ECR's 5 MB minimum
    assert code == 1
    moving = set(tags) & set(tags_of(moved))  # the tags the new commit shares with the old
    assert moving, (tags, tags_of(moved))
    said = out + err
    assert "immutable" in said and "TAG_INVALID" in said and f"points at {digest}" in said
    assert "publish under a new tag" in said
    registry = registry_client(upstream)
    for tag in moving:
        assert registry.manifest_digest("team/hello", tag) == digest  # left where it was


# -- GHCR -----------------------------------------------------------------------------------------


def test_ghcr_chunks_over_4_mib_are_refused_and_shipit_sends_smaller_ones(
    tmp_path: Path,
    dockerd: Dockerd,
    upstream: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A proxy in front of GHCR refuses bodies over 17 MiB (413), so shipit sends chunks of 16
    MiB, which GHCR refuses (416, "exceeds the maximum permissible limit of 4.00MiB"): shipit
    sends 4 MiB chunks. A manifest PUT rate limited with 429 and Retry-After is retried."""
    profile = Ghcr(
        front_body_limit=17 * MiB, rate_limit=1, rate_limit_status=429, rate_limit_on="/manifests/"
    )
    with proxied(upstream, profile) as proxy:
        project = project_with(tmp_path, [f"{proxy.host}/org"], big=20)
        code, out, err, document = shipit_run(project, tmp_path, dockerd, capsys)
        patches = proxy.requests("PATCH")
    assert code == 0, err
    said = out + err
    assert "sending it in chunks" in said
    assert f"sending chunks of {4 * MiB} bytes" in said
    assert "429" in said and "in 1.0s" in said  # the server's Retry-After: 1
    assert [p for p in patches if p.endswith(" 416")]  # the 16 MiB chunk GHCR refused
    registry = registry_client(upstream)
    digest = document["images"][0]["digest"]
    for tag in tags_of(document):
        assert registry.manifest_digest("org/hello", tag) == digest
    manifest = json.loads(registry.manifest("org/hello", digest).data)
    for layer in manifest["layers"]:
        assert registry.has_blob("org/hello", layer["digest"])


def test_ghcr_a_secondary_rate_limit_403_is_retried_not_a_permission_error(
    tmp_path: Path,
    dockerd: Dockerd,
    upstream: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    profile = Ghcr(rate_limit=1, rate_limit_status=403, rate_limit_on="/manifests/")
    with proxied(upstream, profile) as proxy:
        project = project_with(tmp_path, [f"{proxy.host}/org"])
        code, out, err, _ = shipit_run(project, tmp_path, dockerd, capsys)
    assert code == 0, err
    assert "403" in out + err and "retry" in out + err


def test_ghcr_does_not_delete_manifests_over_the_registry_api(
    upstream: RunningRegistry,
) -> None:
    with proxied(upstream, Ghcr()) as proxy:
        registry = client(proxy.host)
        manifest = _tiny_manifest(registry, "org/app")
        registry.put_manifest("org/app", manifest.digest, manifest)
        with pytest.raises(RegistryError) as caught:
            registry.delete_manifest("org/app", manifest.digest)
    assert caught.value.kind == "unsupported" and caught.value.status == 405
    assert "UNSUPPORTED" in str(caught.value) and proxy.host in str(caught.value)
    assert registry_client(upstream).has_manifest("org/app", manifest.digest)


# -- Google Artifact Registry ----------------------------------------------------------------------


def test_artifact_registry_gets_monolithic_uploads_only(
    tmp_path: Path,
    dockerd: Dockerd,
    upstream: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with proxied(upstream, ArtifactRegistry()) as proxy:
        project = project_with(tmp_path, [f"{proxy.host}/proj/repo"], big=9)
        code, _out, err, document = shipit_run(project, tmp_path, dockerd, capsys)
        violations = proxy.violations
        chunked = [line for line in proxy.log if line.startswith("PATCH ") and " 416" in line]
    assert code == 0, err
    assert violations == [] and chunked == []  # never a Content-Range PATCH
    registry = registry_client(upstream)
    assert (
        registry.manifest_digest("proj/repo/hello", tags_of(document)[0])
        == (document["images"][0]["digest"])
    )


# -- Docker Hub -------------------------------------------------------------------------------------


def test_docker_hub_rate_limits_are_waited_out(
    tmp_path: Path,
    dockerd: Dockerd,
    upstream: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """429 TOOMANYREQUESTS with Retry-After, then the abuse limit's text/plain "HAP429"."""
    profile = DockerHub(toomanyrequests=1, hap429=1, limit_on="/manifests/", retry_after=1)
    with proxied(upstream, profile) as proxy:
        project = project_with(tmp_path, [f"{proxy.host}/user"])
        code, out, err, document = shipit_run(project, tmp_path, dockerd, capsys)
        limited = [line for line in proxy.log if line.endswith(" 429")]
    assert code == 0, err
    assert len(limited) == 2
    said = out + err
    assert said.count("429 Too Many Requests") >= 2 and "in 1.0s" in said
    registry = registry_client(upstream)
    for tag in tags_of(document):
        assert registry.manifest_digest("user/hello", tag) == document["images"][0]["digest"]


def test_docker_hub_deletes_only_untagged_digests(upstream: RunningRegistry) -> None:
    with proxied(upstream, DockerHub()) as proxy:
        registry = client(proxy.host)
        tagged, untagged = (
            _tiny_manifest(registry, "user/app"),
            _tiny_manifest(registry, "user/app"),
        )
        registry.put_manifest("user/app", "v1", tagged)
        registry.put_manifest("user/app", untagged.digest, untagged)
        with pytest.raises(RegistryError) as caught:
            registry.delete_manifest("user/app", tagged.digest)
        assert registry.delete_manifest("user/app", untagged.digest)
    message = str(caught.value)
    assert caught.value.status == 403 and "deletes only manifests no tag points at" in message
    assert "grant push access" not in message  # not blamed on push permissions
    assert registry_client(upstream).manifest_digest("user/app", "v1") == tagged.digest


# -- Azure ACR --------------------------------------------------------------------------------------


def test_acr_chunks_carry_a_bare_content_range(
    tmp_path: Path,
    dockerd: Dockerd,
    upstream: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ACR refuses `Content-Range: bytes 0-N/*`; a proxy in front makes shipit send chunks."""
    with proxied(upstream, Acr(front_body_limit=6 * MiB)) as proxy:
        project = project_with(tmp_path, [f"{proxy.host}/team"], big=9)
        code, out, err, document = shipit_run(project, tmp_path, dockerd, capsys)
        violations = proxy.violations
        patches = proxy.requests("PATCH")
    assert code == 0, err
    assert "sending it in chunks" in out + err and patches
    assert violations == []
    registry = registry_client(upstream)
    assert (
        registry.manifest_digest("team/hello", tags_of(document)[0])
        == (document["images"][0]["digest"])
    )


# -- Harbor -----------------------------------------------------------------------------------------


def test_harbor_a_refused_mount_becomes_an_upload_and_immutable_tags_rerun(
    tmp_path: Path,
    dockerd: Dockerd,
    upstream: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two projects on one Harbor: the second gets the blobs by mount from the first, which
    Harbor refuses with 401 for a project it does not know; every tag is immutable, so the run
    of the same commit again must not write any tag."""
    profile = Harbor(projects={"second"}, immutable=".*")
    with proxied(upstream, profile) as proxy:
        project = project_with(tmp_path, [f"{proxy.host}/first", f"{proxy.host}/second"])
        code, out, err, document = shipit_run(project, tmp_path, dockerd, capsys)
        assert code == 0, err
        mounts = [line for line in proxy.requests("POST") if "mount=" in line]
        mark = len(proxy.log)
        code, _out, err, _ = shipit_run(project, tmp_path, dockerd, capsys)
        rerun = proxy.log[mark:]
    assert code == 0, err
    assert mounts and all(line.endswith(" 401") for line in mounts)
    assert "(0 blobs mounted from" in out + err
    assert not [line for line in rerun if " 412" in line]
    registry = registry_client(upstream)
    digest = document["images"][0]["digest"]
    for repository in ("first/hello", "second/hello"):
        for tag in tags_of(document):
            assert registry.manifest_digest(repository, tag) == digest


def test_harbor_an_immutable_tag_that_points_elsewhere_is_a_clear_error(
    upstream: RunningRegistry,
) -> None:
    with proxied(upstream, Harbor(projects={"lib"}, immutable=r"^v\d")) as proxy:
        registry = client(proxy.host)
        old, new = _tiny_manifest(registry, "lib/app"), _tiny_manifest(registry, "lib/app")
        registry.put_manifest("lib/app", "v1", old)
        assert registry.put_manifest("lib/app", "v1", old) == old.digest  # the same: skipped
        with pytest.raises(RegistryError) as caught:
            registry.put_manifest("lib/app", "v1", new)
    message = str(caught.value)
    assert caught.value.status == 412 and caught.value.kind == "denied"
    assert "immutable" in message and f"points at {old.digest}" in message
    assert proxy.host in message and "lib/app:v1" in message
    assert registry_client(upstream).manifest_digest("lib/app", "v1") == old.digest


# -- JFrog Artifactory ------------------------------------------------------------------------------


def test_artifactory_without_mounts_gets_the_blobs_uploaded(
    tmp_path: Path,
    dockerd: Dockerd,
    upstream: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with proxied(upstream, Artifactory()) as proxy:
        project = project_with(tmp_path, [f"{proxy.host}/docker-a", f"{proxy.host}/docker-b"])
        code, out, err, document = shipit_run(project, tmp_path, dockerd, capsys)
        mounts = [line for line in proxy.requests("POST") if "mount=" in line]
    assert code == 0, err
    assert mounts and all(line.endswith(" 202") for line in mounts)  # an upload session
    assert "(0 blobs mounted from" in out + err
    registry = registry_client(upstream)
    digest = document["images"][0]["digest"]
    manifest = json.loads(registry.manifest("docker-b/hello", digest).data)
    for layer in manifest["layers"]:
        assert registry.has_blob("docker-b/hello", layer["digest"])


# -- every registry: manifests over 4 MiB ----------------------------------------------------------


def test_a_manifest_over_4_mib_is_refused_before_it_is_sent(upstream: RunningRegistry) -> None:
    with proxied(upstream, Profile()) as proxy:
        registry = client(proxy.host)
        small = _tiny_manifest(registry, "big/app")
        document = json.loads(small.data)
        document["annotations"]["padding"] = "x" * (4 * MiB)
        big = Manifest.from_bytes(json.dumps(document).encode(), OCI_MANIFEST)
        with pytest.raises(RegistryError) as caught:
            registry.put_manifest("big/app", "v1", big)
        sent = proxy.requests("PUT", "/manifests/")
        # what the registry answers a client that sends one all the same
        raw = requests.put(
            f"http://{proxy.host}/v2/big/app/manifests/v1",
            data=big.data,
            headers={"Content-Type": OCI_MANIFEST},
            timeout=60,
        )
    assert sent == []
    assert "more than the 4194304 bytes" in str(caught.value) and proxy.host in str(caught.value)
    assert raw.status_code == 413 and "MANIFEST_INVALID" in raw.text


def _tiny_manifest(registry: Registry, repository: str) -> Manifest:
    config = registry.upload_blob(repository, b"{}")
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.digest, "size": 2}
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": empty,
        "layers": [empty],
        "annotations": {"nonce": secrets.token_hex(8)},
    }
    return Manifest.from_bytes(json.dumps(document).encode(), OCI_MANIFEST)
