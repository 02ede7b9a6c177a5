"""`shipit run` for real: a real Docker daemon, real registries (plain HTTP, TLS with a private
CA, htpasswd auth), and registries that fail on purpose."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from shipit.registry import Registry
from tests.support.cli import run_shipit
from tests.support.faults import FaultProxy
from tests.support.gitrepo import git
from tests.support.project import make_project, run_env
from tests.support.services import Dockerd, registry_client
from tests.support.services import Registry as RunningRegistry

pytestmark = pytest.mark.timeout(300)


def client(reg: RunningRegistry) -> Registry:
    return registry_client(reg)


def run(
    args: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    return run_shipit(args, capsys, env)


def report_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_release_to_three_registries(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    tls_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert tls_registry.ca_file is not None
    spec = f"""\
version: 1
registries:
  - {plain_registry.host}/release
  - url: {tls_registry.host}/release
    ca_file: {tls_registry.ca_file}
  - url: {auth_registry.host}/release
    username: {auth_registry.username}
    password_env: REGISTRY_PASSWORD
image:
  name: hello
  labels: {{org.example.team: platform}}
"""
    project = make_project(tmp_path / "project", spec, tag="v1.2.3")
    git(project, "checkout", "-q", "v1.2.3")  # as CI checks out a tag: detached
    sha = git(project, "rev-parse", "HEAD")
    report = tmp_path / "report.json"
    env = run_env(dockerd.host, tmp_path, REGISTRY_PASSWORD=auth_registry.password or "")
    code, out, err = run(["run", "-C", str(project), "--report", str(report), "-v"], env, capsys)
    assert code == 0, err
    assert "result: success" in out

    document = report_of(report)
    assert document["status"] == "success" and document["version"] == "1.2.3"
    [image] = document["images"]
    expected_tags = ["1.2.3", "1.2", "1", "v1.2.3", f"sha-{sha[:7]}", "latest"]
    assert image["tags"] == expected_tags
    digests = {ref["digest"] for ref in image["refs"]}
    assert len(digests) == 1 and None not in digests
    [digest] = digests
    assert all(ref["pushed"] for ref in image["refs"])
    assert len(image["refs"]) == 3 * len(expected_tags)

    for reg in (plain_registry, tls_registry, auth_registry):
        registry = client(reg)
        assert sorted(registry.tags("release/hello")) == sorted(expected_tags)
        for tag in expected_tags:
            assert registry.manifest("release/hello", tag).digest == digest
    manifest = json.loads(client(tls_registry).manifest("release/hello", "1.2.3").data)
    config_digest = manifest["config"]["digest"]
    import requests

    config = requests.get(
        f"https://{tls_registry.host}/v2/release/hello/blobs/{config_digest}",
        verify=str(tls_registry.ca_file),
        timeout=30,
    ).json()
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == "1.2.3"
    assert labels["org.opencontainers.image.revision"] == sha
    assert labels["org.opencontainers.image.title"] == "hello"
    assert labels["org.example.team"] == "platform"
    assert auth_registry.password not in out + err + report.read_text(encoding="utf-8")


def test_wrong_password_fails_in_preflight_before_the_build(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"""\
version: 1
registries:
  - {plain_registry.host}/wrongpw
  - {{url: {auth_registry.host}/wrongpw, username: shipit, password_env: REGISTRY_PASSWORD}}
image: {{name: hello}}
"""
    project = make_project(tmp_path / "project", spec)
    env = run_env(dockerd.host, tmp_path, REGISTRY_PASSWORD="not-the-password")
    code, _, err = run(["run", "-C", str(project)], env, capsys)
    assert code == 1
    assert f"{auth_registry.host}/wrongpw" in err
    assert "401" in err or "credentials" in err
    assert "==> build" not in err
    assert "not-the-password" not in err
    assert client(plain_registry).tags("wrongpw/hello") == []


def test_missing_password_variable_is_named(
    tmp_path: Path,
    dockerd: Dockerd,
    auth_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"version: 1\nregistries: [{{url: {auth_registry.host}/x, username: u, password_env: NOT_SET_HERE}}]\nimage: {{name: hello}}\n"
    project = make_project(tmp_path / "project", spec)
    code, _, err = run(["run", "-C", str(project)], run_env(dockerd.host, tmp_path), capsys)
    assert code == 1
    assert "NOT_SET_HERE is not set" in err


def test_failing_dockerfile_names_the_step(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"version: 1\nregistries: [{plain_registry.host}/broken]\nimage: {{name: hello}}\n"
    dockerfile = "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY missing.txt /missing.txt\n"
    project = make_project(tmp_path / "project", spec, dockerfile=dockerfile)
    report = tmp_path / "report.json"
    code, _, err = run(
        ["run", "-C", str(project), "--report", str(report)],
        run_env(dockerd.host, tmp_path),
        capsys,
    )
    assert code == 1
    assert "build: image hello: step 3/" in err
    assert "COPY missing.txt /missing.txt) failed" in err
    document = report_of(report)
    assert document["status"] == "failed"
    assert document["images"][0]["status"] == "failed"
    assert client(plain_registry).tags("broken/hello") == []


def test_one_dead_registry_leaves_every_registry_untagged_and_a_second_run_finishes(
    tmp_path: Path, dockerd: Dockerd, registry_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [registry_factory(), registry_factory()]
    doomed = registry_factory()
    proxy = FaultProxy(f"http://{doomed.host}", mode="dead_after_preflight")
    try:
        spec = (
            f"version: 1\nregistries: [{good[0].host}/p, {proxy.host}/p, {good[1].host}/p]\n"
            "image: {name: hello}\npush: {retries: 1}\n"
        )
        project = make_project(tmp_path / "project", spec)
        report = tmp_path / "report.json"
        env = run_env(dockerd.host, tmp_path)
        code, out, err = run(["run", "-C", str(project), "--report", str(report)], env, capsys)
        assert code == 1
        document = report_of(report)
        assert document["status"] == "failed"
        assert "nothing was tagged in any registry" in document["error"]
        [image] = document["images"]
        digest = image["digest"]
        assert digest and digest.startswith("sha256:")
        assert not any(r["pushed"] for r in image["refs"])  # no tag anywhere, not even the good
        registries = {r["registry"]: r for r in image["registries"]}
        for reg in good:
            held = registries[f"{reg.host}/p"]
            assert [m["digest"] for m in held["manifests"]] == [digest]
            assert held["tags"] == [] and held["error"] is None
            assert client(reg).has_manifest("p/hello", digest)  # stored by digest...
            assert client(reg).tags("p/hello") == []  # ...and tagged nowhere
        assert registries[f"{proxy.host}/p"]["error"]
        assert "stored, untagged" in out and f"{proxy.host}/p" in out
        assert digest[:19] in err  # the error lists the untagged manifests

        proxy.state.dead = False  # the registry is back: a second run finishes the job
        proxy.state.mode = "ok"
        code, out, err = run(["run", "-C", str(project), "--report", str(report)], env, capsys)
        assert code == 0, err
    finally:
        proxy.stop()
    document = report_of(report)
    assert document["images"][0]["digest"] == digest
    assert all(r["pushed"] and r["digest"] == digest for r in document["images"][0]["refs"])
    for reg in (*good, doomed):
        assert sorted(client(reg).tags("p/hello")) == sorted(document["images"][0]["tags"])


def test_a_registry_that_rejects_the_manifest_is_a_failure(
    tmp_path: Path, dockerd: Dockerd, registry_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = registry_factory()
    proxy = FaultProxy(f"http://{upstream.host}", mode="reject_manifests")
    try:
        spec = f"version: 1\nregistries: [{proxy.host}/m]\nimage: {{name: hello}}\n"
        project = make_project(tmp_path / "project", spec)
        report = tmp_path / "report.json"
        code, out, _ = run(
            ["run", "-C", str(project), "--report", str(report)],
            run_env(dockerd.host, tmp_path),
            capsys,
        )
    finally:
        proxy.stop()
    assert code == 1
    document = report_of(report)
    assert document["status"] == "failed"
    assert not any(ref["pushed"] for ref in document["images"][0]["refs"])
    assert "MANIFEST_INVALID" in out or "rejected" in out
    assert "result: failed" in out


def test_a_second_run_is_a_quick_no_op_with_the_same_digest(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"version: 1\nregistries: [{plain_registry.host}/again]\nimage: {{name: hello}}\n"
    project = make_project(tmp_path / "project", spec)
    reports = [tmp_path / "one.json", tmp_path / "two.json"]
    for report in reports:
        code, _, err = run(
            ["run", "-C", str(project), "--report", str(report)],
            run_env(dockerd.host, tmp_path),
            capsys,
        )
        assert code == 0, err
    first, second = (report_of(r)["images"][0]["refs"] for r in reports)
    assert [r["digest"] for r in first] == [r["digest"] for r in second]


def test_an_image_built_again_is_not_exported_again_unless_its_kept_layers_changed(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The export cache: a cached rebuild gives the same image id, so the second run pushes
    the kept layers (to a namespace that has none of them) without exporting; a kept layer
    that changed is noticed, and the image is exported again, to the same digest."""
    again = "not exported again"
    cache = tmp_path / "cache"
    env = run_env(dockerd.host, tmp_path, SHIPIT_CACHE_DIR=str(cache))
    digests = []
    project = make_project(tmp_path / "project", "version: 1\n")
    for step, namespace in enumerate(["kept1", "kept2", "kept3", "kept4"]):
        (project / "shipit.yml").write_text(
            f"version: 1\nregistries: [{plain_registry.host}/{namespace}]\nimage: {{name: hello}}\n",
            encoding="utf-8",
        )
        if step == 2:  # a kept layer rots on disk (replaced: the blob shares an inode)
            [blob, *_] = sorted(
                (cache / "blobs" / "sha256").iterdir(), key=lambda p: -p.stat().st_size
            )
            data = blob.read_bytes()
            blob.unlink()
            blob.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
        step_env = {**env, "SHIPIT_CACHE_DIR": "off"} if step == 3 else env
        code, out, err = run(["run", "-C", str(project), "--json"], step_env, capsys)
        assert code == 0, err
        assert (again in err) == (step == 1), err
        refs = json.loads(out)["images"][0]["refs"]
        digests.extend(ref["digest"] for ref in refs)
        manifest = client(plain_registry).manifest(f"{namespace}/hello", refs[0]["digest"])
        for layer in json.loads(manifest.data)["layers"]:  # every blob is there, whole
            assert client(plain_registry).has_blob(f"{namespace}/hello", layer["digest"])
    assert len(set(digests)) == 1
    assert len(list((cache / "images").iterdir())) == 1
    assert list((cache / "runs").iterdir()) == []  # each run's folder is gone with it


def test_no_push_builds_but_pushes_nothing(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"version: 1\nregistries: [{plain_registry.host}/nopush]\nimage: {{name: hello}}\n"
    project = make_project(tmp_path / "project", spec)
    code, out, err = run(
        ["run", "-C", str(project), "--no-push", "--json"], run_env(dockerd.host, tmp_path), capsys
    )
    assert code == 0, err
    document = json.loads(out)
    assert document["images"][0]["image_id"].startswith("sha256:")
    assert document["images"][0]["refs"] == []
    assert client(plain_registry).tags("nopush/hello") == []


def test_credentials_from_the_docker_config(
    tmp_path: Path,
    dockerd: Dockerd,
    auth_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    (home / ".docker" / "config.json").write_text(
        json.dumps({"auths": {auth_registry.host: {"auth": token}}}), encoding="utf-8"
    )
    spec = f"version: 1\nregistries: [{auth_registry.host}/fromconfig]\nimage: {{name: hello}}\n"
    project = make_project(tmp_path / "project", spec)
    code, out, err = run(["run", "-C", str(project), "-v"], run_env(dockerd.host, home), capsys)
    assert code == 0, err
    assert client(auth_registry).tags("fromconfig/hello") != []
    assert (auth_registry.password or "?") not in out + err


def test_two_namespaces_on_one_host_share_blobs_by_mount(
    tmp_path: Path,
    dockerd: Dockerd,
    plain_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"version: 1\nregistries: [{plain_registry.host}/team-a, {plain_registry.host}/team-b]\nimage: {{name: hello}}\n"
    project = make_project(tmp_path / "project", spec)
    code, _, err = run(["run", "-C", str(project)], run_env(dockerd.host, tmp_path), capsys)
    assert code == 0, err
    assert f"blobs mounted from {plain_registry.host}/team-a" in err
    a, b = client(plain_registry), client(plain_registry)
    assert a.manifest("team-a/hello", "main").digest == b.manifest("team-b/hello", "main").digest


def test_no_daemon_is_a_clear_preflight_failure(
    tmp_path: Path, plain_registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"version: 1\nregistries: [{plain_registry.host}/nodaemon]\nimage: {{name: hello}}\n"
    project = make_project(tmp_path / "project", spec)
    env = run_env(f"unix://{tmp_path}/no-docker.sock", tmp_path)
    code, _, err = run(["run", "-C", str(project)], env, capsys)
    assert code == 1
    assert "the Docker daemon does not answer" in err
    assert "Traceback" not in err


def test_a_tag_of_another_image_builds_nothing_and_succeeds(
    tmp_path: Path, plain_registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = f"""\
version: 1
registries: [{plain_registry.host}/mono]
images:
  - {{name: api, release: {{tag_pattern: "api/v(?P<version>.*)"}}}}
  - {{name: web, release: {{tag_pattern: "web/v(?P<version>.*)"}}}}
"""
    project = make_project(tmp_path / "project", spec)
    # no daemon at all: nothing may be built, so nothing may need one
    env = run_env(f"unix://{tmp_path}/no-docker.sock", tmp_path)
    code, out, err = run(
        ["run", "-C", str(project), "--image", "web", "--ref", "refs/tags/api/v1.0.0"], env, capsys
    )
    assert code == 0, err
    assert "no image of this spec is built for this ref" in err
    assert "result: success" in out


def test_a_build_only_run_needs_no_registry_secret(
    tmp_path: Path,
    dockerd: Dockerd,
    auth_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = f"version: 1\nregistries: [{{url: {auth_registry.host}/pr, username: u, password_env: UNSET_ON_FORKS}}]\nimage: {{name: hello}}\n"
    project = make_project(tmp_path / "project", spec)
    code, _, err = run(
        ["run", "-C", str(project), "--no-push"], run_env(dockerd.host, tmp_path), capsys
    )
    assert code == 0, err
