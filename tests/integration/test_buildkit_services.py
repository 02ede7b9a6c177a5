"""The BuildKit test infrastructure works: both daemons, buildx, arm64 emulation, OCI layouts.

Facts recorded here were seen with buildx 0.29.1 (Debian sid), dockerd 28.5.2 + containerd
2.1.9 (sid, containerd image store) and dockerd 20.10.24 (bookworm, classic store), on this
machine, offline; each test below checks the ones shipit will rely on.

``--metadata-file`` (buildx docs: "Write build result metadata to a file"), as written:
  * dockerd 28, ``--output type=oci`` of two platforms: {"buildx.build.ref": "default/default/ID",
    "containerimage.descriptor": {mediaType: OCI index, digest, size, annotations:
    {"org.opencontainers.image.created": ...}}, "containerimage.digest": the index's digest}
  * dockerd 28, one platform: the same plus "containerimage.config.digest" and
    "buildx.build.provenance" (the SLSA v0.2 predicate in min mode: buildType, invocation;
    BUILDX_METADATA_PROVENANCE=disabled drops it, whatever --provenance says); the
    descriptor is the image manifest itself, with its "platform"
  * dockerd 28, ``--load -t NAME``: descriptor and digest of the index that was loaded (no
    annotations) and "image.name": "docker.io/NAME"; single-platform --load stores an index too
    (the manifest and a provenance attestation), unlike single-platform --output type=oci
  * dockerd 20.10: only "buildx.build.ref" and "containerimage.digest", which is the image ID
    (the config's digest), as `docker image inspect --format {{.Id}}` says

The OCI layout (``--output type=oci,tar=false,dest=DIR``): oci-layout, index.json with ONE
descriptor of a nested image index (annotation org.opencontainers.image.ref.name "latest"
when no -t is given), blobs/sha256/*. The nested index lists one image manifest per platform
(application/vnd.oci.image.manifest.v1+json, layers application/vnd.oci.image.layer.v1.tar+gzip)
and, by default for a multi-platform build, one attestation manifest per platform: platform
unknown/unknown, annotations vnd.docker.reference.type=attestation-manifest and
vnd.docker.reference.digest=the platform manifest, a single in-toto layer (provenance).
``--provenance=false`` (or BUILDX_NO_DEFAULT_ATTESTATIONS=1) leaves them out; ``--sbom=true``
fails offline (it pulls docker/buildkit-syft-scanner from Docker Hub). A single-platform
``--output type=oci`` gets no attestation by default: index.json points at the manifest.

Quirk: a two-platform ``tar=false`` export prints lines like "ERROR: (*service).Write failed:
rpc error: code = Unavailable desc = ref layer-sha256:... locked" (both platforms write the
same blob into the local store at once) and still exits 0 with every blob intact; the
tar export (``type=oci,dest=FILE.tar``) prints none.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import secrets
import signal
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.buildkit import UNAME, Emulation, buildx_plugin, busybox, busybox_context
from tests.support.buildkit import docker_at as docker
from tests.support.dockerd28 import (
    SNAPSHOTTER,
    Dockerd28,
    docker_info,
    driver_type,
    start_dockerd28,
    stop_dockerd28,
)
from tests.support.processes import proc_stats, start_time
from tests.support.services import Dockerd

SECRET_VAR = "SHIPIT_TEST_BUILD_TOKEN"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
STEPS = [
    "RUN uname -m > /arch",  # emulated for arm64
    "RUN --mount=type=cache,target=/cache echo run >> /cache/runs && cp /cache/runs /cache-runs",
    "RUN --mount=type=secret,id=tok test -s /run/secrets/tok && wc -c < /run/secrets/tok > /secret-size",
]


def ok(done: Any) -> str:
    assert done.returncode == 0, f"{done.args} failed ({done.returncode}):\n{done.stderr}"
    return str(done.stdout)


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_context(tmp_path_factory.mktemp("busybox-context"), steps=STEPS)


@pytest.fixture
def secret() -> dict[str, str]:
    """A build secret, passed to buildx by environment (--secret id=tok,env=VAR)."""
    return {SECRET_VAR: secrets.token_hex(16)}


def build(host: str, context: Path, *args: str, secret: dict[str, str]) -> Any:
    """`docker buildx build ARGS CONTEXT` with the secret tok given by environment."""
    argv = ["buildx", "build", "--progress=plain", f"--secret=id=tok,env={SECRET_VAR}"]
    return docker(host, *argv, *args, str(context), env=secret)


# --- reading an OCI layout -----------------------------------------------------------------


def blob(layout: Path, digest: str) -> bytes:
    algo, _, hexdigest = digest.partition(":")
    assert algo == "sha256", digest
    data = (layout / "blobs" / "sha256" / hexdigest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexdigest, f"blob {digest} is corrupt"
    return data


def blob_json(layout: Path, digest: str) -> Any:
    return json.loads(blob(layout, digest))


def image_files(layout: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    """The regular files of an image: its layers applied in order (no whiteouts here)."""
    files: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        assert layer["mediaType"] == GZIP_LAYER, layer
        data = blob(layout, layer["digest"])
        assert data[:2] == b"\x1f\x8b", "a tar+gzip layer that is not gzip"
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member) if member.isfile() else None
                if extracted is not None:
                    files["/" + member.name.removeprefix("./")] = extracted.read()
    return files


def all_bytes(layout: Path) -> bytes:
    """Every blob of the layout, gzip layers uncompressed, to look for a leaked secret."""
    out = []
    for path in (layout / "blobs" / "sha256").iterdir():
        data = path.read_bytes()
        out.append(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    return b"".join(out)


def platforms(index: dict[str, Any]) -> list[str]:
    return sorted(
        f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index["manifests"]
    )


# --- the daemons and the tools ---------------------------------------------------------------


def test_both_daemons_answer_and_only_dockerd28_has_the_containerd_store(
    dockerd: Dockerd, dockerd_containerd: Dockerd28
) -> None:
    d28 = dockerd_containerd
    assert os.environ["DOCKER_HOST"] == dockerd.host != d28.host  # the 28 fixture left it alone
    info28, info20 = docker_info(d28.host), docker_info(dockerd.host)
    assert info28 is not None and info20 is not None
    assert int(str(info28["ServerVersion"]).split(".")[0]) >= 28
    assert info28["Driver"] == "overlayfs"
    assert driver_type(info28) == SNAPSHOTTER
    assert info28["Containerd"] == {
        "Address": str(d28.containerd_address),
        "Namespaces": {"Containers": "moby", "Plugins": "plugins.moby"},
    }
    assert driver_type(info20) is None  # bookworm's 20.10 on the classic store (overlay2)
    for pid, name in [(d28.dockerd_pid, b"dockerd"), (d28.containerd_pid, b"containerd")]:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[0].endswith(b"/" + name)
        assert any(str(d28.workdir).encode() in a for a in argv)


def test_the_buildx_plugin_is_found_with_an_empty_docker_config(
    dockerd_containerd: Dockerd28, tmp_path: Path
) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "docker-config")}
    assert ok(docker(dockerd_containerd.host, "buildx", "version", env=env)).startswith(
        "github.com/docker/buildx "
    )
    fmt = "{{json .ClientInfo.Plugins}}"
    plugins = json.loads(ok(docker(dockerd_containerd.host, "info", "--format", fmt, env=env)))
    found = {p["Name"]: p["Path"] for p in plugins}
    assert found["buildx"] == str(buildx_plugin())


def test_arm64_binaries_run_under_emulation(qemu_arm64: Emulation) -> None:
    assert "F" in qemu_arm64.flags
    assert qemu_arm64.handler.read_text().splitlines()[0] == "enabled"
    for arch in ("amd64", "arm64"):
        done = subprocess.run(
            [busybox(arch), "uname", "-m"], capture_output=True, text=True, timeout=60, check=False
        )
        assert ok(done).strip() == UNAME[arch]


def in_session(sid: int) -> dict[int, str | None]:
    """The processes of session sid (containerd's shims stay in it), with start times."""
    return {p: start_time(p) for p, f in proc_stats().items() if f[3] == str(sid) and p != sid}


@pytest.mark.parametrize("killed", [False, True], ids=["stopped", "dockerd-killed-first"])
def test_stopping_dockerd28_leaves_nothing_behind(
    dockerd_containerd: Dockerd28, tmp_path: Path, killed: bool
) -> None:
    # a daemon of this test's own (the session's stays up), with a container running
    d = start_dockerd28(tmp_path / "d28")
    try:
        ctx = busybox_context(tmp_path / "ctx", arches=["amd64"])
        ok(docker(d.host, "buildx", "build", "--load", "--tag=shipit-test/idle:1", str(ctx)))
        idle = ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]
        ok(docker(d.host, "run", "--detach", "shipit-test/idle:1", *idle))
        shims = in_session(d.containerd_pid)
        assert shims, "no containerd shim in containerd's session"
        if killed:  # what a test session killed mid-way leaves: containers, shims, mounts
            os.kill(d.dockerd_pid, signal.SIGKILL)
    finally:
        stop_dockerd28(d)
    after = proc_stats()
    # gone: no such process, a new one with that PID, or a zombie (this VM's PID 1 is slow to
    # reap the shims it inherits)
    assert all(start_time(p) != t or after[p][0] == "Z" for p, t in shims.items() if p in after)
    assert start_time(d.dockerd_pid) is None and start_time(d.containerd_pid) is None
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(d.workdir) not in mounts
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert f" {d.bridge}:" not in links.stdout
    assert docker_info(d.host) is None
    assert d.bridge != dockerd_containerd.bridge


# --- dockerd 28: the containerd image store ------------------------------------------------

TWO = "--platform=linux/amd64,linux/arm64"


def test_two_platform_oci_layout_with_emulation_cache_and_secret(
    dockerd_containerd: Dockerd28,
    qemu_arm64: Emulation,
    context: Path,
    secret: dict[str, str],
    tmp_path: Path,
) -> None:
    layout, meta_file = tmp_path / "layout", tmp_path / "metadata.json"
    out = f"--output=type=oci,tar=false,dest={layout}"
    done = build(dockerd_containerd.host, context, TWO, out, f"--metadata-file={meta_file}",
                 secret=secret)  # fmt: skip
    ok(done)
    meta = json.loads(meta_file.read_text())
    assert set(meta) == {"buildx.build.ref", "containerimage.descriptor", "containerimage.digest"}
    desc = meta["containerimage.descriptor"]
    assert desc["mediaType"] == INDEX
    assert desc["digest"] == meta["containerimage.digest"]
    assert "org.opencontainers.image.created" in desc["annotations"]

    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    top = json.loads((layout / "index.json").read_text())
    assert [(m["mediaType"], m["digest"]) for m in top["manifests"]] == [(INDEX, desc["digest"])]
    assert len(blob(layout, desc["digest"])) == desc["size"]
    index = blob_json(layout, desc["digest"])
    images = [m for m in index["manifests"] if m["platform"]["os"] != "unknown"]
    attestations = [m for m in index["manifests"] if m["platform"]["os"] == "unknown"]
    assert platforms({"manifests": images}) == ["linux/amd64", "linux/arm64"]
    # provenance attestations by default, one per platform manifest
    referenced = sorted(a["annotations"]["vnd.docker.reference.digest"] for a in attestations)
    assert referenced == sorted(m["digest"] for m in images)
    for a in attestations:
        assert a["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
        assert a["platform"] == {"architecture": "unknown", "os": "unknown"}

    for m in images:
        arch = m["platform"]["architecture"]
        assert m["mediaType"] == MANIFEST
        manifest = blob_json(layout, m["digest"])
        assert blob_json(layout, manifest["config"]["digest"])["architecture"] == arch
        files = image_files(layout, manifest)
        assert files["/arch"].decode().strip() == UNAME[arch]  # RUN ran as that CPU
        assert files["/secret-size"].decode().strip() == str(len(secret[SECRET_VAR]))
        assert "/cache-runs" in files
        assert not any(f.startswith(("/cache/", "/run/secrets")) for f in files)  # mounts only
    leaked = secret[SECRET_VAR]
    assert leaked.encode() not in all_bytes(layout)
    assert leaked not in meta_file.read_text()
    assert leaked not in done.stdout + done.stderr


def test_attestations_off_leave_one_manifest_per_platform(
    dockerd_containerd: Dockerd28,
    qemu_arm64: Emulation,
    context: Path,
    secret: dict[str, str],
    tmp_path: Path,
) -> None:
    layout, meta_file = tmp_path / "layout", tmp_path / "metadata.json"
    out = f"--output=type=oci,tar=false,dest={layout}"
    ok(build(dockerd_containerd.host, context, TWO, "--provenance=false", "--sbom=false", out,
             f"--metadata-file={meta_file}", secret=secret))  # fmt: skip
    index = blob_json(layout, json.loads(meta_file.read_text())["containerimage.digest"])
    assert platforms(index) == ["linux/amd64", "linux/arm64"]
    assert {m["mediaType"] for m in index["manifests"]} == {MANIFEST}


def test_one_platform_oci_layout_points_at_the_manifest(
    dockerd_containerd: Dockerd28,
    qemu_arm64: Emulation,
    context: Path,
    secret: dict[str, str],
    tmp_path: Path,
) -> None:
    layout, meta_file = tmp_path / "layout", tmp_path / "metadata.json"
    out = f"--output=type=oci,tar=false,dest={layout}"
    ok(build(dockerd_containerd.host, context, "--platform=linux/arm64", out,
             f"--metadata-file={meta_file}", secret=secret))  # fmt: skip
    meta = json.loads(meta_file.read_text())
    assert set(meta) == {
        "buildx.build.provenance",
        "buildx.build.ref",
        "containerimage.config.digest",
        "containerimage.descriptor",
        "containerimage.digest",
    }
    desc = meta["containerimage.descriptor"]
    assert desc["mediaType"] == MANIFEST
    assert desc["platform"] == {"architecture": "arm64", "os": "linux"}
    assert desc["digest"] == meta["containerimage.digest"]
    manifest = blob_json(layout, desc["digest"])
    assert manifest["config"]["digest"] == meta["containerimage.config.digest"]
    top = json.loads((layout / "index.json").read_text())
    assert [m["digest"] for m in top["manifests"]] == [desc["digest"]]  # no nested index
    assert image_files(layout, manifest)["/arch"] == b"aarch64\n"
    assert meta["buildx.build.provenance"]["buildType"] == "https://mobyproject.org/buildkit@v1"


def test_load_both_platforms_then_run_each(
    dockerd_containerd: Dockerd28,
    qemu_arm64: Emulation,
    context: Path,
    secret: dict[str, str],
    tmp_path: Path,
) -> None:
    host, tag = dockerd_containerd.host, f"shipit-test/buildkit:{secrets.token_hex(4)}"
    meta_file = tmp_path / "metadata.json"
    ok(build(host, context, TWO, "--load", f"--tag={tag}", f"--metadata-file={meta_file}",
             secret=secret))  # fmt: skip
    try:
        meta = json.loads(meta_file.read_text())
        assert meta["image.name"] == f"docker.io/{tag}"
        assert meta["containerimage.descriptor"]["mediaType"] == INDEX
        image_id = ok(docker(host, "image", "inspect", "--format={{.Id}}", tag)).strip()
        assert image_id == meta["containerimage.digest"]  # the store keeps the index
        for arch in ("arm64", "amd64"):
            run = ["run", "--rm", f"--platform=linux/{arch}", tag, "cat", "/arch"]
            assert ok(docker(host, *run)).strip() == UNAME[arch]
        # a container on dockerd 28 gets an address on the fixture's own bridge
        addr = ok(docker(host, "run", "--rm", tag, "ip", "-4", "-o", "addr", "show", "eth0"))
        prefix = dockerd_containerd.subnet.rsplit(".", 1)[0] + "."
        assert f"inet {prefix}" in addr
    finally:
        docker(host, "image", "rm", "--force", tag)


# --- dockerd 20.10: the docker driver on the classic store --------------------------------


def test_classic_store_loads_one_foreign_platform(
    dockerd: Dockerd, qemu_arm64: Emulation, context: Path, secret: dict[str, str], tmp_path: Path
) -> None:
    tag, meta_file = f"shipit-test/buildkit:{secrets.token_hex(4)}", tmp_path / "metadata.json"
    ok(build(dockerd.host, context, "--platform=linux/arm64", "--load", f"--tag={tag}",
             f"--metadata-file={meta_file}", secret=secret))  # fmt: skip
    try:
        meta = json.loads(meta_file.read_text())
        assert set(meta) == {"buildx.build.ref", "containerimage.digest"}
        fmt = "--format={{.Id}} {{.Os}}/{{.Architecture}}"
        inspected = ok(docker(dockerd.host, "image", "inspect", fmt, tag)).split()
        assert inspected == [meta["containerimage.digest"], "linux/arm64"]
        run = ["run", "--rm", "--platform=linux/arm64", tag, "cat", "/arch", "/secret-size"]
        assert ok(docker(dockerd.host, *run)).split() == ["aarch64", str(len(secret[SECRET_VAR]))]
    finally:
        docker(dockerd.host, "image", "rm", "--force", tag)


# buildx's words on the docker driver without the containerd store; all but the manifest-list
# one go on "Switch to a different driver, or turn on the containerd image store, and try again."
REFUSED = [
    ("--platform=linux/arm64 --output=type=oci,tar=false,dest=DIR",
     "OCI exporter is not supported for the docker driver"),
    (TWO, "Multi-platform build is not supported for the docker driver"),
    (f"{TWO} --load", "docker exporter does not currently support exporting manifest lists"),
    ("--provenance=true --load", "Attestation is not supported for the docker driver"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), REFUSED)
def test_classic_store_refuses_what_needs_the_containerd_store(
    dockerd: Dockerd, context: Path, secret: dict[str, str], tmp_path: Path, args: str, message: str
) -> None:
    done = build(dockerd.host, context, *args.replace("DIR", str(tmp_path)).split(), secret=secret)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
