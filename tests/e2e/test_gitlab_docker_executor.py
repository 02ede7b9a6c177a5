"""The GitLab include as GitLab's docker executor runs it: the job in shipit's own image, the
Docker daemon a privileged Docker-in-Docker service, under gitlab-ci-local's docker executor.

Every image is made here from the local Debian bookworm base (tests/support/ci_images.py):
shipit's own image from the root Dockerfile (the job's `image:`, through SHIPIT_JOB_IMAGE, as a
project sets it), a dind service from Debian's docker.io, a registry service from Debian's
docker-registry, and the base with rsync as gitlab-ci-local's helper image (it copies the
project into the job's volume and the artifacts out); nothing is pulled (`--pull-policy
if-not-present`, every image already in the daemon). The job's network is the services'
network of gitlab-ci-local: the daemon is `docker:2375` (the template's documented dind
without TLS), the registry `registry:5000`; nothing leaves the machine.

The job installs nothing: shipit, trivy, cosign, git and the Docker CLI are the image's. The
template's script is unchanged; the project's own .gitlab-ci.yml names the services it runs
instead of docker:dind (Docker Hub is unreachable here).

The daemonless job (`.shipit-buildah`) runs there too, unprivileged, with the registry
service alone: under Docker's default seccomp profile buildah cannot start (asserted as it
is), with seccomp unconfined (a runner's `security_opt`) it builds, and shipit scans, pushes
and signs.

`--privileged` is gitlab-ci-local's (a runner's `privileged = true`). On a machine whose
capability bounding set lacks some capabilities (this one lacks CAP_SYS_RESOURCE: `docker run
--privileged` fails with "unable to apply caps: operation not permitted"), the docker command
gitlab-ci-local runs is a wrapper that gives a privileged container every capability the
machine has instead, with seccomp, AppArmor and the masked /proc paths off as --privileged does.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit import __version__
from tests.e2e.test_gitlab_include import (
    TEMPLATE,
    dotenv,
    gitlab_ci_local,
    runner_env,
    variables,
)
from tests.support.ci_images import dind_image, docker, helper_image, own_image, registry_image
from tests.support.debian_base import BaseImage, base_image
from tests.support.gitrepo import git, make_repo
from tests.support.keys import cosign_key_pair
from tests.support.services import REPO, Dockerd

RUN_TIMEOUT = 420.0
pytestmark = [pytest.mark.timeout(RUN_TIMEOUT + 600), pytest.mark.slow]

# capability numbers (linux/capability.h) for the wrapper's --cap-drop
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
SPEC = """\
version: 1
registries:
  - url: registry:5000/acme
    insecure: true            # the registry service: plain HTTP, not loopback
image:
  name: hello
  context: .
scan:
  fail_on: HIGH
  scanners: [secret]
sign:
  key: ${COSIGN_KEY}
  tlog: false
"""


def missing_capabilities() -> list[str]:
    """The capabilities this machine's bounding set lacks (a privileged container asks all)."""
    status = Path("/proc/self/status").read_text(encoding="utf-8")
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return [name for bit, name in enumerate(CAPABILITIES) if not bounding >> bit & 1]


def container_executable(folder: Path, helper: str) -> str:
    """`docker`, or where a privileged container cannot start here, the wrapper."""
    done = docker("run", "--rm", "--privileged", helper, "true")
    if done.returncode == 0:
        return "docker"
    assert "unable to apply caps" in done.stderr, done.stderr
    drops = " ".join(f"--cap-drop={name}" for name in missing_capabilities())
    assert drops, done.stderr
    wrapper = folder / "docker-privileged-here"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# docker, with --privileged given as every capability this machine has\n"
        "for arg do\n"
        "  shift\n"
        '  if [ "$arg" = --privileged ]; then\n'
        f'    set -- "$@" --cap-add=ALL {drops} --security-opt=seccomp=unconfined'
        " --security-opt=apparmor=unconfined --security-opt=systempaths=unconfined\n"
        '  else set -- "$@" "$arg"; fi\n'
        "done\n"
        'exec docker "$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


@pytest.fixture(scope="module")
def base() -> BaseImage:
    return base_image("python")


@pytest.fixture(scope="module")
def images(
    dockerd: Dockerd, base: BaseImage, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    work = tmp_path_factory.mktemp("ci-images")
    return {
        "job": own_image(base, work),
        "dind": dind_image(base, work),
        "registry": registry_image(base, work),
        "helper": helper_image(base, work),
    }


def project_ci(images: dict[str, str]) -> dict[str, Any]:
    return {
        "include": [{"local": ".gitlab-ci-template.yml"}],
        "variables": {"SHIPIT_JOB_IMAGE": images["job"]},
        "shipit": {
            "stage": "build",
            # docker:dind and a registry, both made here
            "services": [
                {
                    "name": images["dind"],
                    "alias": "docker",
                    "command": ["dockerd", "--host=tcp://0.0.0.0:2375", "--tls=false"],
                },
                {"name": images["registry"], "alias": "registry"},
            ],
            # the template's dind without TLS
            "variables": {
                "DOCKER_HOST": "tcp://docker:2375",
                "DOCKER_TLS_CERTDIR": "",
                "DOCKER_TLS_VERIFY": "",
                "DOCKER_CERT_PATH": "",
                "COSIGN_KEY": "$CI_PROJECT_DIR/cosign.key",
            },
        },
    }


def make_project(root: Path, ci: dict[str, Any], key: Path, spec: str = SPEC) -> Path:
    make_repo(root)
    shutil.copyfile(TEMPLATE, root / ".gitlab-ci-template.yml")
    shutil.copyfile(REPO / "examples" / "hello" / "Dockerfile", root / "Dockerfile")
    (root / "hello.txt").write_text("hello from a GitLab docker executor job\n", encoding="utf-8")
    (root / "shipit.yml").write_text(spec, encoding="utf-8")
    shutil.copyfile(key, root / "cosign.key")  # encrypted; its password is a job variable
    (root / ".gitlab-ci.yml").write_text(yaml.safe_dump(ci, sort_keys=False), encoding="utf-8")
    (root / ".gitignore").write_text(".gitlab-ci-local/\n", encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "hello")
    git(root, "tag", "-a", "-m", "v1.2.3", "v1.2.3")
    git(root, "remote", "add", "origin", "https://gitlab.example.com/acme/hello.git")
    return root


def job_seconds(output: str, job: str) -> float:
    """The job's own time as gitlab-ci-local prints it ("finished in 12 s" / "1.2 min")."""
    found = re.search(rf"^{re.escape(job)}\s+finished in ([\d.]+) (ms|s|min)", output, re.M)
    assert found, output[-3000:]
    value, unit = float(found.group(1)), found.group(2)
    return value * {"ms": 0.001, "s": 1.0, "min": 60.0}[unit]


def test_the_template_defaults_to_shipits_own_image_of_its_release() -> None:
    template = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    assert template[".shipit"]["image"] == "$SHIPIT_JOB_IMAGE"
    # a top-level variable: the project's own top-level `variables:` replace it
    image = template["variables"]["SHIPIT_JOB_IMAGE"]
    assert image == f"ghcr.io/OWNER/shipit:{__version__}"
    assert f"shipit=={__version__}" in TEMPLATE.read_text(encoding="utf-8")


def test_the_include_runs_in_shipits_own_image_with_a_dind_service(
    tmp_path: Path, dockerd: Dockerd, images: dict[str, str]
) -> None:
    keys = cosign_key_pair(tmp_path / "keys")
    project = make_project(tmp_path / "hello", project_ci(images), keys.private)
    home = tmp_path / "home"
    home.mkdir()
    storage = tmp_path / "registry-data"  # the registry service's storage, read afterwards
    storage.mkdir()
    args = [
        "--privileged",
        "--pull-policy=if-not-present",
        f"--helper-image={images['helper']}",
        f"--container-executable={container_executable(tmp_path, images['helper'])}",
        f"--volume={storage}:/var/lib/docker-registry",
        *variables(
            GITLAB_CI="true",  # gitlab-ci-local says "false"
            CI_COMMIT_TAG="v1.2.3",  # gitlab-ci-local sets only CI_COMMIT_BRANCH
            COSIGN_PASSWORD=keys.password,
        ),
        "shipit",
    ]
    env = {**runner_env(home), "DOCKER_HOST": dockerd.host}
    started = time.monotonic()
    code, output = gitlab_ci_local(project, args, env, RUN_TIMEOUT, tmp_path / "gcl.log")
    elapsed = time.monotonic() - started
    state = project / ".gitlab-ci-local"
    log_file = state / "output" / "shipit.log"
    job_log = log_file.read_text(errors="replace") if log_file.exists() else ""
    assert code == 0, f"gitlab-ci-local exited {code} after {elapsed:.0f} s:\n{output[-8000:]}"
    print(f"job in shipit's own image: {job_seconds(output, 'shipit'):.1f} s "
          f"(gitlab-ci-local {elapsed:.1f} s)")  # fmt: skip

    # the job ran in the image, with the services, and installed nothing
    assert f"shipit starting {images['job']}" in output, output[-3000:]
    assert f"started service image: {images['dind']}" in output
    assert f"shipit: the image's, /opt/shipit/bin/shipit: shipit, version {__version__}" in job_log
    for installing in ("+ pip ", "cosign: installed", "buildx: installed", "apt-get"):
        assert installing not in job_log, job_log

    values = dotenv(state / "artifacts" / "shipit" / ".gitlab-ci-reports" / "dotenv" / "shipit.env")
    assert values["SHIPIT_STATUS"] == "success", job_log[-4000:]
    assert values["SHIPIT_VERSION"] == "1.2.3"
    digest = values["SHIPIT_DIGEST"]
    document = json.loads((state / "artifacts" / "shipit" / "shipit-report.json").read_text())
    [image] = document["images"]
    assert all(r["pushed"] and r["signed"] and r["digest"] == digest for r in image["refs"])
    # the registry service's own storage holds the tags, and cosign's tag for the digest's
    # signature (cosign 3: the referrers fallback tag sha256-HEX)
    tags = storage / "docker/registry/v2/repositories/acme/hello/_manifests/tags"
    held = sorted(p.name for p in tags.iterdir() if (p / "current" / "link").is_file())
    assert {"1.2.3", "1.2", "latest", digest.replace(":", "-")} <= set(held), held
    assert (tags / "1.2.3" / "current" / "link").read_text() == digest
    assert keys.password not in output + job_log

    # gitlab-ci-local removed what it started (by id): no container of the job is left
    left = docker("ps", "-a", "--filter", f"ancestor={images['dind']}", "--format", "{{.ID}}")
    assert left.stdout.strip() == "", left.stdout


def seccomp_unconfined(folder: Path) -> str:
    """docker, with the job's containers created without Docker's default seccomp profile:
    what a runner's `security_opt = ["seccomp:unconfined"]` does. No capability is added."""
    wrapper = folder / "docker-seccomp-unconfined"
    wrapper.write_text(
        '#!/bin/sh\n[ "$1" = create ] && { shift; set -- create --security-opt=seccomp=unconfined "$@"; }\n'
        'exec docker "$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


def test_the_daemonless_job_runs_unprivileged_in_shipits_own_image(
    tmp_path: Path, dockerd: Dockerd, images: dict[str, str]
) -> None:
    """`.shipit-buildah` in shipit's own image (buildah 1.28 from Debian), no --privileged, no
    dind: under Docker's default seccomp profile buildah cannot start (lacking CAP_SYS_ADMIN it
    takes itself for rootless and unshares a user namespace, which the profile refuses);
    with seccomp unconfined and the default capabilities it builds, and shipit scans, pushes
    and signs."""
    keys = cosign_key_pair(tmp_path / "keys")
    ci = {
        "include": [{"local": ".gitlab-ci-template.yml"}],
        "variables": {"SHIPIT_JOB_IMAGE": images["job"], "SHIPIT_DISABLED": "true"},
        "release": {
            "extends": ".shipit-buildah",
            "stage": "build",
            "services": [{"name": images["registry"], "alias": "registry"}],
            "variables": {"COSIGN_KEY": "$CI_PROJECT_DIR/cosign.key"},
        },
    }
    spec = SPEC.replace("  context: .\n", "  context: .\n  engine: buildah\n")
    home = tmp_path / "home"
    home.mkdir()
    outcomes = {}
    for name, executable in (("default", "docker"), ("unconfined", seccomp_unconfined(tmp_path))):
        project = make_project(tmp_path / name, ci, keys.private, spec)
        args = [
            "--pull-policy=if-not-present",
            f"--helper-image={images['helper']}",
            f"--container-executable={executable}",
            *variables(GITLAB_CI="true", CI_COMMIT_TAG="v1.2.3", COSIGN_PASSWORD=keys.password),
            "release",
        ]
        env = {**runner_env(home), "DOCKER_HOST": dockerd.host}
        code, output = gitlab_ci_local(project, args, env, RUN_TIMEOUT, tmp_path / f"{name}.log")
        log_file = project / ".gitlab-ci-local" / "output" / "release.log"
        job_log = log_file.read_text(errors="replace") if log_file.exists() else ""
        outcomes[name] = (code, output, job_log, project)
        assert keys.password not in output + job_log

    code, output, job_log, _ = outcomes["default"]
    assert code != 0, output[-3000:]
    assert "unshare(CLONE_NEWUSER): Operation not permitted" in job_log, job_log[-3000:]

    code, output, job_log, project = outcomes["unconfined"]
    assert code == 0, f"gitlab-ci-local exited {code}:\n{output[-8000:]}"
    print(f"daemonless job in shipit's own image: {job_seconds(output, 'release'):.1f} s")
    assert "buildah version 1." in job_log
    for installing in ("+ pip ", "cosign: installed", "apt-get"):
        assert installing not in job_log, job_log
    state = project / ".gitlab-ci-local"
    values = dotenv(
        state / "artifacts" / "release" / ".gitlab-ci-reports" / "dotenv" / "shipit.env"
    )
    assert values["SHIPIT_STATUS"] == "success", job_log[-4000:]
    document = json.loads((state / "artifacts" / "release" / "shipit-report.json").read_text())
    [image] = document["images"]
    assert all(r["pushed"] and r["signed"] for r in image["refs"]), image["refs"]
