"""The SDK engine: docker-py's `/build` against the run's daemon (the classic builder).

On a daemon with the containerd image store the same request goes with `version=2`, to the
daemon's BuildKit (`builds_with_buildkit` says when; `Daemon._buildkit` how): the build's
bases are pulled by the daemon first (`_bases_pulled`), and none of the classic builder's
help below is needed (BuildKit builds each platform from its own bases, a label is no step).
The rest of this docstring is the classic builder's.

The default engine (DESIGN section 8). It speaks the classic builder API: no `RUN --mount`,
no secrets, no cache export (the spec refuses those under `engine: sdk`). Several platforms
are built one after another, each with `platform=` (through the daemon's emulation for a
foreign CPU) and BuildKit's TARGET* build args, without the build cache (the classic
builder's cache ignores the platform, so it would hand one platform's layers to the next),
and each gets a local name of its own.

For a platform that is not the daemon's own, the classic builder alone gets the platform
wrong (classic_platforms.py has why, from moby's source): a step after `FROM scratch` is
recorded under the daemon's platform, so a later COPY fails ("does not match the specified
platform", Docker 20.10 and 28 alike), and a `FROM image` stage can run on another platform's
image of that name. So before each such build its stages are given bases of the platform:
an empty image of it instead of `scratch` when a step comes before the first COPY/ADD, the
image pulled for the platform (classic store) or its platform's manifest alone (containerd
store); the Dockerfile sent names them, and the build context stays the user's. The image
built is the one the Dockerfile gives (same layers, config and history) with the platform's
architecture. What the daemon cannot build at all is refused in preflight (`Engines.check_sdk`).

On Podman (`podman system service`; its builder is buildah, not the classic builder) the same
requests work, with what classic_platforms.py says of its cache: every `FROM scratch` stage
starts from a marked empty image of its platform. Its step lines are read for failures and the
memo, `network: none` is sent as Podman's own value (docker_api), and its `RepoDigests` are
not taken as registry digests (bases.py). Each platform is one build request (Podman before
5.2 does not split a comma-separated platform), with rm and forcerm (docker-py's default
leaves every step's container in Podman's storage).

Right after each platform's build, the images its Dockerfile builds on are looked up in the
daemon (image inspect: `RepoDigests` for the registry digest, `Id`), for the provenance; this
happens per platform because the classic store holds one platform of a tag at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from shipit.docker_api import (
    BuildRequest,
    ContextNarrowed,
    Daemon,
    DaemonError,
    DaemonInfo,
    StreamError,
    dockerfile_replaceable,
)
from shipit.errors import StageError
from shipit.log import Console, counted
from shipit.plan import BuildSettings, ImagePlan
from shipit.stages.build.bases import BaseImage, base_from_inspect, dockerfile_bases
from shipit.stages.build.classic_platforms import BaseUnavailable, PlatformBases
from shipit.stages.build.dockerfile import context_names, with_label_step
from shipit.stages.build.images import BuiltImage, PlatformImage, local_name, platform_args
from shipit.stages.build.memo import BuildMemo, key_now_or_later, step_ids
from shipit.stages.build.probes import EMULATION_HINT


class SdkBuilder:
    """Builds with the Docker SDK (docker-py) against the daemon `Daemon` talks to."""

    def __init__(self, daemon: Daemon, memo: BuildMemo | None = None) -> None:
        self.daemon = daemon
        self.memo = memo
        self.platform_bases = PlatformBases(daemon)

    def build(self, image: ImagePlan, console: Console) -> BuiltImage:
        platforms: tuple[str | None, ...] = image.build.platforms or (None,)
        built = tuple(
            self._one(image, platform, console, many=len(platforms) > 1) for platform in platforms
        )
        return BuiltImage(platforms=built)

    def _one(
        self, image: ImagePlan, platform: str | None, console: Console, *, many: bool
    ) -> PlatformImage:
        settings = image.build
        local_ref = local_name(image, platform if many else None)
        text = _dockerfile_text(settings)
        buildkit = self._with_buildkit(settings)
        request = BuildRequest(
            context=Path(settings.context),
            dockerfile=settings.dockerfile,
            tag=local_ref,
            target=settings.target,
            platform=platform,
            # BuildKit sets its platform args itself
            build_args={**({} if buildkit else platform_args(platform)), **settings.build_args},
            labels=settings.labels,
            pull=settings.pull,
            cache_from=settings.cache_from,
            # the classic builder's cache ignores the platform: a step cached for one platform
            # would be reused for the next, so several platforms build without the cache
            no_cache=settings.no_cache or (many and not buildkit),
            network=settings.network,
            context_names=self._context_names(text),
            buildkit=buildkit,
        )
        title = f"build {image.name} {image.version.text}" + (
            f" for {platform}" if platform else ""
        )
        with console.group(title):
            args = dict(request.build_args or {})
            key, later = key_now_or_later(self.memo, lambda: self._memo_key(request, text))
            # before the memo looks at the bases: BuildKit resolves them in their registries
            pulled = None
            if buildkit:
                pulled = self._bases_pulled(request, settings, image.name, console)
            recalled = self._recalled(
                key, args, settings, console, platform=platform, buildkit=buildkit
            )
            if recalled is None:
                sent = (
                    pulled
                    if pulled is not None
                    else _labels_in_one_step(
                        self._for_platform(request, text, image.name, console), text
                    )
                )
                log, steps = step_ids(_build_log(console))
                try:
                    image_id = self._send(sent, image.name, platform, log)
                except ContextNarrowed:
                    console.write(
                        f"image {image.name}: a base image has ONBUILD triggers, which may"
                        " read any file of the build context: the build is sent again with the"
                        " whole context"
                    )
                    key = later = None  # the memo's key covers only the files first sent
                    log, steps = step_ids(_build_log(console))
                    whole = replace(sent, context_names=None)
                    image_id = self._send(whole, image.name, platform, log)
                # after the build: it may have pulled one
                bases = self._bases(args, settings, platform, buildkit)
                if later is not None:
                    key = later.result()
                if key is not None and self.memo is not None:
                    self.memo.keep(key, image_id, steps, _ids(bases))
            else:
                image_id, bases = recalled
            refs = () if many else image.refs  # one image: tagged locally as `docker build -t`
            # a recalled image gets the build's local name too, as the build would have given it
            self._tag(image_id, (*((local_ref,) if recalled is not None else ()), *refs))
            tagged = counted(len(refs), "ref") if refs else local_ref
            console.write(f"built {image.name} as {image_id[:19]}, tagged {tagged}")
        return PlatformImage(platform=platform, image_id=image_id, local_ref=local_ref, bases=bases)

    def _send(
        self, request: BuildRequest, name: str, platform: str | None, log: Callable[[str], None]
    ) -> str:
        """The build, sent to the daemon: its image id."""
        try:
            return self.daemon.build(request, log)
        except StreamError as exc:
            where = f"{exc.step} failed" if exc.step else "failed"
            on = f" ({platform})" if platform else ""
            text = f"image {name}{on}: {where}: {exc}"
            if "exec format error" in str(exc):
                text += f"; a binary of another CPU could not run: {EMULATION_HINT}"
            raise StageError("build", text) from None
        except DaemonError as exc:
            raise StageError("build", f"image {name}: {exc}") from None

    def _recalled(
        self,
        key: str | None,
        args: dict[str, str],
        settings: BuildSettings,
        console: Console,
        *,
        platform: str | None,
        buildkit: bool,
    ) -> tuple[str, tuple[BaseImage, ...]] | None:
        """The image the memo says this build gives and the base images it was checked
        against, or None."""
        if key is None or self.memo is None:
            return None
        looked: list[tuple[BaseImage, ...]] = []

        def base_ids() -> dict[str, str | None]:
            looked.append(self._bases(args, settings, platform, buildkit))
            return _ids(looked[-1])

        image_id = self.memo.recall(key, self.daemon, base_ids)
        if image_id is None:
            return None
        console.write(
            f"the context, Dockerfile and arguments are as when the daemon built {image_id[:19]},"
            + (
                " and it still holds that image: the build would give it again, so"
                if buildkit
                else " and it holds every step of that build: its cache would give the same"
                " image, so"
            )
            + " the context was not sent"
        )
        return image_id, looked[-1]  # recall checked the bases before it answered

    def _tag(self, image_id: str, refs: Sequence[str]) -> None:
        """Tag the image as each of `refs`, side by side (on the containerd store each tag is
        15 to 20 ms of the daemon's, most of it waiting)."""

        def one(ref: str) -> None:
            repository, _, tag = ref.rpartition(":")
            self.daemon.tag(image_id, repository, tag)

        if refs:
            with ThreadPoolExecutor(max_workers=min(len(refs), 4)) as pool:
                list(pool.map(one, refs))  # the first failure, if any, is raised here

    def _with_buildkit(self, settings: BuildSettings) -> bool:
        """Whether this build goes to the daemon's BuildKit rather than its classic builder
        (`builds_with_buildkit`)."""
        try:
            return builds_with_buildkit(self.daemon.env, self.daemon.describe(), settings)
        except DaemonError:
            return False  # the build says what is wrong

    def _bases_pulled(
        self, request: BuildRequest, settings: BuildSettings, name: str, console: Console
    ) -> BuildRequest:
        """The request for the daemon's BuildKit, once the daemon has pulled every image the
        build starts from, with the credentials the docker config holds for its registry.

        On the containerd store the daemon's BuildKit resolves each base in its registry on
        every build, and builds on the image the daemon holds under that name only when that
        fails (without `pull`; buildkit source/containerimage/source.go, `ResolveImageConfig`:
        a failure in the default resolve mode falls back to the local image store). Behind the
        Engine API it has no client session, the only way it takes credentials (moby: only the
        classic builder reads `X-Registry-Config`, daemon/builder/dockerfile/imagecontext.go),
        so a base behind a login would fail to resolve. The daemon's pull first makes its own
        copy what the registry holds now: BuildKit then builds on the same image, found either
        way, and the memo's check of the bases' ids and the provenance's registry digests see
        what the build used. A pull that fails keeps the copy the daemon holds, as BuildKit's
        fallback does (not with `pull`, where it has none); with no copy, the refusal is the
        build's error."""
        info = self.daemon.describe()
        platform = request.platform or f"{info.os}/{info.arch}"
        args = dict(request.build_args or {})
        automatic = platform_args(request.platform)
        for base in dockerfile_bases(settings, args, automatic=automatic, buildkit=True):
            console.write(f"pulling base image {base} for {platform}")
            try:
                self.daemon.pull(base, platform)
            except DaemonError as exc:
                if request.pull or not _held(self.daemon, base):
                    raise StageError(
                        "build", f"image {name}: cannot pull base image {base}: {exc}"
                    ) from None
                console.write(
                    f"base image {base}: not pulled ({exc}); the build uses the one the daemon"
                    " holds, as BuildKit does when its registry does not answer"
                )
        return replace(request, pull=False)

    def _context_names(self, text: str | None) -> frozenset[str] | None:
        """What of the context a Docker daemon's classic builder is sent: the top-level
        entries its COPY and ADD name (dockerfile.context_names), not the rest (a `.git`
        folder, say), as BuildKit reads only what a build uses. Podman gets the whole context:
        its builder is buildah, whose log is not known to mark where a base image's ONBUILD
        triggers start, as the classic builder's does (the line `Daemon.build` watches for;
        on dockerd 28.5 the build closed there ran no trigger, seen in `docker events`)."""
        if text is None:
            return None
        try:
            if self.daemon.describe().podman:
                return None
        except DaemonError:
            return None  # the build says what is wrong
        return context_names(text)

    def _memo_key(self, request: BuildRequest, text: str | None) -> str | None:
        if self.memo is None or text is None:
            return None
        return self.memo.key(request, text, self.daemon.host)

    def _for_platform(
        self, request: BuildRequest, text: str | None, name: str, console: Console
    ) -> BuildRequest:
        """The request as sent: for a platform, its stages start from images of that
        platform (classic_platforms.py), and the build pulls nothing (that is done). On
        Podman, also without a platform (its FROM scratch stages: the daemon's own)."""
        if text is None:
            return request
        try:
            info = self.daemon.describe()
            platform = request.platform or (f"{info.os}/{info.arch}" if info.podman else None)
            if platform is None:
                return request
            changed = self.platform_bases.dockerfile(
                text,
                args=request.build_args or {},
                target=request.target,
                platform=platform,
                pull=request.pull,
                log=console.write,
            )
        except (DaemonError, BaseUnavailable) as exc:
            raise StageError("build", f"image {name} ({request.platform}): {exc}") from None
        return replace(request, dockerfile_text=changed, pull=False)

    def _bases(
        self, args: dict[str, str], settings: BuildSettings, platform: str | None, buildkit: bool
    ) -> tuple[BaseImage, ...]:
        """The images the build started from, as the daemon holds them now (Podman's
        RepoDigests are not registry digests: bases.py)."""
        trusted = not self.daemon.describe().podman
        found = []
        automatic = platform_args(platform) if buildkit else {}
        for name in dockerfile_bases(settings, args, automatic=automatic, buildkit=buildkit):
            try:
                inspected = self.daemon.inspect(name)
            except DaemonError:
                inspected = None
            found.append(base_from_inspect(name, inspected, repo_digests=trusted))
        return tuple(found)


_NOISE = re.compile(
    r"^( ---> (Running in |Using cache$|[0-9a-f]{12}$|$)|Removing intermediate container "
    r"|--> (Using cache [0-9a-f]{64}$|[0-9a-f]{11}$)|COMMIT |Getting image source signatures$"
    r"|Copying (blob|config) |Writing manifest to image destination$|Storing signatures$"
    r"|\[internal\] |copy /context /(: cached)?$)"
)


def _build_log(console: Console) -> Callable[[str], None]:
    """The build's lines; the classic builder's bookkeeping only with -v."""

    def show(line: str) -> None:
        if console.verbosity > 0 or not _NOISE.match(line):
            console.write(line)

    return show


def _labels_in_one_step(request: BuildRequest, text: str | None) -> BuildRequest:
    """The request with its labels as one `LABEL` step of the Dockerfile sent, instead of the
    build's `labels` (for which the classic builder adds one step, and one container, per
    label: four OCI labels took 0.4 s of a cold build on dockerd 28.5, one step 0.1 s). The
    image gets the same labels either way; where the Dockerfile cannot be sent changed, or a
    label cannot be written as it is (`dockerfile.with_label_step`), the labels go as before."""
    labels = request.labels or {}
    source = request.dockerfile_text or text
    if len(labels) < 2 or source is None:
        return request
    changed = with_label_step(source, labels, request.target)
    if changed is None or not dockerfile_replaceable(request.context, request.dockerfile):
        return request
    return replace(request, dockerfile_text=changed, labels={})


def _dockerfile_text(settings: BuildSettings) -> str | None:
    try:
        return (Path(settings.context) / settings.dockerfile).read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError:
        return None  # the build says what is wrong


def _ids(bases: tuple[BaseImage, ...]) -> dict[str, str | None]:
    """Each base image's name and the daemon's id for it, as the build memo records them."""
    return {base.name: base.image_id for base in bases}


def builds_with_buildkit(env: Mapping[str, str], info: DaemonInfo, settings: BuildSettings) -> bool:
    """Whether an SDK-engine build goes to the daemon's BuildKit (`/build?version=2`).

    As `docker build` chooses (docker/cli: `DOCKER_BUILDKIT` set to a false value means the
    classic builder, a true one BuildKit; unset, BuildKit where the daemon's `/_ping` says
    `Builder-Version: 2`, Docker 23 and later), except that, unset, only a daemon on the
    containerd image store gets BuildKit:
    there the classic builder commits a container for every step (0.55 s each on dockerd
    28.5: 19 s of a cold build of the Debian example, which BuildKit built in 7 s), while on
    the classic store the classic builder's cache and the build memo are what was measured
    fast. Podman's API builds with buildah either way. An image with `cache_from` keeps the
    classic builder: its entries are images whose layers that builder reuses, where BuildKit
    would read them as cache manifests (or inline cache) and find none in a plain image."""
    wanted = _bool_env(env.get("DOCKER_BUILDKIT"))
    if info.podman or wanted is False or settings.cache_from:
        return False
    return wanted is True or (info.containerd_store and info.builder_version == "2")


def _held(daemon: Daemon, name: str) -> bool:
    try:
        daemon.inspect(name)
    except DaemonError:
        return False
    return True


def _bool_env(value: str | None) -> bool | None:
    """A variable as Go's strconv.ParseBool reads it (docker/cli reads DOCKER_BUILDKIT so);
    None when unset or not a boolean."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None
