"""Multi-platform images for real, on both daemons: bookworm's dockerd 20.10 (classic image
store: buildx `--load`s one platform at a time) and sid's dockerd 28 on the containerd image
store (buildx writes one OCI layout), with QEMU running the arm64 steps, three registries
(plain, TLS with a private CA, htpasswd), real Trivy and real cosign."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipit.registry import Manifest, Registry
from tests.support.buildkit import busybox, busybox_context, docker_at
from tests.support.cli import run_shipit
from tests.support.gitrepo import git
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.project import make_project
from tests.support.services import Dockerd, RegistryFactory, registry_client, tool_path
from tests.support.services import Registry as RunningRegistry

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

SECRET = "tok-" + os.urandom(12).hex()  # the build secret; must be in no blob, log or report
TOOLS_PATH = os.pathsep.join(
    [str(Path(tool_path("cosign")).parent), str(Path(tool_path("trivy")).parent)]
)
# Split so that no secret scanner flags this repository; Trivy sees the joined values.
AWS_FILE = (
    "AWS_ACCESS_KEY_ID=AKIA"
    + "2E0A8F3B244C9986\nAWS_SECRET_ACCESS_KEY=Jz8bNq3Vx7Lk2Pw9Rt5Y"
    + "m1Hc6Df4Gs0AeUi8OoTb\n"
)
BUILDKIT_STEPS = (
    "RUN uname -m > /arch",
    "RUN --mount=type=cache,target=/cache echo warm >> /cache/runs && cp /cache/runs /cacheruns",
    "RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /toklen",
)
# a shape the classic builder (engine: sdk) builds for both platforms as it is written; the
# ones it needs shipit's help for (an ARG before a FROM scratch stage's first file step, a FROM
# image) are test_sdk_platforms.py's
SDK_DOCKERFILE = """\
FROM scratch
COPY busybox-amd64 busybox-arm64 /bin/
ARG TARGETARCH
RUN ["/bin/busybox-amd64", "sh", "-c", "/bin/busybox-amd64 cp /bin/busybox-$TARGETARCH \
/bin/busybox && /bin/busybox rm /bin/busybox-amd64 /bin/busybox-arm64 && /bin/busybox --install -s /bin"]
RUN uname -m > /arch
"""
UNAME = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}


@pytest.fixture(params=["classic", "containerd"])
def daemon(request: pytest.FixtureRequest, dockerd: Dockerd, qemu_arm64: Any) -> str:
    """The DOCKER_HOST of one of the two daemons; every test here runs on both."""
    if request.param == "classic":
        return dockerd.host
    return str(request.getfixturevalue("dockerd_containerd").host)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def three(registry_factory: RegistryFactory) -> tuple[RunningRegistry, ...]:
    """A plain registry, a TLS one with a private CA, and one with htpasswd auth."""
    return (
        registry_factory(),
        registry_factory(tls=True),
        registry_factory(auth=("shipit", "pw-" + os.urandom(8).hex())),
    )


def client(reg: RunningRegistry) -> Registry:
    return registry_client(reg)


def registries_yaml(regs: tuple[RunningRegistry, ...], namespace: str) -> str:
    plain, tls, auth = regs
    return (
        "registries:\n"
        f"  - {plain.host}/{namespace}\n"
        f"  - {{url: {tls.host}/{namespace}, ca_file: {tls.ca_file}}}\n"
        f"  - {{url: {auth.host}/{namespace}, username: shipit, password_env: AUTH_PASSWORD}}\n"
    )


def env_for(
    host: str, home: Path, regs: tuple[RunningRegistry, ...], **extra: str
) -> dict[str, str]:
    return {
        "PATH": f"{TOOLS_PATH}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "DOCKER_HOST": host,
        "AUTH_PASSWORD": regs[2].password or "",
        **extra,
    }


def buildkit_project(
    root: Path, spec: str, steps: tuple[str, ...] = BUILDKIT_STEPS, **files: str
) -> Path:
    """A committed project whose Dockerfile takes busybox-$TARGETARCH and runs `steps`."""
    context = busybox_context(root / "ctx", steps=steps)
    return with_busybox(
        make_project(
            root / "project",
            spec,
            dockerfile=(context / "Dockerfile").read_text(),
            files=dict(files),
        )
    )


def with_busybox(project: Path) -> Path:
    """The static busybox of each CPU, executable, committed into `project`."""
    for arch in ("amd64", "arm64"):
        shutil.copy2(busybox(arch), project / f"busybox-{arch}")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "busybox for each CPU")
    return project


def blobs_of(reg: Registry, repository: str, manifest: Manifest) -> Iterator[tuple[str, bytes]]:
    """(digest, bytes) of every blob under a manifest or index, from the registry."""
    for child in manifest.children():
        yield from blobs_of(reg, repository, reg.manifest(repository, child.digest))
    for blob in manifest.blobs():
        with reg._open_blob(repository, blob) as response:
            yield blob.digest, response.content


def layer_files(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def file_in_image(reg: Registry, repository: str, digest: str, name: str) -> bytes | None:
    found = None
    for _, data in blobs_of(reg, repository, reg.manifest(repository, digest)):
        if data[:2] == b"\x1f\x8b":
            found = layer_files(data).get(name, found)
    return found


def test_a_buildkit_image_for_two_platforms_goes_to_three_registries_with_one_digest(
    tmp_path: Path,
    daemon: str,
    three: tuple[RunningRegistry, ...],
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"bk{os.urandom(3).hex()}"
    spec = f"""\
version: 1
{registries_yaml(three, namespace)}image:
  name: app
  engine: buildx
  platforms: [linux/amd64, linux/arm64]
  secrets: {{tok: {{env: TOK}}}}
scan: {{scanners: [secret]}}
sign: {{key: {keys.private}, tlog: false}}
"""
    project = buildkit_project(tmp_path, spec)
    report = tmp_path / "report.json"
    env = env_for(daemon, tmp_path, three, TOK=SECRET, COSIGN_PASSWORD=keys.password)
    code, out, err = run_shipit(
        ["run", "-C", str(project), "--report", str(report), "-v"], capsys, env
    )
    assert code == 0, err
    document = json.loads(report.read_text())
    [image] = document["images"]
    index_digest = image["digest"]
    platforms = {p["platform"]: p["digest"] for p in image["platforms"]}
    assert sorted(platforms) == ["linux/amd64", "linux/arm64"]
    assert all(r["pushed"] and r["signed"] and r["digest"] == index_digest for r in image["refs"])
    repository = f"{namespace}/app"
    for reg in three:
        registry = client(reg)
        for tag in image["tags"]:
            assert registry.manifest(repository, tag).digest == index_digest  # one digest
        index = registry.manifest(repository, index_digest)
        assert index.is_index
        children = {c.platform: c.digest for c in index.children()}
        assert children == platforms  # no unknown/unknown attestation entries
        for platform, digest in platforms.items():
            assert (
                file_in_image(registry, repository, digest, "arch")
                == f"{UNAME[platform]}\n".encode()
            )
            assert (
                file_in_image(registry, repository, digest, "toklen") == f"{len(SECRET)}\n".encode()
            )
            assert file_in_image(registry, repository, digest, "cacheruns") is not None
        for digest, data in blobs_of(registry, repository, index):
            plain = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            assert SECRET.encode() not in data + plain, f"the build secret is in blob {digest}"
    assert SECRET not in out + err + report.read_text()
    # every digest verifies, in every registry: the index and each platform's manifest
    code, vout, verr = run_shipit(
        ["verify", "-C", str(project), "--report", str(report), "--key", str(keys.public)],
        capsys,
        env,
    )
    assert code == 0, verr
    verified = [line.split()[-1] for line in vout.splitlines() if line.startswith("verified")]
    assert len(verified) == 3 * 3
    assert {ref.rpartition("@")[2] for ref in verified} == {index_digest, *platforms.values()}
    # pulled by tag for each platform, each runs as its own CPU
    tag = f"{three[0].host}/{repository}:{image['tags'][0]}"
    for platform, uname in UNAME.items():
        pulled = docker_at(daemon, "pull", "--platform", platform, tag)
        assert pulled.returncode == 0, pulled.stderr
        ran = docker_at(daemon, "run", "--rm", "--platform", platform, tag, "cat", "/arch")
        assert ran.stdout.strip() == uname, ran.stderr
        docker_at(daemon, "rmi", "-f", "--no-prune", tag)


def test_a_secret_planted_in_one_platform_blocks_the_release_and_names_it(
    tmp_path: Path,
    daemon: str,
    three: tuple[RunningRegistry, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"bl{os.urandom(3).hex()}"
    spec = f"""\
version: 1
{registries_yaml(three, namespace)}image:
  name: app
  engine: buildx
  platforms: [linux/amd64, linux/arm64]
scan: {{scanners: [secret], fail_on: HIGH}}
"""
    project = buildkit_project(
        tmp_path,
        spec,
        steps=("COPY creds-${TARGETARCH} /etc/creds",),
        **{"creds-amd64": "nothing here\n", "creds-arm64": AWS_FILE},
    )
    report = tmp_path / "report.json"
    env = env_for(daemon, tmp_path, three)
    code, _, err = run_shipit(["run", "-C", str(project), "--report", str(report)], capsys, env)
    assert code == 3, err
    assert "in linux/arm64" in err and "aws-access-key-id" in err
    document = json.loads(report.read_text())
    assert document["status"] == "blocked"
    scan = document["images"][0]["scan"]
    assert scan["blocked"] and scan["platforms"]["linux/amd64"]["blocked"] is False
    assert {f["platform"] for f in scan["blocking"]} == {"linux/arm64"}
    for reg in three:
        assert client(reg).tags(f"{namespace}/app") == []  # nothing anywhere


def test_the_sdk_engine_builds_each_platform_through_docker_py(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    daemon: str,
    three: tuple[RunningRegistry, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"sdk{os.urandom(3).hex()}"
    spec = f"""\
version: 1
{registries_yaml(three, namespace)}image:
  name: app
  engine: sdk
  platforms: [linux/amd64, linux/arm64]
"""
    project = with_busybox(make_project(tmp_path / "project", spec, dockerfile=SDK_DOCKERFILE))
    report = tmp_path / "report.json"
    code, _, err = run_shipit(
        ["run", "-C", str(project), "--report", str(report)],
        capsys,
        env_for(daemon, tmp_path, three),
    )
    assert code == 0, err
    assert "with buildx" not in err
    if request.node.callspec.params["daemon"] == "containerd":
        # the daemon's BuildKit, through the same API (`/build?version=2`)
        assert "Step 1/" not in err and re.search(r"^\[[^\]]*1/\d\] COPY ", err, re.M), err
    else:
        assert "Step 1/" in err  # the classic builder
    [image] = json.loads(report.read_text())["images"]
    registry = client(three[1])
    index = registry.manifest(f"{namespace}/app", image["digest"])
    for child in index.children():
        assert child.platform is not None
        arch = file_in_image(registry, f"{namespace}/app", child.digest, "arch")
        assert arch == f"{UNAME[child.platform]}\n".encode()
