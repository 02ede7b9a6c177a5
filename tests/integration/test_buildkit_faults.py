"""What goes wrong with BuildKit, and what shipit says: buildx missing or too old, a builder
that does not answer, a platform no emulator runs, one platform's build failing, and an OCI
layout that does not hold what buildx reported. Each is exit 1 naming the part, before
anything is built where that can be known, and never a tag."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from shipit.registry import Endpoint, Registry
from tests.support.buildkit import busybox, busybox_context, unbuildable_platform
from tests.support.cli import run_shipit
from tests.support.gitrepo import git
from tests.support.project import make_project, run_env
from tests.support.services import Dockerd, RegistryFactory
from tests.support.services import Registry as RunningRegistry

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

REAL_DOCKER = shutil.which("docker") or "docker"


@pytest.fixture(scope="module")
def registry(registry_factory: RegistryFactory) -> RunningRegistry:
    return registry_factory()


def project(root: Path, registry: RunningRegistry, image: str, steps: tuple[str, ...] = ()) -> Path:
    spec = f"version: 1\nregistries: [{registry.host}/faults]\nimage:\n{image}"
    context = busybox_context(root / "ctx", steps=steps)
    made = make_project(root / "project", spec, dockerfile=(context / "Dockerfile").read_text())
    for arch in ("amd64", "arm64"):
        shutil.copy2(busybox(arch), made / f"busybox-{arch}")
    git(made, "add", "-A")
    git(made, "commit", "-q", "-m", "busybox")
    return made


def fake_docker(folder: Path, script: str) -> str:
    """A `docker` that runs `script` (sh) first; it may exec the real docker ($REAL)."""
    path = folder / "docker"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nREAL={REAL_DOCKER}\n{script}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def nothing_pushed(registry: RunningRegistry, name: str = "faults/app") -> bool:
    client = Registry(Endpoint(host=registry.host))
    return client.tags(name) == []


def run(
    project_dir: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    code, _, err = run_shipit(["run", "-C", str(project_dir)], capsys, env)
    return code, err


BUILDX = "  name: app\n  engine: buildx\n  platforms: [linux/amd64, linux/arm64]\n"


def test_no_buildx_plugin_is_an_error_before_the_build_with_the_install_hint(
    tmp_path: Path, dockerd: Dockerd, registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    env = run_env(dockerd.host, tmp_path)
    # what the docker CLI says when the plugin is not installed
    env["PATH"] = fake_docker(
        tmp_path / "bin",
        'if [ "$1" = buildx ]; then echo "docker: unknown command: docker buildx" >&2; exit 1; fi\n'
        'exec "$REAL" "$@"',
    )
    code, err = run(project(tmp_path, registry, BUILDX), env, capsys)
    assert code == 1
    assert "docker buildx is not installed" in err and "docker-buildx" in err  # the hint
    assert "==> build" not in err and nothing_pushed(registry)


def test_a_buildx_too_old_for_metadata_files_is_an_error_before_the_build(
    tmp_path: Path, dockerd: Dockerd, registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    env = run_env(dockerd.host, tmp_path)
    env["PATH"] = fake_docker(
        tmp_path / "bin",
        'if [ "$1 $2" = "buildx version" ]; then echo "github.com/docker/buildx v0.8.2 6224def"; exit 0; fi\n'
        'exec "$REAL" "$@"',
    )
    code, err = run(project(tmp_path, registry, BUILDX), env, capsys)
    assert code == 1
    assert "docker buildx v0.8.2 is too old" in err and "0.10 or newer" in err
    assert "==> build" not in err and nothing_pushed(registry)


def test_a_builder_that_does_not_answer_fails_preflight_naming_it(
    tmp_path: Path, dockerd: Dockerd, registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(
        project(tmp_path, registry, BUILDX + "  builder: no-such-farm\n"),
        run_env(dockerd.host, tmp_path),
        capsys,
    )
    assert code == 1
    assert "buildx cannot reach the builder no-such-farm" in err
    assert "docker buildx ls" in err  # what to do next
    assert "==> build" not in err and nothing_pushed(registry)


def test_a_platform_without_an_emulator_is_named_before_the_build(
    tmp_path: Path, dockerd: Dockerd, registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    # one this machine's builder cannot build, whatever binfmt_misc holds (riscv64 where only
    # qemu-aarch64 is registered; with every emulator, one QEMU has none for)
    platform = unbuildable_platform(dockerd.host)
    image = f"  name: app\n  engine: buildx\n  platforms: [linux/amd64, {platform}]\n"
    code, err = run(
        project(tmp_path, registry, image, ("RUN true",)), run_env(dockerd.host, tmp_path), capsys
    )
    assert code == 1
    assert (
        f"cannot build {platform} (" in err
        and "linux/amd64" not in err.split("cannot build")[1].split("(")[0]
    )
    assert "qemu-user-static" in err and "shipit matrix --by platform" in err
    assert "==> build" not in err and nothing_pushed(registry)


@pytest.fixture(params=["classic", "containerd"])
def daemon(request: pytest.FixtureRequest, dockerd: Dockerd, qemu_arm64: Any) -> str:
    if request.param == "classic":
        return dockerd.host
    return str(request.getfixturevalue("dockerd_containerd").host)


def test_one_platform_failing_names_its_step_and_no_platform_is_pushed(
    tmp_path: Path, daemon: str, registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    made = project(tmp_path, registry, BUILDX, ('RUN [ "$(uname -m)" != aarch64 ] || exit 7',))
    code, err = run(made, run_env(daemon, tmp_path), capsys)
    assert code == 1
    assert "failed" in err and 'RUN [ "$(uname -m)" != aarch64 ] || exit 7' in err
    assert "exit code: 7" in err
    assert "==> push" not in err and nothing_pushed(registry)


def test_an_oci_layout_that_lacks_what_buildx_reported_is_a_clear_failure(
    tmp_path: Path,
    dockerd_containerd: Any,
    qemu_arm64: Any,
    registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = run_env(dockerd_containerd.host, tmp_path)
    # the real build, then one layer blob of the layout goes missing
    env["PATH"] = fake_docker(
        tmp_path / "bin",
        'case " $* " in *" type=oci,tar=false,dest="*) ;; *) exec "$REAL" "$@";; esac\n'
        '"$REAL" "$@" || exit $?\n'
        'for a in "$@"; do case "$a" in type=oci,tar=false,dest=*) dest=${a#*dest=};; esac; done\n'
        'big=$(ls -S "$dest/blobs/sha256" | head -n 1)\n'
        'rm "$dest/blobs/sha256/$big"',
    )
    code, err = run(project(tmp_path, registry, BUILDX), env, capsys)
    assert code == 1
    assert "is missing from" in err and "oci" in err
    assert nothing_pushed(registry)
    report = json.loads((tmp_path / "project" / "shipit-report.json").read_text())
    assert report["status"] == "failed" and not any(
        r["pushed"] for i in report["images"] for r in i["refs"]
    )
