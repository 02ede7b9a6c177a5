"""Images for CI jobs that run in containers, all made here from the local Debian base.

- shipit's own image (the root Dockerfile) with the inputs scripts/image-inputs would fetch
  taken from this machine: its cosign, Docker CLI and buildx plugin (with their own sha256),
  shipit's wheel built from this checkout, the locked wheels and the .deb files of git,
  ca-certificates and buildah (`own_project`, which tests/e2e/test_own_image.py builds with
  shipit itself; `own_image` builds it with `docker build` for jobs to run in);
- a Docker-in-Docker service: Debian's `docker.io` on the base, dockerd as its command,
  /var/lib/docker a volume as in docker:dind (so overlay2 is not stacked on overlay);
- a registry service: Debian's `docker-registry` on the base, plain HTTP on port 5000;
- gitlab-ci-local's helper image: the base with rsync.

The base is `docker import`ed from the rootfs tar mmdebstrap wrote. Every image is tagged by a
hash of its inputs and kept in the daemon: a later session (or test) that finds the tag uses it;
building a new one removes the older tags of that name.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

from tests.support.buildkit import buildx_plugin
from tests.support.debian_base import PATH_ENV, BaseImage, debs
from tests.support.gitrepo import git
from tests.support.project import make_project
from tests.support.services import REPO, tool_path
from tests.support.wheelhouse import locked_wheels, shipit_wheel

ROOT_FILES = ("Dockerfile", ".dockerignore", "shipit.yml", "requirements/shipit.lock",
              "requirements/trivy.lock")  # fmt: skip
BUILD_TIMEOUT = 900.0
REGISTRY_CONFIG = """\
version: 0.1
storage: {filesystem: {rootdirectory: /var/lib/docker-registry}, delete: {enabled: true}}
http: {addr: ":5000"}
"""


class ImageBuildError(RuntimeError):
    """An image could not be built."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def docker(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _have(tag: str) -> bool:
    return docker("image", "inspect", tag).returncode == 0


def _checked(done: subprocess.CompletedProcess[str], what: str) -> str:
    if done.returncode != 0:
        raise ImageBuildError(f"{what} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def imported_base(base: BaseImage) -> str:
    """The base in the daemon (`docker import` of its rootfs, PATH and CMD set)."""
    tag = f"shipit-test/debian-{base.variant}:{base.rootfs.parent.name}"
    if not _have(tag):
        _checked(
            docker("import", "--change", f"ENV {PATH_ENV}", "--change", 'CMD ["bash"]',
                   str(base.rootfs), tag),
            f"docker import of {base.rootfs}",
        )  # fmt: skip
    return tag


def _build(name: str, context: Path, key: str, build_args: dict[str, str] | None = None) -> str:
    tag = f"shipit-test/{name}:{key[:16]}"
    if _have(tag):
        return tag
    args = [f"--build-arg={k}={v}" for k, v in (build_args or {}).items()]
    _checked(
        docker("build", "--quiet", "--network=none", "-t", tag, *args, str(context),
               timeout=BUILD_TIMEOUT),
        f"docker build of {name}",
    )  # fmt: skip
    # the tags of earlier inputs go (a checkout's every commit makes a new shipit image); one
    # a container still uses stays: `docker image rm` without --force refuses it
    listed = docker("images", f"shipit-test/{name}", "--format", "{{.Repository}}:{{.Tag}}")
    for old in listed.stdout.split():
        if old != tag:
            docker("image", "rm", old)
    return tag


def _key(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _deb_image(base: BaseImage, workdir: Path, name: str, packages: list[str],
               tail: str, files: dict[str, str] | None = None) -> str:  # fmt: skip
    """An image of the base with `packages` installed from local .deb files, then `tail`."""
    context = workdir / name
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(debs(base, packages), context / "debs")
    for rel, text in (files or {}).items():
        (context / rel).write_text(text, encoding="utf-8")
    from_ = imported_base(base)
    dockerfile = (
        f"FROM {from_}\n"
        "COPY debs/ /tmp/debs/\n"
        "RUN apt-get install -y --no-install-recommends /tmp/debs/*.deb"
        " && rm -rf /tmp/debs /var/lib/apt/lists/* /var/cache/apt/archives/*.deb\n"
        f"{tail}"
    )
    (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    names = sorted(p.name for p in (context / "debs").glob("*.deb"))
    key = _key(dockerfile.encode(), "\0".join(names).encode(),
               *(t.encode() for t in (files or {}).values()))  # fmt: skip
    return _build(name, context, key)


def dind_image(base: BaseImage, workdir: Path) -> str:
    """Docker-in-Docker from Debian's docker.io; runs `dockerd` with the service's command."""
    tail = 'VOLUME /var/lib/docker\nCMD ["dockerd", "--host=tcp://0.0.0.0:2375", "--tls=false"]\n'
    return _deb_image(base, workdir, "dind", ["docker.io"], tail)


def registry_image(base: BaseImage, workdir: Path) -> str:
    """A plain-HTTP registry (Debian's docker-registry) on port 5000, no auth."""
    tail = (
        "COPY registry.yml /etc/shipit-test-registry.yml\n"
        'CMD ["docker-registry", "serve", "/etc/shipit-test-registry.yml"]\n'
    )
    return _deb_image(base, workdir, "registry", ["docker-registry"], tail,
                      {"registry.yml": REGISTRY_CONFIG})  # fmt: skip


def helper_image(base: BaseImage, workdir: Path) -> str:
    """gitlab-ci-local's helper (its `--helper-image`): the base with rsync, which it copies
    artifacts out of a job's volume with."""
    return _deb_image(base, workdir, "gcl-helper", ["rsync"], "")


def own_project(root: Path, base: BaseImage) -> tuple[Path, dict[str, str]]:
    """A repository holding the root files of shipit unchanged, dist/image filled as
    scripts/image-inputs would (ignored by git, as in shipit's own checkout); and the
    SHIPIT_*_SHA256 of its binaries."""
    files: dict[str, str | bytes] = {name: (REPO / name).read_bytes() for name in ROOT_FILES}
    files[".gitignore"] = "/dist/\n"
    project = make_project(
        root,
        (REPO / "shipit.yml").read_text(),
        dockerfile=(REPO / "Dockerfile").read_text(),
        files=files,
    )
    inputs = project / "dist" / "image"
    inputs.mkdir(parents=True)
    binaries = {
        "cosign": Path(tool_path("cosign")),
        "docker": Path(tool_path("docker")),
        "docker-buildx": buildx_plugin(),
    }
    for name, path in binaries.items():
        shutil.copy2(path, inputs / name)
    shipit_wheel(inputs)
    # all the install locks' wheels (the folder other tests share; pip takes what it needs)
    wheels = locked_wheels(base.python_version())
    shutil.copytree(wheels, inputs / "wheels", ignore=shutil.ignore_patterns(".stamp"))
    shutil.copytree(debs(base, ["git", "ca-certificates", "buildah"]), inputs / "debs")
    assert git(project, "status", "--porcelain") == ""
    sums = {
        "SHIPIT_COSIGN_SHA256": sha256(inputs / "cosign"),
        "SHIPIT_DOCKER_SHA256": sha256(inputs / "docker"),
        "SHIPIT_BUILDX_SHA256": sha256(inputs / "docker-buildx"),
    }
    return project, sums


def _wheel_key(wheel: Path) -> bytes:
    """What a wheel holds, without the zip's timestamps."""
    with zipfile.ZipFile(wheel) as z:
        return "\n".join(f"{i.filename} {i.CRC:08x}" for i in sorted(z.infolist(),
                         key=lambda i: i.filename)).encode()  # fmt: skip


def own_image(base: BaseImage, workdir: Path) -> str:
    """shipit's own image (the root Dockerfile) built with `docker build` from own_project's
    inputs, on the imported base; the build reaches no network."""
    project, sums = own_project(workdir / "own-image", base)
    inputs = project / "dist" / "image"
    parts = [(project / name).read_bytes() for name in ROOT_FILES]
    parts += [bytes.fromhex(v) for v in sums.values()]
    parts += [_wheel_key(w) for w in sorted(inputs.glob("shipit-*.whl"))]
    parts += ["\0".join(sorted(p.name for p in (inputs / d).iterdir())).encode()
              for d in ("wheels", "debs")]  # fmt: skip
    from_ = imported_base(base)
    args = {
        "SHIPIT_BASE_IMAGE": from_,
        "SHIPIT_WHEELS": "/tmp/inputs/wheels",
        **{name.removeprefix("SHIPIT_"): value for name, value in sums.items()},
    }
    return _build("shipit", project, _key(from_.encode(), *parts), args)
