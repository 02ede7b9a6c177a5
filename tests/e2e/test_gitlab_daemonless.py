"""The include's daemonless job, `.shipit-buildah`, run for real by gitlab-ci-local on the host
(shell executor), as examples/daemonless/.gitlab-ci.yml uses it.

Laid out as tests/e2e/test_gitlab_include.py lays out the hello example: a temporary git
project with .gitlab-ci-template.yml at its root and examples/daemonless/, whose CI file is
the project's .gitlab-ci.yml. What a shell runner needs instead of a Kubernetes pod is the
only override: DOCKER_HOST points at nothing (no Docker daemon reachable in the job, even
if one runs on this machine) and buildah gets storage of the test's own
(CONTAINERS_STORAGE_CONF; the template's STORAGE_DRIVER=vfs and BUILDAH_ISOLATION=chroot
stay as they are). Everything else is the template's: shipit installed by pip from this
checkout, trivy by pip, cosign from a loopback release mirror, buildah found on PATH (the
job installs it from apt only when missing), the login to a loopback registry with basic
auth, `shipit run`, and the dotenv report a later job reads.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_gitlab_include import (  # noqa: F401 (fixtures, used by name)
    RUN_TIMEOUT,
    TEMPLATE,
    cosign_keys,
    cosign_mirror,
    cosign_sha256,
    dotenv,
    gitlab_ci_local,
    registry_digest,
    registry_tags,
    runner_env,
    shipit_venv,
    variables,
)
from tests.integration.test_multiplatform import file_in_image
from tests.support.buildkit import busybox
from tests.support.gitrepo import git, make_repo
from tests.support.services import Registry, registry_client

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "daemonless"
JOB = "release"  # the example's job, `extends: .shipit-buildah`
NO_DAEMON = "unix:///nonexistent/docker.sock"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
# chroot isolation runs RUN steps in the host's PID namespace (buildah-build(1)), so PID 1 is
# the job's machine's init; under oci isolation it would be this step's own shell
PID1_STEP = 'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox cat /proc/1/comm > /pid1"]'

pytestmark = [pytest.mark.timeout(RUN_TIMEOUT + 180), pytest.mark.slow]


def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    return loaded


def example_ci() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (EXAMPLE / ".gitlab-ci.yml").read_text(encoding="utf-8")
    )
    return loaded


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Path]:
    """containers-storage of the test's own (vfs, as the job asks), removed afterwards."""
    root = tmp_path / "containers"
    root.mkdir()
    conf = root / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n',
        encoding="utf-8",
    )
    try:
        yield conf
    finally:
        env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "STORAGE_DRIVER": "vfs"}
        for argv in (["buildah", "rm", "--all"], ["buildah", "rmi", "--all", "--force"]):
            subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(root, ignore_errors=True)
        assert not root.exists(), f"{root} could not be removed"


def test_the_daemonless_job_needs_no_service_and_no_privilege() -> None:
    job = template()[".shipit-buildah"]
    assert job["extends"] == ".shipit"
    assert job["services"] == []  # no docker:dind
    assert "privileged" not in json.dumps(job)
    settings = job["variables"]
    assert settings["DOCKER_HOST"] == ""  # nothing of dind's TLS setup is left
    assert settings["DOCKER_TLS_CERTDIR"] == settings["DOCKER_TLS_VERIFY"] == ""
    assert settings["BUILDAH_ISOLATION"] == "chroot"
    assert settings["STORAGE_DRIVER"] == "vfs"
    assert job["script"][-1] == 'shipit run $SHIPIT_ARGS -f "${SHIPIT_SPEC:-shipit.yml}"'
    # the example uses it, on an engine: buildah spec, instead of the dind job
    ci = example_ci()
    assert ci["include"] == [{"local": ".gitlab-ci-template.yml"}]
    assert ci[JOB]["extends"] == ".shipit-buildah"
    assert ci["variables"]["SHIPIT_DISABLED"] == "true"
    spec = yaml.safe_load((EXAMPLE / "shipit.yml").read_text(encoding="utf-8"))
    assert spec["image"]["engine"] == "buildah"


def daemonless_project(root: Path, ci: dict[str, Any], tag: str) -> Path:
    """The example as the job finds it, plus a RUN step (a static busybox for it to run):
    the example's image has no shell, and the job's chroot isolation shows in a RUN step."""
    make_repo(root)
    shutil.copyfile(TEMPLATE, root / ".gitlab-ci-template.yml")
    example = root / "examples" / "daemonless"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns(".*"))
    shutil.copy2(busybox(ARCH), example / "busybox")
    with (example / "Dockerfile").open("a", encoding="utf-8") as dockerfile:
        dockerfile.write(f"COPY busybox /bin/busybox\n{PID1_STEP}\n")
    (root / ".gitlab-ci.yml").write_text(yaml.safe_dump(ci, sort_keys=False), encoding="utf-8")
    (root / ".gitignore").write_text(".gitlab-ci-local/\n", encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "daemonless")
    git(root, "tag", "-a", "-m", tag, tag)
    git(root, "remote", "add", "origin", "https://gitlab.example.com/acme/hello.git")
    return root


def test_the_daemonless_job_releases_the_example_with_no_docker_daemon(
    tmp_path: Path,
    auth_registry: Registry,
    storage: Path,
    shipit_venv: Path,  # noqa: F811
    cosign_mirror: str,  # noqa: F811
    cosign_keys: tuple[Path, str],  # noqa: F811
) -> None:
    assert auth_registry.username and auth_registry.password
    key, key_password = cosign_keys
    ci = example_ci()
    # a shell runner instead of a pod: no daemon to reach, buildah's storage our own
    ci[JOB]["variables"] = {"DOCKER_HOST": NO_DAEMON, "CONTAINERS_STORAGE_CONF": str(storage)}
    ci["show-release"] = {
        "stage": "deploy",
        "needs": [JOB],
        "script": ['echo "released $SHIPIT_VERSION as $SHIPIT_DIGEST"'],
    }
    project = daemonless_project(tmp_path / "daemonless", ci, tag="v2.0.1")
    home = tmp_path / "home"
    home.mkdir()
    args = variables(
        GITLAB_CI="true",  # gitlab-ci-local says "false"
        CI_PROJECT_DIR=str(project),  # gitlab-ci-local says /builds/... for a job with image:
        CI_COMMIT_TAG="v2.0.1",  # gitlab-ci-local sets only CI_COMMIT_BRANCH
        CI_REGISTRY=auth_registry.host,
        CI_REGISTRY_USER=auth_registry.username,
        CI_REGISTRY_PASSWORD=auth_registry.password,
        SHIPIT_PIP_SPEC=str(REPO),
        SHIPIT_VENV=str(shipit_venv),
        SHIPIT_COSIGN_BASE_URL=cosign_mirror,
        SHIPIT_COSIGN_SHA256=cosign_sha256(),
        SHIPIT_ARGS="-v",
        COSIGN_KEY=str(key),
        COSIGN_PASSWORD=key_password,
        COSIGN_TLOG="false",
    )
    started = time.monotonic()
    code, output = gitlab_ci_local(
        project,
        ["--force-shell-executor", *args],
        runner_env(home),
        RUN_TIMEOUT,
        tmp_path / "gitlab-ci-local.log",
    )
    elapsed = time.monotonic() - started
    state = project / ".gitlab-ci-local"
    job_log = (state / "output" / f"{JOB}.log").read_text(encoding="utf-8", errors="replace")
    assert code == 0, f"gitlab-ci-local exited {code} after {elapsed:.0f} s:\n{output[-8000:]}"
    print(f"gitlab-ci-local pipeline: {elapsed:.1f} s")

    # buildah built it, in the job's storage, with no daemon: none was asked for
    assert "with buildah" in job_log and "STEP 1/" in job_log, job_log[-4000:]
    assert "docker daemon" not in job_log
    assert any((storage.parent / "graph").glob("vfs*")), "buildah did not use the vfs storage"
    assert "--isolation" not in job_log  # BUILDAH_ISOLATION, the job's, chose it

    env_file = state / "artifacts" / JOB / ".gitlab-ci-reports" / "dotenv" / "shipit.env"
    values = dotenv(env_file)
    assert values["SHIPIT_STATUS"] == "success"
    assert values["SHIPIT_VERSION"] == "2.0.1"
    digest = values["SHIPIT_DIGEST"]
    repository = "acme/hello/examples/daemonless"
    prefix = f"{auth_registry.host}/{repository}:"
    refs = values["SHIPIT_TAGS"].split(",")
    assert refs and all(ref.startswith(prefix) for ref in refs), refs
    pushed = [ref.removeprefix(prefix) for ref in refs]
    assert "2.0.1" in pushed
    assert set(pushed) <= set(registry_tags(auth_registry, repository))
    for tag in pushed:
        assert registry_digest(auth_registry, repository, tag) == digest

    document = json.loads((state / "artifacts" / JOB / "shipit-report.json").read_text())
    assert document["status"] == "success"
    [image] = document["images"]
    assert all(ref["pushed"] and ref["signed"] for ref in image["refs"])
    # the RUN step ran with chroot isolation: in the PID namespace of the machine
    client = registry_client(auth_registry)
    host_init = Path("/proc/1/comm").read_bytes()
    assert file_in_image(client, repository, digest, "pid1") == host_init
    assert (
        file_in_image(client, repository, digest, "hello.txt")
        == (EXAMPLE / "hello.txt").read_bytes()
    )

    shown = (state / "output" / "show-release.log").read_text(encoding="utf-8")
    assert f"released 2.0.1 as {digest}" in shown
    for secret in (auth_registry.password, key_password):
        assert all(secret not in text for text in (output, job_log, env_file.read_text()))
