"""Distributed builds for real (DESIGN section 9): each platform built by its own `shipit run
--leg` process, on its own daemon (the amd64 leg on bookworm's dockerd 20.10, the arm64 leg
on sid's dockerd 28 with the containerd store, through QEMU), then `shipit merge` in a
third process with no Docker daemon at all: one index digest in three registries (plain,
TLS with a private CA, htpasswd), the index and each platform signed with cosign, the tags
last. A merge with a leg missing, twice, or of another commit, fails and tags nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_multiplatform import (
    buildkit_project,
    client,
    env_for,
    file_in_image,
    registries_yaml,
    with_busybox,
)
from tests.support.gitrepo import git
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.project import make_project
from tests.support.services import REPO, Dockerd, RegistryFactory
from tests.support.services import Registry as RunningRegistry

pytestmark = [pytest.mark.timeout(1200), pytest.mark.slow]

PROCESS_TIMEOUT = 600
UNAME = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
STEPS = ("RUN uname -m > /arch",)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def three(registry_factory: RegistryFactory) -> tuple[RunningRegistry, ...]:
    return (
        registry_factory(),
        registry_factory(tls=True),
        registry_factory(auth=("shipit", "pw-" + os.urandom(8).hex())),
    )


def shipit(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m shipit ARGS` in a process of its own, with exactly `env`."""
    return subprocess.run(
        [sys.executable, "-m", "shipit", *args],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


def all_tags(regs: tuple[RunningRegistry, ...], repository: str) -> list[list[str]]:
    return [sorted(client(reg).tags(repository)) for reg in regs]


def leg_spec(regs: tuple[RunningRegistry, ...], namespace: str, keys: KeyPair, **more: str) -> str:
    extra = "".join(f"  {k}: {v}\n" for k, v in more.items())
    return f"""\
version: 1
{registries_yaml(regs, namespace)}image:
  name: app
  platforms: [linux/amd64, linux/arm64]
{extra}scan: {{scanners: [secret]}}
sign: {{key: {keys.private}, tlog: false}}
"""


def test_two_legs_on_two_daemons_then_one_merge(
    tmp_path: Path,
    dockerd: Dockerd,
    dockerd_containerd: Any,
    qemu_arm64: Any,
    three: tuple[RunningRegistry, ...],
    keys: KeyPair,
) -> None:
    namespace = f"legs{os.urandom(3).hex()}"
    repository = f"{namespace}/app"
    project = buildkit_project(
        tmp_path, leg_spec(three, namespace, keys, engine="buildx"), steps=STEPS
    )
    base = env_for(dockerd.host, tmp_path, three, COSIGN_PASSWORD=keys.password)
    hosts = {"linux/amd64": dockerd.host, "linux/arm64": dockerd_containerd.host}
    legs = {}
    for platform, host in hosts.items():
        leg_file = tmp_path / "legs" / f"{platform.replace('/', '-')}.json"
        done = shipit(
            ["run", "-C", str(project), "--leg", "--platform", platform, "--report", str(leg_file)],
            {**base, "DOCKER_HOST": host},
        )
        assert done.returncode == 0, done.stderr
        assert "with buildx for " + platform in done.stderr
        legs[platform] = json.loads(leg_file.read_text())
    sha = git(project, "rev-parse", "HEAD")
    for platform, leg in legs.items():
        assert leg["schema"] == 1 and leg["kind"] == "shipit-leg" and leg["status"] == "success"
        assert (leg["image"], leg["platform"], leg["commit"]) == ("app", platform, sha)
        assert leg["media_type"] == "application/vnd.oci.image.manifest.v1+json"
        assert len(leg["registries"]) == 3
        assert {r["digest"] for r in leg["registries"]} == {leg["digest"]}
        assert leg["scan"]["blocked"] is False
    assert legs["linux/amd64"]["digest"] != legs["linux/arm64"]["digest"]
    # a leg tags nothing and signs nothing: no tag (no .sig tag either) anywhere
    assert all_tags(three, repository) == [[], [], []]
    for reg in three:
        for leg in legs.values():
            assert client(reg).has_manifest(repository, leg["digest"])

    # the merge needs no Docker daemon at all
    merge_env = {**base, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    amd64, arm64 = (tmp_path / "legs" / f"linux-{a}.json" for a in ("amd64", "arm64"))

    # one leg missing: exit 1, named, nothing tagged
    report = tmp_path / "merge.json"
    done = shipit(["merge", "-C", str(project), str(amd64), "--report", str(report)], merge_env)
    assert done.returncode == 1, done.stderr
    assert "image app: no leg for linux/arm64" in done.stderr
    assert "nothing was tagged" in done.stderr
    assert json.loads(report.read_text())["status"] == "failed"
    assert all_tags(three, repository) == [[], [], []]

    # a leg given twice: exit 1, both named
    copy = tmp_path / "copy-of-amd64.json"
    shutil.copy(amd64, copy)
    done = shipit(["merge", "-C", str(project), str(amd64), str(arm64), str(copy)], merge_env)
    assert done.returncode == 1, done.stderr
    assert f"image app linux/amd64 has two legs: {amd64} and {copy}" in done.stderr
    assert all_tags(three, repository) == [[], [], []]

    # the folder of both legs: merged, signed, tagged
    done = shipit(
        ["merge", "-C", str(project), str(tmp_path / "legs"), "--report", str(report)], merge_env
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(report.read_text())
    assert document["status"] == "success"
    [image] = document["images"]
    index_digest = image["digest"]
    platforms = {p["platform"]: p["digest"] for p in image["platforms"]}
    assert platforms == {p: leg["digest"] for p, leg in legs.items()}
    assert set(image["scan"]["platforms"]) == set(platforms)  # the legs' scans, per platform
    assert all(r["pushed"] and r["signed"] and r["digest"] == index_digest for r in image["refs"])
    for entry in image["registries"]:
        assert {m["digest"] for m in entry["manifests"]} == {index_digest, *platforms.values()}
        assert all(m["signed"] for m in entry["manifests"])
    for reg in three:
        registry = client(reg)
        for tag in image["tags"]:
            assert registry.manifest(repository, tag).digest == index_digest
        index = registry.manifest(repository, index_digest)
        assert {c.platform: c.digest for c in index.children()} == platforms
        for platform, digest in platforms.items():
            arch = file_in_image(registry, repository, digest, "arch")
            assert arch == f"{UNAME[platform]}\n".encode()
    done = shipit(
        ["verify", "-C", str(project), "--report", str(report), "--key", str(keys.public)],
        merge_env,
    )
    assert done.returncode == 0, done.stderr
    verified = [line.split()[-1] for line in done.stdout.splitlines() if "verified" in line]
    assert len(verified) == 3 * 3  # the index and both platforms, in each registry
    tags_after = all_tags(three, repository)
    held = {reg.host: client(reg).manifest(repository, image["tags"][0]).digest for reg in three}
    print(f"merge: index {index_digest} over {json.dumps(platforms)}; by tag in each: {held}")

    # a new commit: the legs are of another commit now, and refused
    (project / "NOTES").write_text("a later commit\n")
    git(project, "add", "NOTES")
    git(project, "commit", "-q", "-m", "later")
    done = shipit(["merge", "-C", str(project), str(tmp_path / "legs")], merge_env)
    assert done.returncode == 1, done.stderr
    assert f"{amd64} was built from commit {sha[:12]}, not" in done.stderr
    # a leg document edited to claim the new commit: the image's own label gives it away
    forged = tmp_path / "forged"
    forged.mkdir()
    new_sha = git(project, "rev-parse", "HEAD")
    for path in (amd64, arm64):
        leg = json.loads(path.read_text())
        leg["commit"] = new_sha
        leg["version"] = json.loads(
            shipit(["version", "-C", str(project), "--json"], merge_env).stdout
        )["version"]
        (forged / path.name).write_text(json.dumps(leg))
    done = shipit(["merge", "-C", str(project), str(forged)], merge_env)
    assert done.returncode == 1, done.stderr
    assert f"was built from {sha}, not {new_sha} (this commit)" in done.stderr
    assert all_tags(three, repository) == tags_after  # nothing moved, nothing added


def test_legs_recorded_in_the_registries_merge_without_files(
    tmp_path: Path,
    dockerd: Dockerd,
    qemu_arm64: Any,
    three: tuple[RunningRegistry, ...],
    keys: KeyPair,
) -> None:
    """The sdk engine's legs (OCI manifests exported from the daemon), recorded with
    --leg-record; `shipit merge` with no files finds them for this commit."""
    from tests.integration.test_multiplatform import SDK_DOCKERFILE

    namespace = f"rec{os.urandom(3).hex()}"
    repository = f"{namespace}/app"
    project = with_busybox(
        make_project(
            tmp_path / "project", leg_spec(three, namespace, keys), dockerfile=SDK_DOCKERFILE
        )
    )
    env = env_for(dockerd.host, tmp_path, three, COSIGN_PASSWORD=keys.password)
    digests = {}
    for platform in UNAME:
        done = shipit(
            ["run", "-C", str(project), "--leg", "--platform", platform, "--leg-record"], env
        )
        assert done.returncode == 0, done.stderr
        digests[platform] = json.loads((project / "shipit-report.json").read_text())["digest"]
    sha = git(project, "rev-parse", "HEAD")
    for tags in all_tags(three, repository):  # only the two records, no image tag
        assert len(tags) == 2 and all(t.startswith(f"shipit-leg-{sha[:12]}-linux-") for t in tags)
    # no leg file anywhere: the merge reads the records
    (project / "shipit-report.json").unlink()
    done = shipit(["merge", "-C", str(project), "--json"], env)
    assert done.returncode == 0, done.stderr
    assert "(recorded in " in done.stderr
    [image] = json.loads(done.stdout)["images"]
    assert {p["platform"]: p["digest"] for p in image["platforms"]} == digests
    for reg in three:
        registry = client(reg)
        index = registry.manifest(repository, image["digest"])
        assert {c.platform: c.digest for c in index.children()} == digests
        for tag in image["tags"]:
            assert registry.manifest(repository, tag).digest == image["digest"]
        for platform, digest in digests.items():
            arch = file_in_image(registry, repository, digest, "arch")
            assert arch == f"{UNAME[platform]}\n".encode()
