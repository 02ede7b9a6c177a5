"""`builder:` naming a docker context (DESIGN section 8): the build runs on that context's
daemon, and the image comes back from there, never through the run's own daemon.

Both directions, each context made with `docker context create NAME --docker host=unix://...`
in a DOCKER_CONFIG of the test's own:

- the context is sid's dockerd 28 (containerd image store, so buildx hands back an OCI
  layout) and the run has no daemon at all (DOCKER_HOST names a socket that does not exist):
  a two-platform build, scanned and pushed from the layout;
- the context is bookworm's dockerd 20.10 (classic store, so buildx `--load`s into it) and
  the run's DOCKER_HOST is dockerd 28: the image is in bookworm's daemon, not in dockerd 28,
  and shipit reads it back from bookworm's.

buildx refuses `--builder NAME` for a docker context that is not the current one ("use
`docker --context=NAME buildx` to switch"), so shipit runs `docker --context NAME buildx`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_multiplatform import (
    buildkit_project,
    client,
    env_for,
    file_in_image,
    registries_yaml,
)
from tests.support.buildkit import docker_at
from tests.support.cli import run_shipit
from tests.support.services import Dockerd, RegistryFactory
from tests.support.services import Registry as RunningRegistry

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

UNAME = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}


@pytest.fixture(scope="module")
def three(registry_factory: RegistryFactory) -> tuple[RunningRegistry, ...]:
    return (
        registry_factory(),
        registry_factory(tls=True),
        registry_factory(auth=("shipit", "pw-" + os.urandom(8).hex())),
    )


def make_context(config: Path, name: str, host: str) -> None:
    config.mkdir(parents=True, exist_ok=True)
    done = docker_at(
        host,
        "context",
        "create",
        name,
        "--docker",
        f"host={host}",
        env={"DOCKER_CONFIG": str(config)},
    )
    assert done.returncode == 0, done.stderr


def image_id(host: str, ref: str) -> str | None:
    done = docker_at(host, "image", "inspect", "--format", "{{.Id}}", ref)
    return done.stdout.strip() if done.returncode == 0 else None


def spec(regs: tuple[RunningRegistry, ...], namespace: str, platforms: str) -> str:
    return f"""\
version: 1
{registries_yaml(regs, namespace)}image:
  name: app
  engine: buildx
  builder: farm
  platforms: [{platforms}]
scan: {{scanners: [secret]}}
"""


def test_a_context_on_another_daemon_builds_there_without_a_local_daemon(
    tmp_path: Path,
    dockerd_containerd: Any,
    qemu_arm64: Any,
    three: tuple[RunningRegistry, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"ctx{os.urandom(3).hex()}"
    project = buildkit_project(
        tmp_path,
        spec(three, namespace, "linux/amd64, linux/arm64"),
        steps=("RUN uname -m > /arch",),
    )
    config = tmp_path / "docker-config"
    make_context(config, "farm", dockerd_containerd.host)
    report = tmp_path / "report.json"
    nowhere = f"unix://{tmp_path}/no-daemon-here.sock"
    env = env_for(nowhere, tmp_path, three, DOCKER_CONFIG=str(config))
    code, _, err = run_shipit(["run", "-C", str(project), "--report", str(report)], capsys, env)
    assert code == 0, err
    assert "buildx builder farm (docker driver): images come back as an OCI layout" in err
    assert "docker daemon" not in err  # no preflight of the (absent) local daemon
    [image] = json.loads(report.read_text())["images"]
    assert image["status"] == "ok"
    platforms = {p["platform"]: p["digest"] for p in image["platforms"]}
    repository = f"{namespace}/app"
    for reg in three:
        registry = client(reg)
        for tag in image["tags"]:
            assert registry.manifest(repository, tag).digest == image["digest"]
        for platform, digest in platforms.items():
            arch = file_in_image(registry, repository, digest, "arch")
            assert arch == f"{UNAME[platform]}\n".encode()


def test_a_context_that_loads_is_read_back_from_its_own_daemon(
    tmp_path: Path,
    dockerd: Dockerd,
    dockerd_containerd: Any,
    qemu_arm64: Any,
    three: tuple[RunningRegistry, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"ctl{os.urandom(3).hex()}"
    project = buildkit_project(
        tmp_path, spec(three, namespace, "linux/arm64"), steps=("RUN uname -m > /arch",)
    )
    config = tmp_path / "docker-config"
    make_context(config, "farm", dockerd.host)
    report = tmp_path / "report.json"
    env = env_for(dockerd_containerd.host, tmp_path, three, DOCKER_CONFIG=str(config))
    code, _, err = run_shipit(["run", "-C", str(project), "--report", str(report)], capsys, env)
    assert code == 0, err
    assert "buildx builder farm (docker driver): images come back loaded into its daemon" in err
    [image] = json.loads(report.read_text())["images"]
    local = f"{three[0].host}/{namespace}/app:{image['tags'][0]}"
    assert image_id(dockerd.host, local) is not None  # in the builder's daemon
    assert image_id(dockerd_containerd.host, local) is None  # not in the run's own
    repository = f"{namespace}/app"
    for reg in three:
        registry = client(reg)
        for tag in image["tags"]:
            assert registry.manifest(repository, tag).digest == image["digest"]
        assert file_in_image(registry, repository, image["digest"], "arch") == b"aarch64\n"
    # --no-prune: untagged parents stay (another session may build from the same cache)
    docker_at(dockerd.host, "rmi", "-f", "--no-prune", *{r["ref"] for r in image["refs"]})
