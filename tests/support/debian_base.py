"""A real Debian bookworm base image for the tests, made on this machine, and the .deb files
an image built on it installs with apt, without any network inside the build.

No registry holding Debian's images can be reached from here (TOOLCHAIN.md), so the base is
made with mmdebstrap, as TOOLCHAIN.md's "Real base images" says: `--variant=minbase` (about
75 MB, the size of the official bookworm-slim) or `--variant=apt --include=python3,python3-venv`
(the Python base), the merged-usr hook, man pages, locales, info and docs left out but the
copyright files kept. It uses the Debian mirror the machine's apt is configured with
(scripts/debian-mirror): that is a setup step, the only one here that leaves the machine.

Made once per machine, under REPO/.cache/debian-base (gitignored), and again only when the
cached files are missing or the way they are made changes (the key hashes the mmdebstrap
command and the mirror, not the date). A file lock keeps test sessions that run at once from
making it twice or reading a half-written one; files are written under a temporary name and
renamed.

The root filesystem becomes an OCI image layout (one gzipped layer, a config for
linux/amd64 with PATH and `CMD ["bash"]`, as `docker import --change 'CMD ["bash"]'` gives),
which `crane push` copies into a loopback registry (`serve_base`): `FROM
127.0.0.1:PORT/library/debian:bookworm-slim` then works for the classic builder, BuildKit and
buildah, pull included.

`debs(variant, packages)` downloads the packages an image adds and every dependency the base
lacks (apt with a private state whose dpkg status is the base's own), so a Dockerfile can
`COPY` them and `apt-get install ./debs/*.deb`: apt resolves local files, no index needed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import shutil
import subprocess
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import file_locked
from tests.support.services import REPO, Registry, ToolMissingError, tool_path

CACHE = REPO / ".cache" / "debian-base"
SUITE = "bookworm"
MAKE_TIMEOUT = 900.0
LAYOUT_FORMAT = 2  # part of the cache key: 2 records when the base was made (`created`)
LOCK_TIMEOUT = MAKE_TIMEOUT + 120
# TOOLCHAIN.md "Real base images": what the official bookworm-slim leaves out, copyright kept
MMDEBSTRAP_OPTIONS = (
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)
VARIANTS = {
    "minbase": ("--variant=minbase",),
    "python": ("--variant=apt", "--include=python3,python3-venv"),
}
# where each variant is served (serve_base): the names users write for these bases
REPOSITORIES = {
    "minbase": "library/debian:bookworm-slim",
    "python": "library/python:3.11-slim-bookworm",
}
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_HINT = f"run scripts/install-tools (as root: bash {REPO / 'scripts' / 'install-tools'})"


class BaseImageError(RuntimeError):
    """The base image or its packages could not be made."""


@dataclass(frozen=True)
class BaseImage:
    variant: str
    rootfs: Path  # the tar mmdebstrap wrote
    layout: Path  # an OCI image layout of it
    status: Path  # its var/lib/dpkg/status: the packages installed, for apt's resolver
    packages: dict[str, tuple[str, str]]  # binary package -> (source package, version)

    def python_version(self) -> str:
        """MAJOR.MINOR of the base's python3 (the Python variant), e.g. "3.11"."""
        if "python3" not in self.packages:
            raise BaseImageError(f"the {self.variant} base has no python3")
        major, minor = self.packages["python3"][1].split(".")[:2]
        return f"{major}.{minor}"


def _locked(name: str) -> contextlib.AbstractContextManager[None]:
    return file_locked(
        CACHE / f"{name}.lock", timeout=LOCK_TIMEOUT, interval=0.5, error=BaseImageError
    )


def _run(argv: Sequence[str], *, timeout: float, what: str) -> str:
    done = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise BaseImageError(
            f"{what} failed ({done.returncode}): {' '.join(argv)}\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


def mirror() -> str:
    """The Debian archive this machine's apt uses (scripts/debian-mirror), first one."""
    out = _run([str(REPO / "scripts" / "debian-mirror")], timeout=30, what="scripts/debian-mirror")
    return out.split()[0]


def mmdebstrap_argv(variant: str, target: Path, archive: str) -> list[str]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown Debian base variant {variant!r}; known: {', '.join(VARIANTS)}")
    if shutil.which("mmdebstrap") is None:
        raise ToolMissingError(f"mmdebstrap is not installed; {INSTALL_HINT}")
    return ["mmdebstrap", *VARIANTS[variant], *MMDEBSTRAP_OPTIONS, SUITE, str(target), archive]


def base_image(variant: str = "minbase") -> BaseImage:
    """The cached base of `variant`, made first when it is missing or made another way."""
    archive = mirror()
    argv = mmdebstrap_argv(variant, Path("TARGET"), archive)
    key = hashlib.sha256("\0".join([f"layout {LAYOUT_FORMAT}", *argv]).encode()).hexdigest()[:16]
    folder = CACHE / f"{variant}-{key}"
    with _locked(variant):
        if not (folder / ".done").is_file():
            _make(folder, variant, archive)
    return BaseImage(
        variant=variant,
        rootfs=folder / "rootfs.tar",
        layout=folder / "layout",
        status=folder / "status",
        packages=_installed(folder / "status"),
    )


def _make(folder: Path, variant: str, archive: str) -> None:
    partial = folder.with_name(f"{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    partial.mkdir(parents=True)
    rootfs = partial / "rootfs.tar"
    _run(mmdebstrap_argv(variant, rootfs, archive), timeout=MAKE_TIMEOUT, what="mmdebstrap")
    with tarfile.open(rootfs) as tar:
        member = tar.extractfile("./var/lib/dpkg/status")
        if member is None:
            raise BaseImageError(f"{rootfs} holds no var/lib/dpkg/status")
        (partial / "status").write_bytes(member.read())
    _oci_layout(rootfs, partial / "layout", " ".join(mmdebstrap_argv(variant, rootfs, archive)))
    (partial / ".done").write_text("ok\n")
    partial.rename(folder)


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _oci_layout(rootfs: Path, layout: Path, made_by: str) -> None:
    """An OCI image layout (image-spec image-layout.md) of one layer: the rootfs, gzipped."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    raw = rootfs.read_bytes()
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    layer = _blob(layout, gzip.compress(raw, compresslevel=6, mtime=0))
    # when it was made, as `docker import` records it and every published base has it: without
    # `created` in the history, buildah 1.28 building in Docker's format reuses none of its
    # layer cache on this base (seen here: 0 of 18 steps; with it, 18 of 18)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Env": [PATH_ENV], "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": made_by}],
    }
    config_desc = _blob(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    manifest_desc = _blob(layout, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def _installed(status: Path) -> dict[str, tuple[str, str]]:
    """Binary package -> (source package, version), from a dpkg status file."""
    found: dict[str, tuple[str, str]] = {}
    for stanza in status.read_text(encoding="utf-8").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            # "Source: NAME (VERSION)" when the source version differs
            source = fields.get("Source", fields["Package"]).split(" ")[0]
            found[fields["Package"]] = (source, fields.get("Version", ""))
    return found


def serve_base(base: BaseImage, registry: Registry) -> str:
    """Copy the base into `registry` (crane push of the OCI layout, plain HTTP); its reference."""
    if registry.tls:
        raise ValueError("serve_base pushes over plain HTTP: give it a registry without TLS")
    ref = f"{registry.host}/{REPOSITORIES[base.variant]}"
    _run([tool_path("crane"), "push", "--insecure", str(base.layout), ref], timeout=300,
         what="crane push of the Debian base")  # fmt: skip
    return ref


# --- .deb files for apt inside a build ---------------------------------------------------


def debs(base: BaseImage, packages: Sequence[str]) -> Path:
    """A folder of the .deb files of `packages` and of the dependencies `base` lacks.

    apt resolves against a private state: the mirror's bookworm index and the base's own dpkg
    status, so what it downloads is exactly what `apt-get install ./*.deb` in an image of that
    base needs. Cached per base and package list.
    """
    key = hashlib.sha256(
        (base.status.parent.name + "\0" + "\0".join(sorted(packages))).encode()
    ).hexdigest()[:16]
    folder = CACHE / f"debs-{key}"
    with _locked("debs"):
        if (folder / ".done").is_file():
            return folder / "debs"
        partial = folder.with_name(f"{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        state = partial / "state"
        for sub in ("lists/partial", "cache", "archives/partial", "etc"):
            (state / sub).mkdir(parents=True)
        (state / "etc" / "sources.list").write_text(f"deb {mirror()} {SUITE} main\n")
        shutil.copy2(base.status, state / "status")
        apt = [
            "apt-get",
            f"-oDir::Etc::sourcelist={state / 'etc' / 'sources.list'}",
            "-oDir::Etc::sourceparts=-",
            f"-oDir::State::Lists={state / 'lists'}",
            f"-oDir::State::status={state / 'status'}",
            f"-oDir::Cache={state / 'cache'}",
            f"-oDir::Cache::archives={state / 'archives'}",
            "-oAPT::Sandbox::User=root",
            "-oDebug::NoLocking=1",
        ]
        _run([*apt, "update"], timeout=300, what="apt-get update (private state)")
        _run([*apt, "install", "--download-only", "--no-install-recommends", "-y", *packages],
             timeout=600, what=f"apt-get install --download-only {' '.join(packages)}")  # fmt: skip
        found = sorted((state / "archives").glob("*.deb"))
        if not found:
            raise BaseImageError(f"apt downloaded no .deb for {', '.join(packages)}")
        out = partial / "debs"
        out.mkdir()
        for deb in found:
            shutil.move(deb, out / deb.name)
        shutil.rmtree(state)
        (partial / ".done").write_text("ok\n")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder / "debs"


def debian_registries_conf(path: Path, *hosts: str) -> Path:
    """A registries.conf (containers-registries.conf(5), v2) that lets buildah pull from the
    plain-HTTP loopback registries `hosts`; for CONTAINERS_REGISTRIES_CONF."""
    entries = "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n\n' for h in hosts)
    path.write_text(entries, encoding="utf-8")
    return path


if (
    __name__ == "__main__"
):  # make the bases ahead of a test run: python -m tests.support.debian_base
    for name in VARIANTS:
        made = base_image(name)
        print(f"{name}: {made.rootfs} ({len(made.packages)} packages)", flush=True)
