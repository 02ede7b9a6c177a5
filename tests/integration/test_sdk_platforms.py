"""The SDK engine (docker-py's classic builder) builds every platform it accepts, on both
daemons: bookworm's dockerd 20.10 (classic image store) and sid's dockerd 28 (containerd image
store), for `FROM scratch` and `FROM <image>` Dockerfiles whose stages have steps (ARG, ENV,
LABEL, WORKDIR) before their first COPY (issue 19). Each platform's image, pushed by `shipit
run` to a registry of the test's own, runs as itself (`uname -m`) and its config names its
architecture. What the classic builder cannot build is refused before any build.

See shipit/stages/build/classic_platforms.py for why the classic builder needs help.

On the containerd store the SDK engine builds with the daemon's BuildKit unless told otherwise
(`DOCKER_BUILDKIT=0`, as `docker build` is told): the classic builder's tests say so, and
the last test here is BuildKit's.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from shipit.docker_api import BuildRequest, Daemon
from shipit.registry import Descriptor, Manifest, Registry
from tests.support.buildkit import UNAME, busybox, docker_at
from tests.support.cli import run_shipit
from tests.support.gitrepo import git
from tests.support.project import make_project, run_env
from tests.support.services import Dockerd, RegistryFactory, registry_client
from tests.support.services import Registry as RunningRegistry

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

PLATFORMS = ("linux/amd64", "linux/arm64")
# issue 19's Dockerfile, as written
SCRATCH = """\
FROM scratch
ARG TARGETARCH
COPY busybox-${TARGETARCH} /bin/busybox
CMD ["/bin/busybox", "uname", "-m"]
"""
# its twin on a base image, with the other steps that change no file before the first COPY,
# and a RUN that proves which base the steps ran on
FROM_IMAGE = """\
FROM {base}
ARG TARGETARCH
ENV GREETING=hello
LABEL org.example.shape=twin
WORKDIR /work
COPY busybox-${{TARGETARCH}} /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "cat /etc/base-platform > /work/base && uname -m > /work/ran"]
CMD ["/bin/busybox", "uname", "-m"]
"""
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(params=["classic", "containerd"])
def daemon(request: pytest.FixtureRequest, dockerd: Dockerd, qemu_arm64: Any) -> str:
    """The DOCKER_HOST of one of the two daemons; every test here runs on both."""
    if request.param == "classic":
        return dockerd.host
    return str(request.getfixturevalue("dockerd_containerd").host)


@pytest.fixture(scope="module")
def registry(registry_factory: RegistryFactory) -> RunningRegistry:
    return registry_factory()


def classic_env(host: str, home: Path) -> dict[str, str]:
    """A run's environment that asks for the classic builder on either store."""
    return run_env(host, home, DOCKER_BUILDKIT="0")


def arch_of(platform: str) -> str:
    return platform.split("/")[1]


def project_with(root: Path, spec: str, dockerfile: str, **files: str) -> Path:
    """A committed project: the spec, the Dockerfile, busybox-amd64 and busybox-arm64."""
    project = make_project(root, spec, dockerfile=dockerfile, files=files)
    for platform in PLATFORMS:
        shutil.copy2(busybox(arch_of(platform)), project / f"busybox-{arch_of(platform)}")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "busybox for each CPU")
    return project


def spec_for(
    registry: RunningRegistry, namespace: str, platforms: tuple[str, ...], *, pull: bool = False
) -> str:
    return (
        f"version: 1\nregistries: [{registry.host}/{namespace}]\n"
        f"image:\n  name: app\n  engine: sdk\n  platforms: [{', '.join(platforms)}]\n"
        f"  pull: {'true' if pull else 'false'}\n"
    )


def config_of(client: Registry, repository: str, digest: str) -> tuple[dict[str, Any], int]:
    """An image manifest's config and its number of layers, from the registry."""
    manifest = client.manifest(repository, digest)
    config, *layers = manifest.blobs()
    return json.loads(client.read_blob(repository, config)), len(layers)


def built_platforms(report: Path) -> tuple[str, dict[str, str]]:
    """The tag `shipit run` pushed and each platform's manifest digest, from its report."""
    [image] = json.loads(report.read_text())["images"]
    return image["tags"][0], {p["platform"]: p["digest"] for p in image["platforms"]}


def pushed_configs(
    report: Path, registry: RunningRegistry, namespace: str
) -> tuple[str, list[tuple[str, dict[str, Any], int]]]:
    """The tag `shipit run` pushed, and each platform's image config and number of layers
    read back from the registry: both platforms, each config naming its own."""
    tag, platforms = built_platforms(report)
    assert sorted(platforms) == sorted(PLATFORMS)
    client = registry_client(registry)
    found = []
    for platform, digest in platforms.items():
        config, layers = config_of(client, f"{namespace}/app", digest)
        assert (config["os"], config["architecture"]) == ("linux", arch_of(platform))
        found.append((platform, config, layers))
    return tag, found


def diff_id(client: Registry, repository: str, layer: Descriptor) -> str:
    """The digest of a layer's tar, as an image config's diff ids name it."""
    with client._open_blob(repository, layer) as response:
        return "sha256:" + hashlib.sha256(gzip.decompress(response.content)).hexdigest()


def run_as(daemon: str, ref: str, platform: str, *command: str) -> str:
    """`docker run --platform` of the pushed image: what it prints."""
    pulled = docker_at(daemon, "pull", "--platform", platform, ref)
    assert pulled.returncode == 0, pulled.stderr
    ran = docker_at(daemon, "run", "--rm", "--platform", platform, ref, *command)
    docker_at(daemon, "rmi", "-f", "--no-prune", ref)
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.strip()


def push_base(client: Registry, repository: str, tag: str) -> None:
    """A base image for each platform, made of that platform's busybox and a file naming the
    platform, pushed as one index (what `FROM repository:tag` pulls per platform)."""
    children = []
    for platform in PLATFORMS:
        layer_tar = io.BytesIO()
        with tarfile.open(fileobj=layer_tar, mode="w") as tar:
            data = busybox(arch_of(platform)).read_bytes()
            for name, content, mode in (
                ("bin/busybox", data, 0o755),
                ("etc/base-platform", f"{platform}\n".encode(), 0o644),
            ):
                entry = tarfile.TarInfo(name)
                entry.size, entry.mode = len(content), mode
                tar.addfile(entry, io.BytesIO(content))
        plain = layer_tar.getvalue()
        layer = gzip.compress(plain, mtime=0)
        config = json.dumps(
            {
                "architecture": arch_of(platform),
                "os": "linux",
                "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/busybox", "sh"]},
                "rootfs": {
                    "type": "layers",
                    "diff_ids": [f"sha256:{hashlib.sha256(plain).hexdigest()}"],
                },
                "history": [{"created_by": "the test's base for " + platform}],
            }
        ).encode()
        blobs = [client.upload_blob(repository, blob) for blob in (config, layer)]
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blobs[0].digest,
                "size": blobs[0].size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": blobs[1].digest,
                    "size": blobs[1].size,
                }
            ],
        }
        manifest = Manifest.from_bytes(json.dumps(document).encode())
        client.put_manifest(repository, manifest.digest, manifest)
        children.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest.digest,
                "size": len(manifest.data),
                "platform": {"architecture": arch_of(platform), "os": "linux"},
            }
        )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
    client.put_manifest(repository, tag, Manifest.from_bytes(json.dumps(index).encode()))


def test_a_from_scratch_image_with_an_arg_before_its_copy_builds_for_both_platforms(
    tmp_path: Path, daemon: str, registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = f"scratch{os.urandom(3).hex()}"
    project = project_with(tmp_path / "p", spec_for(registry, namespace, PLATFORMS), SCRATCH)
    report = tmp_path / "report.json"
    code, _, err = run_shipit(
        ["run", "-C", str(project), "--report", str(report)], capsys, classic_env(daemon, tmp_path)
    )
    assert code == 0, err
    # the classic builder; shipit's four labels are one LABEL step, the fifth
    assert "Step 2/5 : ARG TARGETARCH" in err
    tag, configs = pushed_configs(report, registry, namespace)
    for platform, config, layers in configs:
        assert "variant" not in config
        # what the Dockerfile makes, nothing more: one layer, and the history of its steps
        assert layers == 1
        steps = [h["created_by"].split("#(nop) ")[-1].strip() for h in config["history"]]
        assert steps[0] == "ARG TARGETARCH" and steps[1].startswith("COPY file:"), steps
        assert steps[2] == 'CMD ["/bin/busybox" "uname" "-m"]', steps
        assert len(steps) == 4 and steps[3].startswith("LABEL org.opencontainers.image."), steps
        assert config["config"]["Cmd"] == ["/bin/busybox", "uname", "-m"]
        ref = f"{registry.host}/{namespace}/app:{tag}"
        assert run_as(daemon, ref, platform) == UNAME[arch_of(platform)]


@pytest.mark.parametrize("pull", [False, True], ids=["held", "pull"])
def test_its_twin_on_a_base_image_builds_each_platform_on_that_platforms_base(
    tmp_path: Path,
    daemon: str,
    registry: RunningRegistry,
    pull: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With `pull: false` the daemon holds the base for the other platform when the second
    build starts (the first one pulled it); with `pull: true` every build pulls it."""
    namespace = f"twin{os.urandom(3).hex()}"
    client = registry_client(registry)
    push_base(client, f"{namespace}/base", "1")
    base = f"{registry.host}/{namespace}/base:1"
    spec = spec_for(registry, namespace, PLATFORMS, pull=pull)
    project = project_with(tmp_path / "p", spec, FROM_IMAGE.format(base=base))
    report = tmp_path / "report.json"
    code, _, err = run_shipit(
        ["run", "-C", str(project), "--report", str(report)], capsys, classic_env(daemon, tmp_path)
    )
    assert code == 0, err
    tag, platforms = built_platforms(report)
    assert sorted(platforms) == sorted(PLATFORMS)
    repository = f"{namespace}/app"
    for platform, digest in platforms.items():
        config, _ = config_of(client, repository, digest)
        assert (config["os"], config["architecture"]) == ("linux", arch_of(platform))
        assert "GREETING=hello" in config["config"]["Env"]
        assert config["config"]["Labels"]["org.example.shape"] == "twin"
        assert config["config"]["WorkingDir"] == "/work"
        assert config["config"]["Cmd"] == ["/bin/busybox", "uname", "-m"]
        ref = f"{registry.host}/{repository}:{tag}"
        assert run_as(daemon, ref, platform) == UNAME[arch_of(platform)]
        # the steps ran on this platform's base, as this platform
        said = run_as(daemon, ref, platform, "/bin/busybox", "cat", "/work/base", "/work/ran")
        assert said.split() == [platform, UNAME[arch_of(platform)]]


def test_a_copy_right_after_from_image_takes_the_layers_of_that_platforms_base(
    tmp_path: Path, daemon: str, registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    """A COPY straight after `FROM image`, the foreign platform built first (the daemon holds
    nothing of the base yet): each image's layers start with its own platform's base layer."""
    namespace = f"copy{os.urandom(3).hex()}"
    client = registry_client(registry)
    push_base(client, f"{namespace}/base", "1")
    base_layers = {}  # platform -> the digest of its base layer's tar (its diff id)
    for child in client.manifest(f"{namespace}/base", "1").children():
        [_, layer] = client.manifest(f"{namespace}/base", child.digest).blobs()
        base_layers[child.platform] = diff_id(client, f"{namespace}/base", layer)
    dockerfile = (
        f"FROM {registry.host}/{namespace}/base:1\n"
        "COPY busybox-amd64 busybox-arm64 /opt/\n"
        'CMD ["/bin/busybox", "uname", "-m"]\n'
    )
    order = tuple(reversed(PLATFORMS))  # linux/arm64 first
    project = project_with(tmp_path / "p", spec_for(registry, namespace, order), dockerfile)
    report = tmp_path / "report.json"
    code, _, err = run_shipit(
        ["run", "-C", str(project), "--report", str(report)], capsys, classic_env(daemon, tmp_path)
    )
    assert code == 0, err
    tag, platforms = built_platforms(report)
    repository = f"{namespace}/app"
    for platform, digest in platforms.items():
        # the first layer is this platform's base layer, and the config says so too
        [_, first, _copied] = client.manifest(repository, digest).blobs()
        config, _ = config_of(client, repository, digest)
        assert diff_id(client, repository, first) == base_layers[platform]
        assert config["rootfs"]["diff_ids"][0] == base_layers[platform]
        assert config["architecture"] == arch_of(platform)
        ref = f"{registry.host}/{repository}:{tag}"
        said = run_as(daemon, ref, platform, "/bin/busybox", "cat", "/etc/base-platform")
        assert said == platform
        assert run_as(daemon, ref, platform) == UNAME[arch_of(platform)]


def test_a_platform_whose_variant_the_containerd_store_drops_is_refused_before_the_build(
    tmp_path: Path,
    dockerd_containerd: Any,
    registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """dockerd 28 on the containerd store records no variant in a step's image: linux/arm/v6
    of a Dockerfile with an ENV cannot be built by its classic builder, and is not tried."""
    namespace = f"variant{os.urandom(3).hex()}"
    spec = spec_for(registry, namespace, ("linux/amd64", "linux/arm/v6"))
    project = make_project(
        tmp_path / "p", spec, dockerfile="FROM scratch\nENV A=1\nCOPY hello.txt /\n"
    )
    code, out, err = run_shipit(
        ["run", "-C", str(project)], capsys, classic_env(dockerd_containerd.host, tmp_path)
    )
    assert code == 1, err
    assert "preflight: image app:" in err and "linux/arm/v6" in err
    assert "dockerd 28." in err and "containerd image store" in err
    assert "nothing was built" in err and "engine: buildx" in err
    assert "Step 1/" not in out + err
    assert registry_client(registry).tags(f"{namespace}/app") == []


@pytest.mark.parametrize(
    "ignore",
    [None, "*.md\n", "# ours\nDockerfile\n*.md\n", ".dockerignore\n*.md\n"],
    ids=["none", "dockerignore", "it-lists-the-dockerfile", "it-lists-itself"],
)
def test_the_dockerfile_shipit_sends_for_a_platform_never_reaches_the_build_context(
    tmp_path: Path, daemon: str, ignore: str | None
) -> None:
    """A `COPY . ` of a build whose Dockerfile shipit changed copies the context as it is:
    the user's Dockerfile and .dockerignore, nothing of shipit's."""
    context = tmp_path / "ctx"
    context.mkdir()
    original = "FROM scratch\nCOPY . /ctx/\n"
    (context / "Dockerfile").write_text(original)
    (context / "data.txt").write_text("data\n")
    (context / "notes.md").write_text("excluded when .dockerignore says *.md\n")
    if ignore is not None:
        (context / ".dockerignore").write_text(ignore)
    with Daemon({"DOCKER_HOST": daemon}) as client:
        request = BuildRequest(
            context=context,
            dockerfile="Dockerfile",
            tag=f"shipit-test/context:{os.urandom(4).hex()}",
            dockerfile_text="# sent by shipit\n" + original,
            no_cache=True,
        )
        image = client.build(request, lambda line: None)
        try:
            files = files_of(b"".join(client.save(image)))
        finally:
            client.untag(request.tag)
    expected = {"ctx/Dockerfile": original.encode(), "ctx/data.txt": b"data\n"}
    if ignore is None:
        expected["ctx/notes.md"] = b"excluded when .dockerignore says *.md\n"
    elif "Dockerfile" in ignore:
        del expected["ctx/Dockerfile"]  # the daemon drops an ignored Dockerfile, as ever
    if ignore is not None and ".dockerignore\n" not in ignore:
        expected["ctx/.dockerignore"] = ignore.encode()
    assert files == expected


def files_of(archive: bytes) -> dict[str, bytes]:
    """The regular files of a `docker save` archive's image (its layers in order)."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as saved:
        [entry] = json.loads(saved.extractfile("manifest.json").read())  # type: ignore[union-attr]
        found: dict[str, bytes] = {}
        for path in entry["Layers"]:
            data = saved.extractfile(path).read()  # type: ignore[union-attr]
            with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                for member in layer:
                    if member.isfile():
                        found[member.name] = layer.extractfile(member).read()  # type: ignore[union-attr]
        return found


def test_on_the_containerd_store_the_daemons_buildkit_builds_each_platform_from_its_own_base(
    tmp_path: Path,
    dockerd_containerd: Any,
    qemu_arm64: Any,
    registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Unless told otherwise, the SDK engine sends a containerd-store daemon's build to its
    BuildKit: issue 19's Dockerfile for both platforms, with BuildKit's own platform args, a
    step per instruction and none for shipit's labels, each image running as itself."""
    namespace = f"bk{os.urandom(3).hex()}"
    project = project_with(tmp_path / "p", spec_for(registry, namespace, PLATFORMS), SCRATCH)
    report = tmp_path / "report.json"
    host = dockerd_containerd.host
    code, _, err = run_shipit(
        ["run", "-C", str(project), "--report", str(report)], capsys, run_env(host, tmp_path)
    )
    assert code == 0, err
    assert re.search(r"^\[[^\]]*1/1\] COPY busybox-", err, re.M), err
    assert "Step 1/" not in err  # not the classic builder
    tag, configs = pushed_configs(report, registry, namespace)
    for platform, config, layers in configs:
        assert layers == 1
        assert all(h.get("comment") == "buildkit.dockerfile.v0" for h in config["history"])
        steps = [h["created_by"].split(" ")[0] for h in config["history"]]
        assert steps == ["ARG", "COPY", "CMD"], config["history"]  # labels add no step
        assert config["history"][0]["created_by"] == f"ARG TARGETARCH={arch_of(platform)}"
        labels = config["config"]["Labels"]
        assert (
            labels["org.opencontainers.image.revision"] == git(project, "rev-parse", "HEAD").strip()
        )
        ref = f"{registry.host}/{namespace}/app:{tag}"
        assert run_as(host, ref, platform) == UNAME[arch_of(platform)]
