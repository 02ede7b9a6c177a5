"""shipit's own image (the root Dockerfile and shipit.yml), built by shipit itself.

The test stands where a release does, offline: the base is the local Debian bookworm with
python3 (tests/support/debian_base.py, in a loopback registry, named by SHIPIT_BASE_IMAGE);
dist/image/ holds the binaries scripts/image-inputs would fetch, here this machine's cosign,
Docker CLI and buildx plugin, with their own sha256 given as SHIPIT_*_SHA256 (the Dockerfile
checks them); shipit's wheel built from this checkout; the locked wheels (SHIPIT_WHEELS) and
the .deb files of git, ca-certificates and buildah, since a build here reaches no index.
shipit runs the root shipit.yml unchanged: a wrong sha256 stops the build naming the file;
then the image is built, scanned (a fixture Trivy database with a LOW advisory for git:
reported, not blocking), pushed to SHIPIT_REGISTRY, signed with a key and its SBOM attested,
and run: `shipit --version`, `trivy --version`, `cosign version`, `docker buildx version`,
`git`, `buildah --version`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

import shipit
from tests.support.ci_images import own_project
from tests.support.cli import run_shipit
from tests.support.debian_base import BaseImage, base_image, serve_base
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.services import REPO, Dockerd, RegistryFactory, registry_client, tool_path
from tests.support.services import Registry as RunningRegistry
from tests.support.trivydb import vulnerability, write_trivy_db

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

ADVISORY = "CVE-2099-20002"  # made up: only the fixture database knows it


def test_the_root_spec_is_valid_and_pins_what_downloads_sha256_pins(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_shipit(["validate", "-C", str(REPO)], capsys, {"HOME": "/nonexistent"})
    assert code == 0, err
    # docs/ci.md shows the spec as it is
    assert f"```yaml\n{(REPO / 'shipit.yml').read_text()}```" in (REPO / "docs/ci.md").read_text()
    args = yaml.safe_load((REPO / "shipit.yml").read_text())["image"]["build_args"]
    pins = {
        (tool, asset): value
        for tool, _, asset, value in (
            line.split() for line in (REPO / "requirements/downloads.sha256").read_text().splitlines()
            if line and not line.startswith("#")
        )
    }  # fmt: skip
    assert (
        args["COSIGN_SHA256"]
        == f"${{SHIPIT_COSIGN_SHA256:-{pins['cosign', 'cosign-linux-amd64']}}}"
    )
    buildx = next(v for (t, a), v in pins.items() if t == "buildx" and a.endswith("linux-amd64"))
    assert args["BUILDX_SHA256"] == f"${{SHIPIT_BUILDX_SHA256:-{buildx}}}"


@pytest.fixture(scope="module")
def base() -> BaseImage:
    return base_image("python")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_shipit_builds_scans_signs_and_pushes_its_own_image_which_runs_its_tools(
    tmp_path: Path,
    dockerd: Dockerd,
    base: BaseImage,
    registry_factory: RegistryFactory,
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base_ref = serve_base(base, registry_factory())
    registry: RunningRegistry = registry_factory()
    project, sums = own_project(tmp_path / "shipit", base)
    cache = tmp_path / "trivy-cache"
    [git_deb] = (project / "dist/image/debs").glob("git_*.deb")
    git_version = git_deb.name.split("_")[1].replace("%3a", ":")
    write_trivy_db(
        cache, os_name="debian", os_version="12",
        advisories={"git": {ADVISORY: git_version + "+fixed"}},
        vulnerabilities={ADVISORY: vulnerability("git: a made-up flaw", "LOW")},
    )  # fmt: skip
    env = {
        "PATH": os.pathsep.join(
            [str(Path(tool_path("cosign")).parent), str(Path(tool_path("trivy")).parent),
             os.environ["PATH"]]
        ),
        "HOME": str(tmp_path),
        "DOCKER_HOST": dockerd.host,
        "SHIPIT_REGISTRY": f"{registry.host}/dogfood",
        "SHIPIT_BASE_IMAGE": base_ref,
        "SHIPIT_WHEELS": "/tmp/inputs/wheels",
        "COSIGN_KEY": str(keys.private),
        "COSIGN_PASSWORD": keys.password,
        "COSIGN_TLOG": "false",
        "TRIVY_CACHE_DIR": str(cache),
        "TRIVY_SKIP_DB_UPDATE": "true",
        **sums,
    }  # fmt: skip
    report = tmp_path / "report.json"
    run = ["run", "-C", str(project), "--report", str(report)]

    # a binary that is not the one pinned: the build stops at its check, naming it
    code, _, err = run_shipit(run, capsys, {**env, "SHIPIT_COSIGN_SHA256": "0" * 64})
    assert code == 1, err
    assert "/tmp/inputs/cosign: FAILED" in err
    assert json.loads(report.read_text())["images"][0]["digest"] is None
    assert registry_client(registry).tags("dogfood/shipit") == []

    code, _, err = run_shipit(run, capsys, env)
    assert code == 0, err
    [image] = json.loads(report.read_text())["images"]
    digest = image["digest"]
    assert all(r["pushed"] and r["signed"] and r["digest"] == digest for r in image["refs"])
    assert image["scan"]["blocked"] is False
    # the advisory is matched by git's source package in `debian 12`: two binary packages are
    # built from it and installed (git, git-man), so two findings, LOW: below the gate
    counts = {"CRITICAL": 0, "HIGH": 0, "MEDIUM": 0, "LOW": 2, "UNKNOWN": 0}
    assert image["scan"]["counts"] == counts, err
    ref = f"{registry.host}/dogfood/shipit@{digest}"
    verified = subprocess.run(
        [tool_path("cosign"), "verify", "--key", str(keys.public), "--insecure-ignore-tlog",
         "--allow-http-registry", "--allow-insecure-registry", ref],
        capture_output=True, text=True, timeout=120, check=False, env={**env, "COSIGN_KEY": ""},
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr

    try:
        outputs = {}
        for argv in (
            ["shipit", "--version"],
            ["trivy", "--version"],
            ["cosign", "version"],
            ["docker", "buildx", "version"],
            ["git", "--version"],
            ["buildah", "--version"],
        ):
            done = docker("run", "--rm", ref, *argv)
            assert done.returncode == 0, f"{argv}: {done.stderr}"
            outputs[argv[0]] = done.stdout + done.stderr
        assert f"shipit, version {shipit.__version__}" in outputs["shipit"]
        assert "Version: 0.76." in outputs["trivy"]
        assert "GitVersion" in outputs["cosign"]
        assert "github.com/docker/buildx" in outputs["docker"]
        assert outputs["git"].startswith("git version 2.")
        assert outputs["buildah"].startswith("buildah version 1.")
    finally:
        docker("image", "rm", ref)
