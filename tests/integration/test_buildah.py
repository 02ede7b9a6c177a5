"""`engine: buildah` for real, with no Docker daemon anywhere (DOCKER_HOST points at nothing):
bookworm's buildah 1.28 builds into storage of the test's own, each platform goes into an
OCI layout, Trivy reads it, shipit's client pushes it to two registries (plain HTTP and TLS
with a private CA), cosign signs and verifies; qemu runs the arm64 steps and podman runs
what was pushed, each platform as its own CPU."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_multiplatform import (
    UNAME,
    blobs_of,
    file_in_image,
    with_busybox,
)
from tests.support.buildkit import busybox_context
from tests.support.cli import run_shipit
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.project import make_project
from tests.support.services import Registry as RunningRegistry
from tests.support.services import RegistryFactory, registry_client, tool_path

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

NO_DAEMON = "unix:///nonexistent.sock"  # no Docker daemon: any use of one fails the run
SECRET = "tok-" + os.urandom(12).hex()  # the build secret; must be in no blob, log or report
TOOLS_PATH = os.pathsep.join(
    [str(Path(tool_path("cosign")).parent), str(Path(tool_path("trivy")).parent)]
)
# podman run fails on this machine's rlimits without these (TOOLCHAIN.md); builds do not
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")


class Storage:
    """containers-storage of the test's own (CONTAINERS_STORAGE_CONF), for buildah and podman."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "storage.conf"
        root.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "graph"}"\n'
            f'runroot = "{root / "run"}"\n',
            encoding="utf-8",
        )

    def env(self) -> dict[str, str]:
        return {"CONTAINERS_STORAGE_CONF": str(self.conf)}

    def tool(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            env={**os.environ, **self.env(), "DOCKER_HOST": NO_DAEMON},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        # a tmpdir and an events log of its own: nothing of the machine's podman state
        return self.tool(
            "podman", "--tmpdir", str(self.root / "podman-tmp"), "--events-backend", "file", *args
        )

    def remove(self) -> None:
        """Everything gone: containers, images, then any overlay mount left under the folder
        (podman can leave one behind, TOOLCHAIN.md), then the folder."""
        self.podman("rm", "--all", "--force")
        self.tool("buildah", "rm", "--all")
        self.tool("buildah", "rmi", "--all", "--force")
        for mount in reversed(mounts_under(self.root)):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        assert not self.root.exists(), f"{self.root} could not be removed"


def mounts_under(folder: Path) -> list[str]:
    """The mount points below `folder`, outermost first (/proc/self/mountinfo, field 5)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if Path(point).is_relative_to(folder):
            found.append(point)
    return sorted(found, key=len)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    made = Storage(tmp_path / "containers")
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def two(registry_factory: RegistryFactory) -> tuple[RunningRegistry, RunningRegistry]:
    """A plain registry and a TLS one with a private CA."""
    return registry_factory(), registry_factory(tls=True)


def registries_yaml(regs: tuple[RunningRegistry, RunningRegistry], namespace: str) -> str:
    plain, tls = regs
    return (
        "registries:\n"
        f"  - {plain.host}/{namespace}\n"
        f"  - {{url: {tls.host}/{namespace}, ca_file: {tls.ca_file}}}\n"
    )


def env_for(home: Path, storage: Storage, **extra: str) -> dict[str, str]:
    return {
        "PATH": f"{TOOLS_PATH}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "DOCKER_HOST": NO_DAEMON,
        **storage.env(),
        **extra,
    }


def buildah_project(root: Path, spec: str, steps: tuple[str, ...]) -> Path:
    context = busybox_context(root / "ctx", steps=steps)
    dockerfile = (context / "Dockerfile").read_text()
    return with_busybox(make_project(root / "project", spec, dockerfile=dockerfile))


def test_buildah_builds_two_platforms_with_no_daemon_and_they_reach_two_registries_signed(
    tmp_path: Path,
    storage: Storage,
    two: tuple[RunningRegistry, RunningRegistry],
    keys: KeyPair,
    qemu_arm64: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"ba{os.urandom(3).hex()}"
    spec = f"""\
version: 1
{registries_yaml(two, namespace)}image:
  name: app
  engine: buildah
  platforms: [linux/amd64, linux/arm64]
  build_args: {{GREETING: hello}}
  labels: {{org.example.team: payments}}
  secrets: {{tok: {{env: TOK}}}}
scan: {{scanners: [secret]}}
sign: {{key: {keys.private}, tlog: false}}
"""
    project = buildah_project(
        tmp_path,
        spec,
        (
            "ARG GREETING",
            "RUN uname -m > /arch && echo $GREETING > /greeting",
            "RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /toklen",
            'HEALTHCHECK --interval=5s CMD ["/bin/true"]',
        ),
    )
    report = tmp_path / "report.json"
    env = env_for(tmp_path, storage, TOK=SECRET, COSIGN_PASSWORD=keys.password)
    code, out, err = run_shipit(
        ["run", "-C", str(project), "--report", str(report), "-v"], capsys, env
    )
    assert code == 0, err
    assert "with buildah for linux/arm64" in err and "STEP 1/" in err
    document = json.loads(report.read_text())
    [image] = document["images"]
    index_digest = image["digest"]
    platforms = {p["platform"]: p["digest"] for p in image["platforms"]}
    assert sorted(platforms) == ["linux/amd64", "linux/arm64"]
    assert image["scan"]["blocked"] is False
    assert all(r["pushed"] and r["signed"] and r["digest"] == index_digest for r in image["refs"])
    repository = f"{namespace}/app"
    for reg in two:
        registry = registry_client(reg)
        for tag in image["tags"]:
            assert registry.manifest(repository, tag).digest == index_digest  # one digest
        index = registry.manifest(repository, index_digest)
        assert {c.platform: c.digest for c in index.children()} == platforms
        for platform, digest in platforms.items():
            arch = file_in_image(registry, repository, digest, "arch")
            assert arch == f"{UNAME[platform]}\n".encode()
            assert file_in_image(registry, repository, digest, "greeting") == b"hello\n"
            toklen = file_in_image(registry, repository, digest, "toklen")
            assert toklen == f"{len(SECRET)}\n".encode()
            manifest = registry.manifest(repository, digest)
            blobs = dict(blobs_of(registry, repository, manifest))
            config = json.loads(blobs[manifest.blobs()[0].digest])
            assert config["config"]["Labels"]["org.example.team"] == "payments"
            # Docker's format, as docker build makes it: HEALTHCHECK kept (OCI's has no place)
            assert manifest.media_type == "application/vnd.docker.distribution.manifest.v2+json"
            assert config["config"]["Healthcheck"]["Test"] == ["CMD", "/bin/true"]
        for digest, data in blobs_of(registry, repository, index):
            plain = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            assert SECRET.encode() not in data + plain, f"the build secret is in blob {digest}"
    assert SECRET not in out + err + report.read_text()
    # every digest verifies in both registries: the index and each platform's manifest
    code, vout, verr = run_shipit(
        ["verify", "-C", str(project), "--report", str(report), "--key", str(keys.public)],
        capsys,
        env,
    )
    assert code == 0, verr
    verified = [line.split()[-1] for line in vout.splitlines() if line.startswith("verified")]
    assert {ref.rpartition("@")[2] for ref in verified} == {index_digest, *platforms.values()}
    assert len(verified) == 2 * 3
    # pulled by tag for each platform, each runs as its own CPU (podman, no daemon)
    tag = f"{two[0].host}/{repository}:{image['tags'][0]}"
    for platform, uname in UNAME.items():
        pulled = storage.podman("pull", "--tls-verify=false", "--platform", platform, tag)
        assert pulled.returncode == 0, pulled.stderr
        ran = storage.podman(
            "run", "--rm", "--network", "none", *ULIMITS, "--platform", platform, tag, "uname", "-m"
        )
        assert ran.stdout.strip() == uname, ran.stderr
        storage.podman("rmi", "--force", tag)


def test_a_failing_step_is_named_and_nothing_is_pushed(
    tmp_path: Path,
    storage: Storage,
    two: tuple[RunningRegistry, RunningRegistry],
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace = f"bf{os.urandom(3).hex()}"
    spec = f"version: 1\n{registries_yaml(two, namespace)}image: {{name: app, engine: buildah}}\n"
    project = buildah_project(tmp_path, spec, ("RUN echo fine > /fine", "RUN exit 3"))
    report = tmp_path / "report.json"
    code, _, err = run_shipit(
        ["run", "-C", str(project), "--report", str(report)], capsys, env_for(tmp_path, storage)
    )
    assert code == 1, err
    assert "image app: step RUN exit 3 failed:" in err, err
    assert json.loads(report.read_text())["status"] == "failed"
    for reg in two:
        assert registry_client(reg).tags(f"{namespace}/app") == []


def test_a_registry_cache_written_by_one_run_answers_the_next_one_on_fresh_storage(
    tmp_path: Path,
    two: tuple[RunningRegistry, RunningRegistry],
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain = two[0]
    namespace = f"bc{os.urandom(3).hex()}"
    cache = f"{plain.host}/{namespace}/cache"
    # plain HTTP for buildah's own pulls and pushes of the cache: a registries.conf of the
    # test's own (containers-registries.conf(5), CONTAINERS_REGISTRIES_CONF)
    registries_conf = tmp_path / "registries.conf"
    registries_conf.write_text(
        f'[[registry]]\nlocation = "{plain.host}"\ninsecure = true\n', encoding="utf-8"
    )
    spec = f"""\
version: 1
registries: [{plain.host}/{namespace}]
image:
  name: app
  engine: buildah
  cache_from: [type=registry,ref={cache}]
  cache_to: [{cache}]
"""
    # a step whose output differs on every run unless the cache answers it; no ARG before the
    # first COPY: buildah 1.28 never finds such a stage's steps in a registry cache (checked)
    dockerfile = (
        "FROM scratch\nCOPY busybox-amd64 /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        "RUN head -c 16 /dev/urandom | od -x > /nonce\n"
    )
    project = with_busybox(make_project(tmp_path / "project", spec, dockerfile=dockerfile))
    nonces = []
    for attempt in ("first", "second"):
        storage = Storage(tmp_path / f"containers-{attempt}")
        try:
            report = tmp_path / f"{attempt}.json"
            env = env_for(tmp_path, storage, CONTAINERS_REGISTRIES_CONF=str(registries_conf))
            code, _, err = run_shipit(
                ["run", "-C", str(project), "--report", str(report), "-v"], capsys, env
            )
        finally:
            storage.remove()
        assert code == 0, err
        if attempt == "second":
            assert "Cache pulled from remote" in err, err
        [image] = json.loads(report.read_text())["images"]
        registry = registry_client(plain)
        nonces.append(file_in_image(registry, f"{namespace}/app", image["digest"], "nonce"))
    assert nonces[0] is not None and nonces[0] == nonces[1]


def test_an_image_built_again_is_written_into_its_layout_from_the_cache_not_pushed_again(
    tmp_path: Path,
    storage: Storage,
    two: tuple[RunningRegistry, RunningRegistry],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`buildah push` into a layout writes (and compresses) every layer again, whatever the
    layout holds: an image id the export cache kept is written from the cache instead, its
    layers hashed again; a kept layer that no longer holds is pushed by buildah again."""
    plain = two[0]
    namespace = f"bl{os.urandom(3).hex()}"
    spec = f"version: 1\nregistries: [{plain.host}/{namespace}]\nimage: {{name: app, engine: buildah}}\n"
    project = make_project(
        tmp_path / "project",
        spec,
        dockerfile="FROM scratch\nCOPY payload /payload\n",
        files={"payload": os.urandom(2 * 1024 * 1024)},
    )
    cache = tmp_path / "cache"
    env = env_for(tmp_path, storage, SHIPIT_CACHE_DIR=str(cache))
    not_again = "was written into a layout before and is kept: not pushed into one again"

    def run() -> tuple[str, str]:
        report = tmp_path / "report.json"
        code, _, err = run_shipit(
            ["run", "-C", str(project), "--skip", "scan", "--report", str(report), "-v"],
            capsys,
            env,
        )
        assert code == 0, err
        return json.loads(report.read_text())["images"][0]["digest"], err

    first, err = run()
    assert not_again not in err
    second, err = run()
    assert not_again in err
    assert second == first
    [record] = (cache / "layouts").glob("*.json")
    [layer] = json.loads(record.read_text())["layers"]
    blob = cache / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")
    blob.write_bytes(b"\0" * blob.stat().st_size)  # damaged, the same size
    third, err = run()
    assert not_again not in err  # buildah pushed it into the layout again
    assert third == first
    assert registry_client(plain).manifest(f"{namespace}/app", first).digest == first
