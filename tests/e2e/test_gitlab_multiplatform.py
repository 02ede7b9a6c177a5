"""Multi-platform images through the GitLab CI include under gitlab-ci-local (shell executor):

- examples/multi-platform/.gitlab-ci.yml with its ready `shipit` job turned on: a plain
  two-platform `shipit run` in one job;
- the template's buildx install (its own Python, run as the job runs it) from a loopback
  mirror of buildx's release: the plugin lands in $DOCKER_CONFIG/cli-plugins when its sha256
  is the one pinned (the job's SHIPIT_BUILDX_SHA256 here: the mirror serves Debian's build),
  and nowhere when it is not, even with a checksums.txt beside it that lists it;
- the same file as it is: `leg` (`.shipit-leg` with a `parallel: matrix:` of two platforms)
  and `merge` (`.shipit-merge`, `needs: [leg]`). With --shell-isolation every job runs in a
  folder of its own, so the legs' documents reach the merge only as the artifacts `needs:`
  brings (shipit-legs/multi-linux-amd64.json, ...-arm64.json); the merge job installs
  cosign from a loopback mirror of the release (checksum checked) and signs with a key.

The overrides are what a shell runner needs instead of the docker:dind service (`services:
[]`, DOCKER_HOST at bookworm's dockerd, no TLS variables) and the variables gitlab-ci-local
does not set as GitLab does (GITLAB_CI, CI_COMMIT_TAG, CI_REGISTRY_*; CI_PROJECT_DIR is the
job's own folder, `.`). The registry is a loopback one with basic auth, which the template
logs in to with the job token's stand-in.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import platform as host_platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit.registry import Credentials, Endpoint
from shipit.registry import Registry as Client
from tests.e2e.test_gitlab_include import (  # noqa: F401 (fixtures, used by name)
    RUN_TIMEOUT,
    TEMPLATE,
    cosign_keys,
    cosign_mirror,
    cosign_sha256,
    dotenv,
    gitlab_ci_local,
    runner_env,
    shipit_venv,
    variables,
)
from tests.integration.test_multiplatform import file_in_image
from tests.support.buildkit import buildx_plugin
from tests.support.gitrepo import git, make_repo
from tests.support.services import REPO, Dockerd, Registry

pytestmark = [pytest.mark.timeout(2 * RUN_TIMEOUT + 180), pytest.mark.slow]

EXAMPLE = REPO / "examples" / "multi-platform"
REPOSITORY = "acme/multi/examples/multi"  # $CI_REGISTRY_IMAGE/examples/multi
ARCH_NOTE = {"linux/amd64": b"built for amd64\n", "linux/arm64": b"built for arm64\n"}
SHELL_RUNNER = {
    "services": [],
    "variables": {
        "DOCKER_TLS_CERTDIR": "",
        "DOCKER_TLS_VERIFY": "",
        "DOCKER_CERT_PATH": "",
    },
}


def project_with(root: Path, overrides: dict[str, dict[str, Any]], docker_host: str) -> Path:
    """A committed project laid out like this repository, tagged v1.2.3, whose .gitlab-ci.yml
    is the example's with `overrides` merged into its jobs."""
    ci = yaml.safe_load((EXAMPLE / ".gitlab-ci.yml").read_text(encoding="utf-8"))
    for job, settings in overrides.items():
        merged = {**SHELL_RUNNER, **settings}
        merged["variables"] = {**SHELL_RUNNER["variables"], "DOCKER_HOST": docker_host}
        ci.setdefault(job, {}).update(merged)
    make_repo(root)
    shutil.copyfile(TEMPLATE, root / ".gitlab-ci-template.yml")
    shutil.copytree(
        EXAMPLE, root / "examples" / "multi-platform", ignore=shutil.ignore_patterns(".*")
    )
    (root / ".gitlab-ci.yml").write_text(yaml.safe_dump(ci, sort_keys=False), encoding="utf-8")
    (root / ".gitignore").write_text(".gitlab-ci-local/\n", encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "multi")
    git(root, "tag", "-a", "-m", "v1.2.3", "v1.2.3")
    git(root, "remote", "add", "origin", "https://gitlab.example.com/acme/multi.git")
    return root


def ci_variables(
    registry: Registry, venv: Path, mirror: str, keys: tuple[Path, str], **more: str
) -> list[str]:
    assert registry.username and registry.password
    key, password = keys
    return variables(
        GITLAB_CI="true",
        CI_PROJECT_DIR=".",
        CI_COMMIT_TAG="v1.2.3",
        CI_REGISTRY=registry.host,
        CI_REGISTRY_USER=registry.username,
        CI_REGISTRY_PASSWORD=registry.password,
        SHIPIT_PIP_SPEC=str(REPO),
        SHIPIT_VENV=str(venv),
        SHIPIT_COSIGN_BASE_URL=mirror,
        SHIPIT_COSIGN_SHA256=cosign_sha256(),
        COSIGN_KEY=str(key),
        COSIGN_PASSWORD=password,
        COSIGN_TLOG="false",
        **more,
    )


def client(registry: Registry) -> Client:
    assert registry.username and registry.password
    credentials = Credentials(username=registry.username, password=registry.password)
    return Client(Endpoint(host=registry.host, credentials=credentials))


def check_release(registry: Registry, values: dict[str, str]) -> dict[str, str]:
    """The dotenv of the job that tagged: every tag at the index digest, each platform's
    /arch.txt in the registry; returns the platforms' digests."""
    assert values["SHIPIT_STATUS"] == "success"
    assert values["SHIPIT_VERSION"] == "1.2.3"
    digest = values["SHIPIT_DIGEST"]
    registry_client = client(registry)
    refs = values["SHIPIT_TAGS"].split(",")
    prefix = f"{registry.host}/{REPOSITORY}:"
    assert {f"{prefix}1.2.3", f"{prefix}latest"} <= set(refs)
    for ref in refs:
        assert registry_client.manifest(REPOSITORY, ref.removeprefix(prefix)).digest == digest
    index = registry_client.manifest(REPOSITORY, digest)
    children = {str(c.platform): c.digest for c in index.children()}
    assert sorted(children) == sorted(ARCH_NOTE)
    for platform, child in children.items():
        assert file_in_image(registry_client, REPOSITORY, child, "arch.txt") == ARCH_NOTE[platform]
    return children


def test_the_ready_job_builds_two_platforms_in_one_job(
    tmp_path: Path,
    dockerd: Dockerd,
    auth_registry: Registry,
    shipit_venv: Path,  # noqa: F811
    cosign_mirror: str,  # noqa: F811
    cosign_keys: tuple[Path, str],  # noqa: F811
) -> None:
    project = project_with(tmp_path / "multi", {"shipit": {}}, dockerd.host)
    home = tmp_path / "home"
    home.mkdir()
    args = ci_variables(
        auth_registry, shipit_venv, cosign_mirror, cosign_keys, SHIPIT_DISABLED="false"
    )
    code, output = gitlab_ci_local(
        project,
        ["--force-shell-executor", "shipit", *args],
        runner_env(home),
        RUN_TIMEOUT,
        tmp_path / "gitlab-ci-local.log",
    )
    assert code == 0, output[-8000:]
    state = project / ".gitlab-ci-local"
    job_log = (state / "output" / "shipit.log").read_text(encoding="utf-8", errors="replace")
    assert "with buildx for linux/amd64" in job_log and "linux/arm64" in job_log
    env_file = state / "artifacts" / "shipit" / ".gitlab-ci-reports" / "dotenv" / "shipit.env"
    check_release(auth_registry, dotenv(env_file))


def test_the_example_pipeline_builds_legs_and_merges_them(
    tmp_path: Path,
    dockerd: Dockerd,
    auth_registry: Registry,
    shipit_venv: Path,  # noqa: F811
    cosign_mirror: str,  # noqa: F811
    cosign_keys: tuple[Path, str],  # noqa: F811
) -> None:
    project = project_with(tmp_path / "multi", {"leg": {}, "merge": {}}, dockerd.host)
    home = tmp_path / "home"
    home.mkdir()
    args = ci_variables(auth_registry, shipit_venv, cosign_mirror, cosign_keys)
    code, output = gitlab_ci_local(
        project,
        # one job at a time: the legs share the session's virtual environment
        ["--force-shell-executor", "--shell-isolation", "--concurrency", "1", *args],
        runner_env(home),
        RUN_TIMEOUT,
        tmp_path / "gitlab-ci-local.log",
    )
    assert code == 0, output[-8000:]
    state = project / ".gitlab-ci-local"
    logs = {
        p.stem: p.read_text(encoding="utf-8", errors="replace")
        for p in (state / "output").glob("*.log")
    }
    legs = sorted(name for name in logs if name.startswith("leg"))
    assert len(legs) == 2, sorted(logs)
    merge_log = logs["merge"]
    # each leg kept its document as an artifact, and its digest in its dotenv report
    digests = {}
    for name in legs:
        [leg_file] = (state / "artifacts" / name / "shipit-legs").glob("multi-linux-*.json")
        leg = json.loads(leg_file.read_text(encoding="utf-8"))
        assert leg["kind"] == "shipit-leg" and leg["status"] == "success"
        digests[leg["platform"]] = leg["digest"]
        report_env = state / "artifacts" / name / ".gitlab-ci-reports" / "dotenv" / "shipit.env"
        variable = "SHIPIT_LEG_MULTI_" + leg["platform"].upper().replace("/", "_")
        assert dotenv(report_env) == {variable: leg["digest"]}
    assert sorted(digests) == sorted(ARCH_NOTE)
    # the merge read both from the artifacts `needs:` brought into its own folder
    for platform, digest in digests.items():
        leg_name = f"shipit-legs/multi-{platform.replace('/', '-')}.json"
        assert f"multi {platform}: {digest} in the registry, built from" in merge_log
        assert f"(leg {leg_name})" in merge_log
    env_file = state / "artifacts" / "merge" / ".gitlab-ci-reports" / "dotenv" / "shipit.env"
    values = dotenv(env_file)
    children = check_release(auth_registry, values)
    report = json.loads((state / "artifacts" / "merge" / "shipit-report.json").read_text())
    [image] = report["images"]
    assert {p["platform"]: p["digest"] for p in image["platforms"]} == children == digests
    assert all(r["pushed"] and r["signed"] for r in image["refs"])
    # the legs recorded nothing in the registry: the files were the way
    assert not [t for t in client(auth_registry).tags(REPOSITORY) if t.startswith("shipit-leg-")]
    print(f"merge job dotenv: {json.dumps(values, indent=2)}")
    print(f"index {values['SHIPIT_DIGEST']} in {auth_registry.host}: {json.dumps(children)}")


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """`folder` over HTTP on 127.0.0.1, for as long as the block runs."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def buildx_installer() -> str:
    """The Python the template's buildx step runs (between `python3 - <<'EOF'` and `EOF`)."""
    steps = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))[".shipit"]["before_script"]
    [step] = [s for s in steps if s.startswith("# buildx:")]
    match = re.search(r"python3 - <<'EOF'\n(.*?)\nEOF", step, re.DOTALL)
    assert match, step
    return match.group(1)


def test_the_template_installs_buildx_only_with_the_pinned_checksum(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    machine = host_platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    name = f"buildx-v0.29.1.linux-{arch}"
    data = buildx_plugin().read_bytes()
    (release / name).write_bytes(data)
    # a checksums file that lists the served plugin, as a server that swapped both would
    (release / "checksums.txt").write_text(
        f"{hashlib.sha256(data).hexdigest()} *{name}\n", encoding="utf-8"
    )
    pinned = {
        line.split()[2]: line.split()[3]
        for line in (REPO / "requirements" / "downloads.sha256").read_text().splitlines()
        if line.startswith("buildx ")
    }
    # the job's pin, or none (the template's own pin for 0.29.1, which Debian's build is not)
    cases = {"job-pin": hashlib.sha256(data).hexdigest(), "template-pin": ""}
    code = buildx_installer()
    for case, digest in cases.items():
        config = tmp_path / f"docker-config-{case}"
        with serve(release) as base:
            env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DOCKER_CONFIG": str(config)}
            done = subprocess.run(
                [sys.executable, "-c", code],
                env={**env, "SHIPIT_BUILDX_BASE_URL": base, "SHIPIT_BUILDX_SHA256": digest},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        plugin = config / "cli-plugins" / "docker-buildx"
        if case == "template-pin":
            assert done.returncode != 0
            expected = f"has sha256 {hashlib.sha256(data).hexdigest()}, expected {pinned[name]}"
            assert expected in done.stderr
            assert not plugin.exists()
            continue
        assert done.returncode == 0, done.stderr
        assert f"buildx: installed {name} from {base}" in done.stdout
        assert plugin.read_bytes() == data and os.access(plugin, os.X_OK)
        ran = subprocess.run(
            ["docker", "buildx", "version"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 0 and "buildx 0.29" in ran.stdout, ran.stderr
