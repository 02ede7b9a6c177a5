"""The classic builder and platforms: why a build for another platform than the daemon's own
fails, and what the SDK engine sends so that every platform it accepts builds.

What the classic builder does, read in moby's source at v20.10.24 (the classic image store)
and v28.5.2 (the containerd image store); the same in both unless said:

- Every step but COPY and ADD (ARG, ENV, LABEL, WORKDIR, CMD..., and RUN) is committed from a
  container of the previous step's image, and its image takes that image's platform. After
  `FROM scratch` there is no image, so the step gets the daemon's own architecture: 20.10's
  daemon/images/image_commit.go `CommitImage` gives a container without an image an empty
  parent (`new(image.Image)`), whose image/image.go `BaseImgArch()` is runtime.GOARCH, which
  `NewChildImage` copies; 28.5's daemon/containerd/image_commit.go `generateCommitImageConfig`
  takes runtime.GOARCH when the container has no image manifest ("assuming arch=..."), and
  copies only the architecture and the OS of the parent, never its variant.
- COPY and ADD ask the daemon for the previous step's image *for the build's platform*
  (builder/dockerfile/internals.go `performCopy`: `imageSources.Get(state.imageID, true,
  req.builder.platform)`), and the daemon refuses an image of another platform: 20.10's
  daemon/images/image.go `GetImage` ("was found but does not match the specified platform"),
  28.5's daemon/containerd/image.go `getBestPresentImageManifest` ("does not provide the
  specified platform"). So `FROM scratch`, `ARG X`, `COPY ...` fails for every platform but
  the daemon's own (moby/moby#46294, open). A COPY right after `FROM scratch` works: the
  builder gives the empty mount the build's platform (builder/dockerfile/imagecontext.go
  `imageSources.Add`), and every later step inherits it.
- `FROM image` takes what the daemon holds under that name. 20.10 holds one platform per name;
  when it is another one, daemon/images/image_builder.go `GetImageAndReleasableLayer` uses it
  all the same (`GetImage`'s platform error is dropped once an image came back), so the
  stage is built on the other platform's image. 28.5 holds several platforms per name and
  picks the build's for FROM, but creates every step's container without a platform
  (builder/dockerfile/containerbackend.go `Create`), so daemon/create.go takes the daemon's
  own platform when the name holds it too (moby/moby#47823, open), and `CreateImage`
  (daemon/containerd/image_builder.go) takes the parent's layers for `platforms.Default()`.

What the SDK engine does for a build for a platform that is not the daemon's own
(`PlatformBases.dockerfile`; the daemon's own platform builds as written):

- A `FROM scratch` stage whose first step is not COPY or ADD starts from an empty image of the
  platform instead: no layer, no history, no config; only os, architecture and variant. It is
  loaded (`docker load`) and its id replaces `scratch`. Each step's image is then what it
  would be from scratch (the same layers, config and history), with the platform's
  architecture.
- A stage `FROM image`, on the classic store: when the daemon holds another platform under
  that name, the name is pulled for the platform first. On the containerd store, when the name
  is an image of several platforms (an index), the stage starts from its platform's manifest
  alone: a record of that manifest is loaded (an OCI layout with one index entry; the daemon
  has its content) and its id replaces the name. (Seen here with 28.5: a COPY right after
  `FROM index` for arm64 fails with "content ... not found" when the daemon lacks the amd64
  content, and when it has it, the image's manifest lists the amd64 layers under a config
  whose diff ids are arm64's.)
- With `pull`, every image the Dockerfile names is pulled for the platform first (the build
  then pulls nothing: it could not pull an id).
- Stages `FROM --platform=...`, stages on an earlier stage and `COPY --from=` are left as
  they are. The changed Dockerfile goes to the daemon so that it is not in the build context
  (docker_api `_replace_dockerfile`).

What no Dockerfile sent can get round is refused before any build (`refusal`): on the
containerd store, a platform whose variant is not its architecture's default (linux/arm/v6,
linux/amd64/v2) with any step but COPY and ADD, since that step's image has no variant (the
next COPY fails, and the image would not be of that platform); and a build context whose
`.dockerignore` leaves nowhere to put a changed Dockerfile.

On Podman (`DaemonInfo.podman`) the builder is buildah, which has none of the above: it gives
every step the build's platform and takes `FROM image` for it (podman 4.3 checks a local
image's platform and pulls the build's when it differs). But buildah 1.28's layer cache does
not tell platforms apart: a step is taken from the cache when the parent's top layer and the
history match, whatever the architecture (measured here: a linux/amd64 build of `FROM scratch`,
`LABEL`, `COPY` took every step, and so the architecture, from an earlier linux/arm64 build,
and an empty base image of another platform did not change that). So on Podman every
`FROM scratch` stage, for any platform the daemon's own included, starts from an empty image
of its platform whose history holds one empty entry naming it ("shipit: an empty linux/arm64
base"): each platform's steps then have a history of their own, and the cache hands no
platform another's steps. The image built has that one entry more in its history; its layers
and config are the Dockerfile's. `FROM image` stages are left as they are (their parents'
layers differ by platform).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shipit.docker_api import (
    Daemon,
    DaemonError,
    DaemonInfo,
    dockerfile_replaceable,
    platform_object,
    unreplaceable_dockerfile,
)
from shipit.stages.build.dockerfile import (
    base_images,
    built_stages,
    is_image,
    stage_index,
    stages,
    with_bases,
)

MANIFESTS_API: Final = (1, 48)  # `docker image inspect` lists an image's platforms (Docker 28)
_FILE_STEPS: Final = ("COPY", "ADD")
_OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
_OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"


class BaseUnavailable(Exception):
    """A stage's base image cannot be had for the build's platform; says which and why."""


@dataclass(frozen=True, kw_only=True)
class Start:
    """A stage whose `FROM` the SDK engine sees to: `scratch`, or the image it names."""

    stage: int  # the stage's index in the Dockerfile
    base: str  # "scratch" or the image's name, expanded


def starts(text: str, args: Mapping[str, str], target: str | None) -> tuple[Start, ...]:
    """The stages of a classic build (every one up to the target) that start from scratch
    with a step before their first COPY/ADD, or from an image (pure)."""
    every = stages(text, args)
    found = []
    for index, stage in enumerate(built_stages(every, target)):
        if stage.platform is not None or stage_index(every, stage.base, before=index) is not None:
            continue
        if stage.base.lower() == "scratch":
            if stage.steps and stage.steps[0] not in _FILE_STEPS:
                found.append(Start(stage=index, base="scratch"))
        elif is_image(stage.base):
            found.append(Start(stage=index, base=stage.base))
    return tuple(found)


def scratch_stages(text: str, args: Mapping[str, str], target: str | None) -> tuple[int, ...]:
    """The stages of a build (every one up to the target) that start `FROM scratch` (pure)."""
    every = stages(text, args)
    return tuple(
        index
        for index, stage in enumerate(built_stages(every, target))
        if stage.platform is None
        and stage.base.lower() == "scratch"
        and stage_index(every, stage.base, before=index) is None
    )


def refusal(
    info: DaemonInfo,
    text: str,
    *,
    args: Mapping[str, str],
    target: str | None,
    platforms: tuple[str, ...],
    context: Path,
    dockerfile: str,
) -> str | None:
    """Why this daemon's classic builder cannot build one of `platforms` of this Dockerfile,
    whatever the SDK engine sends; None when it can (see the module)."""
    if info.podman:  # buildah builds every platform; only a FROM scratch stage is changed
        try:
            if scratch_stages(text, args, target) and not dockerfile_replaceable(
                context, dockerfile
            ):
                return unreplaceable_dockerfile(context)
        except OSError:
            return None
        return None
    foreign = [p for p in platforms if not is_own(info, p)]
    if not foreign:
        return None
    store = f"dockerd {info.version} on the containerd image store"
    every = stages(text, args)
    built = built_stages(every, target)
    if info.containerd_store:
        committed = [word for stage in built for word in stage.steps if word not in _FILE_STEPS]
        odd = [p for p in foreign if not default_variant(p)]
        if odd and committed:
            return (
                f"{store} records no CPU variant in the image of a step but COPY and ADD"
                f" (moby's daemon/containerd/image_commit.go), so its classic builder cannot"
                f" build {odd[0]} of this Dockerfile (it has {committed[0]})"
            )
    found = starts(text, args, target)
    images = [s for s in found if s.base != "scratch"]
    if info.containerd_store and images and _api(info.api_version) < MANIFESTS_API:
        return (
            f"{store} does not list the platforms an image holds (API {info.api_version};"
            f" 1.48, Docker 28, does), so shipit cannot start the build of {foreign[0]} from"
            f" {images[0].base}'s own manifest, and the classic builder would take the"
            " daemon's platform for its steps"
        )
    changes = any(s.base == "scratch" for s in found) or (info.containerd_store and images)
    try:
        if changes and not dockerfile_replaceable(context, dockerfile):
            return unreplaceable_dockerfile(context)
    except OSError:
        return None  # the build says what is wrong with the context
    return None


class PlatformBases:
    """Makes each stage of a classic build start from an image of the build's platform."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._empty: dict[str, str] = {}  # platform -> the empty image's id

    def dockerfile(
        self,
        text: str,
        *,
        args: Mapping[str, str],
        target: str | None,
        platform: str,
        pull: bool,
        log: Callable[[str], None],
    ) -> str | None:
        """The Dockerfile to build instead of `text` for `platform`, or None when `text` is
        fine as it is. Pulls what needs pulling; DaemonError or BaseUnavailable when it cannot."""
        info = self.daemon.describe()
        if info.podman:
            return self._podman(
                text, args=args, target=target, platform=platform, pull=pull, log=log
            )
        if pull:
            for name in base_images(text, args, target=target, buildkit=False):
                self._pull(name, platform, why="`pull` is set")
        own = is_own(info, platform)
        swaps: dict[int, str] = {}
        for start in starts(text, args, target):
            if start.base == "scratch":
                if not own:
                    swaps[start.stage] = self._empty_image(info, platform)
                    log(
                        f"stage {start.stage + 1} (FROM scratch) starts from an empty {platform}"
                        f" image, {swaps[start.stage][:19]}: the classic builder gives a step"
                        " after FROM scratch the daemon's own platform"
                    )
            elif info.containerd_store:
                pinned = self._manifest_alone(start.base, platform, pulled=pull, own=own)
                if pinned is not None:
                    swaps[start.stage] = pinned
                    log(
                        f"stage {start.stage + 1} (FROM {start.base}) starts from its {platform}"
                        f" manifest alone, {pinned[:19]}: of an image of several platforms, the"
                        " classic builder takes the daemon's own for the steps"
                    )
            elif not pull:
                self._classic_image(start.base, platform, log)
        return with_bases(text, swaps) if swaps else None

    def _podman(
        self,
        text: str,
        *,
        args: Mapping[str, str],
        target: str | None,
        platform: str,
        pull: bool,
        log: Callable[[str], None],
    ) -> str | None:
        """On Podman: every FROM scratch stage starts from the marked empty image of
        `platform` (see the module)."""
        found = scratch_stages(text, args, target)
        if not found:
            return None
        if pull:  # the build then pulls nothing: buildah refuses to pull an id
            for name in base_images(text, args, target=target, buildkit=False):
                self._pull(name, platform, why="`pull` is set")
        key = f"{platform} marked"
        if key not in self._empty:
            self._empty[key] = self.daemon.load(empty_image(platform, marked=True))
        log(
            f"FROM scratch starts from an empty {platform} image, {self._empty[key][:19]}:"
            " buildah's layer cache does not tell platforms apart"
        )
        return with_bases(text, dict.fromkeys(found, self._empty[key]))

    def _pull(self, name: str, platform: str, *, why: str) -> None:
        try:
            self.daemon.pull(name, platform)
        except DaemonError as exc:
            raise BaseUnavailable(f"cannot pull {name} for {platform} ({why}): {exc}") from None

    def _empty_image(self, info: DaemonInfo, platform: str) -> str:
        if platform not in self._empty:
            checked = platform if info.containerd_store else None  # the platform check: API 1.48
            self._empty[platform] = self.daemon.load(empty_image(platform), checked)
        return self._empty[platform]

    def _classic_image(self, name: str, platform: str, log: Callable[[str], None]) -> None:
        """On the classic store: the name holds the platform's image when the build starts."""
        try:
            held = image_platform(self.daemon.inspect(name))
        except DaemonError:
            return  # not in the daemon: the builder pulls it for the build's platform
        if same_platform(held, platform):
            return
        self._pull(name, platform, why=f"the daemon holds it for {held}")
        log(f"{name} pulled for {platform} (the daemon held it for {held})")
        now = image_platform(self.daemon.inspect(name))
        if not same_platform(now, platform):
            raise BaseUnavailable(
                f"{name} pulled for {platform} is an image whose config says {now}"
            )

    def _manifest_alone(self, name: str, platform: str, *, pulled: bool, own: bool) -> str | None:
        """On the containerd store: the id of a record of `name`'s manifest for `platform`
        alone (None when `name` is that manifest already). The daemon's own platform needs
        none: the steps' containers and the parent's layers are taken for it."""
        if own:
            return None
        found = self._manifests(name)
        if found is None or _manifest_for(found[1], platform) is None:
            if pulled:
                raise BaseUnavailable(f"{name} has no {platform} image in the daemon")
            self._pull(name, platform, why="the daemon does not hold it for that platform")
            found = self._manifests(name)
        mine = _manifest_for(found[1] if found else [], platform)
        if found is None or mine is None:
            raise BaseUnavailable(f"{name} pulled for {platform} has no {platform} image")
        descriptor = mine["Descriptor"]
        if found[0] == descriptor.get("digest"):
            return None
        return self.daemon.load(manifest_record(descriptor), platform)

    def _manifests(self, name: str) -> tuple[str, list[Mapping[str, Any]]] | None:
        """The image's id and each platform's manifest, or None when the daemon has no
        image of that name."""
        try:
            inspected = self.daemon.inspect(name, manifests=True)
        except DaemonError:
            return None
        listed = inspected.get("Manifests")
        if not isinstance(listed, list):
            raise BaseUnavailable(
                f"the daemon does not list the platforms of {name} (API 1.48, Docker 28, does)"
            )
        return str(inspected.get("Id")), [m for m in listed if isinstance(m, dict)]


def _manifest_for(manifests: list[Mapping[str, Any]], platform: str) -> Mapping[str, Any] | None:
    """The manifest of `platform` among an image's, if the daemon has its content."""
    for manifest in manifests:
        held = (manifest.get("Descriptor") or {}).get("platform") or {}
        found = "/".join(
            str(x) for x in (held.get("os"), held.get("architecture"), held.get("variant")) if x
        )
        if _available_image(manifest) and found and same_platform(found, platform):
            return manifest
    return None


def _available_image(manifest: Mapping[str, Any]) -> bool:
    """A platform's image (not an attestation) whose content the daemon has."""
    return bool(manifest.get("Available")) and manifest.get("Kind", "image") == "image"


def image_platform(inspected: Mapping[str, Any]) -> str:
    """`os/architecture[/variant]` of a `docker image inspect`."""
    parts = (inspected.get("Os"), inspected.get("Architecture"), inspected.get("Variant"))
    return "/".join(str(p) for p in parts if p)


def is_own(info: DaemonInfo, platform: str) -> bool:
    """Whether `platform` is the daemon's own (its architecture, the default variant)."""
    return same_platform(f"{info.os}/{info.arch}", platform)


def same_platform(a: str, b: str) -> bool:
    return _normal(a) == _normal(b)


def default_variant(platform: str) -> bool:
    """Whether `platform` names no variant, or its architecture's default one (arm64/v8,
    arm/v7, amd64/v1), which a platform without a variant means."""
    os_name, arch, _ = _normal(platform)
    return _normal(platform) == _normal(f"{os_name}/{arch}")


_ARCH: Final = {"aarch64": "arm64", "x86_64": "amd64", "x86-64": "amd64", "armhf": "arm"}
_DEFAULT_VARIANT: Final = {"arm64": "v8", "amd64": "v1", "arm": "v7"}


def _normal(platform: str) -> tuple[str, str, str]:
    """(os, architecture, variant) as containerd's platforms.Normalize has them: Go names,
    `v` before a bare number, the default variant of an architecture stated."""
    os_name, _, rest = platform.lower().partition("/")
    arch, _, variant = rest.partition("/")
    arch = _ARCH.get(arch, arch)
    if variant.isdigit():
        variant = f"v{variant}"
    return os_name, arch, variant or _DEFAULT_VARIANT.get(arch, "")


def _api(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in version.split("."))
    except ValueError:
        return (0,)


def empty_image(platform: str, *, marked: bool = False) -> bytes:
    """An image archive that `docker load` takes on both stores (Docker's manifest.json and an
    OCI layout): one image of no layer, no history and no config, for `platform` (pure).
    `marked`: its history holds one empty entry naming the platform (for Podman, see the
    module)."""
    history = [{"created_by": f"shipit: an empty {platform} base", "empty_layer": True}]
    config = _json(
        {
            **_config_platform(platform),
            "rootfs": {"type": "layers", "diff_ids": []},
            **({"history": history} if marked else {}),
        }
    )
    config_digest = _digest(config)
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": _OCI_MANIFEST,
            "config": {"mediaType": _OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [],
        }
    )
    manifest_digest = _digest(manifest)
    descriptor = {"mediaType": _OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest)}
    docker: list[dict[str, Any]] = [
        {"Config": _blob(config_digest), "RepoTags": None, "Layers": []}
    ]
    return _archive(
        {
            "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
            "index.json": _index(descriptor),
            "manifest.json": _json(docker),
            _blob(config_digest): config,
            _blob(manifest_digest): manifest,
        }
    )


def manifest_record(descriptor: Mapping[str, Any]) -> bytes:
    """An OCI layout whose index names one manifest the daemon already holds (no blobs): loaded
    into a containerd store, a record of that manifest alone (pure)."""
    entry = {key: descriptor[key] for key in ("mediaType", "digest", "size")}
    return _archive(
        {"oci-layout": _json({"imageLayoutVersion": "1.0.0"}), "index.json": _index(entry)}
    )


def _config_platform(platform: str) -> dict[str, str]:
    found = platform_object(platform)
    return {key: found[key] for key in ("architecture", "os", "variant") if key in found}


def _index(descriptor: Mapping[str, Any]) -> bytes:
    return _json({"schemaVersion": 2, "mediaType": _OCI_INDEX, "manifests": [dict(descriptor)]})


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _blob(digest: str) -> str:
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def _archive(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            entry.mode = 0o644
            tar.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()
