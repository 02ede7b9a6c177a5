"""The build stage: one image per platform, through an engine behind one interface.

- images.py: what a build yields (`BuiltImage`, one `PlatformImage` per platform) and the
  `Builder` interface every engine implements;
- sdk.py: `engine: sdk`, docker-py's classic builder (the default);
- buildx.py: `engine: buildx`, BuildKit through `docker buildx build`;
- buildah.py: `engine: buildah`, the buildah CLI with no daemon, into an OCI layout;
- contexts.py: a docker context as the builder (`builder:`): how its builds run and which
  daemon it loads into;
- dockerfile.py, bases.py: the images a build starts from (its Dockerfile's `FROM` and
  `COPY --from`) and the digests each engine resolved them to, for the provenance.

- classic_platforms.py: what the classic builder does with platforms, what the SDK engine
  sends so that each platform builds, and what it refuses.

`prepare` runs in preflight, before anything is built: it finds buildx (with the install
hint when it is missing) and asks each builder where its images will come back, all at once;
`check_sdk` then asks the run's daemon whether its classic builder can build every platform
the SDK engine's images name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from shipit import proc
from shipit.docker_api import Daemon, DaemonError
from shipit.errors import StageError
from shipit.log import Console
from shipit.plan import ImagePlan
from shipit.stages.build.buildah import BUILDAH_HINT, BuildahBuilder
from shipit.stages.build.buildx import BuildxBuilder
from shipit.stages.build.classic_platforms import refusal
from shipit.stages.build.contexts import uses_containerd_store
from shipit.stages.build.images import (
    Builder,
    BuiltImage,
    PlatformImage,
    local_name,
    platform_args,
    platform_slug,
)
from shipit.stages.build.memo import FOLDER as MEMO_FOLDER
from shipit.stages.build.memo import BuildMemo
from shipit.stages.build.probes import (
    EMULATION_HINT,
    BuilderInfo,
    check_buildx,
    default_builder_is_the_daemons,
    find_docker,
    inspect_builder,
)
from shipit.stages.build.sdk import SdkBuilder, builds_with_buildkit
from shipit.stages.export_cache import ExportCache
from shipit.stages.receive import pushes_to_shipit

__all__ = [
    "Builder",
    "BuiltImage",
    "Engines",
    "PlatformImage",
    "SdkBuilder",
    "local_name",
    "platform_slug",
]


class Engines:
    """The builders a run uses, found and checked in preflight.

    The run's own daemon (DOCKER_HOST) is connected to only when something needs it: the
    SDK engine, or a buildx builder that loads its images into it. A run whose builders are
    elsewhere (a docker context, a remote or Kubernetes builder) or that builds with buildah
    works without one.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self._docker: str | None = None
        self._buildah: str | None = None
        self._builders: dict[str | None, BuilderInfo] = {}
        self._daemons: dict[str | None, Daemon] = {}
        cache = ExportCache.from_env(env)
        self._passed = cache.root / "probes" if cache is not None else None

    @property
    def daemon(self) -> Daemon:
        """The run's own daemon, connected on first use."""
        return self.daemon_for(None)

    def daemon_for(self, host: str | None) -> Daemon:
        """The run's daemon, or a connection to the daemon a builder loaded its image into."""
        if host not in self._daemons:
            env = self.env if host is None else {**self.env, "DOCKER_HOST": host}
            self._daemons[host] = Daemon(env)
        return self._daemons[host]

    def needs_daemon(self, images: Sequence[ImagePlan]) -> bool:
        """Whether any image is built, or read back, through the run's own daemon."""
        for image in images:
            if image.build.engine == "buildah":
                continue  # no daemon at all
            if image.build.engine != "buildx":
                return True
            info = self._builders.get(image.build.builder)
            if info is not None and info.loads and info.daemon_host is None:
                return True
        return False

    def close(self) -> None:
        for daemon in self._daemons.values():
            daemon.close()

    def choose_defaults(
        self, images: Sequence[ImagePlan], console: Console
    ) -> tuple[ImagePlan, ...]:
        """The images, those whose spec names no engine built with buildx instead of the SDK
        engine when the run's daemon keeps images in the containerd image store (Docker 29's
        default on a new installation) and the buildx plugin is there; anything else is left
        as it is.

        Why: there BuildKit writes its OCI layout straight from the content store, while the
        classic builder's image has to leave the daemon (its push to `stages.receive`, or
        `docker save`) and the classic builder commits a container for every step (0.55 s
        each on that store): a cold run to three registries of a multi-stage Debian image was
        2.2x the shell loop it replaces with the SDK engine and 0.93x with buildx, on dockerd
        28.5 (benchmarks/push_fanout.py, docs/speed.md, 2026-12-07; for a 153 MB image of five
        steps both were 0.93x). An image with `cache_from` keeps the SDK engine: its entries
        are images for the classic builder, which BuildKit would read as cache manifests. A
        spec that names `engine: sdk` always gets the classic builder."""
        wanted = [
            i for i in images
            if i.build.engine == "sdk" and i.build.engine_default and not i.build.cache_from
        ]  # fmt: skip
        if not wanted:
            return tuple(images)
        try:
            info = self.daemon.describe()
            if info.podman or not info.containerd_store:
                return tuple(images)
        except DaemonError:
            return tuple(images)  # preflight's check of the daemon says what is wrong
        try:
            self._docker = self._docker or check_buildx(self.env, self._passed)
        except proc.ToolMissing:
            console.write(
                "the daemon keeps images in the containerd image store, where BuildKit is the"
                " faster builder, but docker buildx is not installed: the classic builder"
                " builds (`engine: sdk`)"
            )
            return tuple(images)
        for image in wanted:
            console.write(
                f"image {image.name}: engine buildx, the default on a daemon with the"
                " containerd image store (images come out of BuildKit as an OCI layout,"
                " not through the daemon's slow export); `engine: sdk` in the spec keeps"
                " the classic builder"
            )
        return tuple(
            replace(i, build=replace(i.build, engine="buildx")) if i in wanted else i
            for i in images
        )

    def prepare(self, images: Sequence[ImagePlan], console: Console) -> None:
        """Check every buildx builder the images name answers and can build their platforms;
        say where images come back. buildah, when an image uses it, is found (with the install
        hint when it is missing)."""
        if self._buildah is None and any(i.build.engine == "buildah" for i in images):
            self._buildah = proc.find_tool("buildah", self.env, hint=BUILDAH_HINT)
        wanted = list(
            dict.fromkeys(
                image.build.builder
                for image in images
                if image.build.engine == "buildx" and image.build.builder not in self._builders
            )
        )
        if None in wanted and not any(
            i.build.platforms for i in images if i.build.engine == "buildx" and not i.build.builder
        ) and default_builder_is_the_daemons(self.env):  # fmt: skip
            # what `buildx inspect` would say without its start (0.3 s, the longest probe):
            # the docker driver of DOCKER_HOST, whose store the SDK asks; no platforms wanted.
            # The plugin's check (a start of the CLI) runs meanwhile.
            with ThreadPoolExecutor(max_workers=1) as pool:
                version = (
                    pool.submit(check_buildx, self.env, self._passed) if not self._docker else None
                )
                store = self._default_store()
                if version is not None:
                    self._docker = version.result()
            self._builders[None] = BuilderInfo(
                name="default", driver="docker", endpoint="default", containerd_store=store
            )
            wanted.remove(None)
            self._say(self._builders[None], console)
        if wanted:
            self._inspect(wanted, console)
        for image in images:
            found = self._builders.get(image.build.builder)
            if found is None or image.build.engine != "buildx":
                continue
            missing = found.missing(image.build.platforms)
            if missing:
                raise StageError(
                    "preflight",
                    f"image {image.name}: the buildx builder {found.name} cannot build"
                    f" {', '.join(missing)} (it builds {', '.join(found.platforms)});"
                    " nothing was built",
                    hint=EMULATION_HINT,
                )

    def check_sdk(self, images: Sequence[ImagePlan]) -> None:
        """Refuse, before anything is built, a platform that the run's daemon's classic builder
        cannot build of an SDK-engine image's Dockerfile (classic_platforms.refusal)."""
        wanted = [i for i in images if i.build.engine == "sdk" and i.build.platforms]
        if not wanted:
            return
        try:
            info = self.daemon.describe()
        except DaemonError as exc:
            raise StageError("preflight", str(exc)) from None
        for image in wanted:
            settings = image.build
            if builds_with_buildkit(self.daemon.env, info, settings):
                continue  # BuildKit builds each platform from its own base
            try:
                text = (Path(settings.context) / settings.dockerfile).read_text(
                    encoding="utf-8", errors="replace"
                )
            except OSError:
                continue  # the build says what is wrong
            for platform in settings.platforms:
                reason = refusal(
                    info,
                    text,
                    args={**platform_args(platform), **settings.build_args},
                    target=settings.target,
                    platforms=(platform,),
                    context=Path(settings.context),
                    dockerfile=settings.dockerfile,
                )
                if reason is not None:
                    raise StageError(
                        "preflight",
                        f"image {image.name}: {reason}; nothing was built",
                        hint="set `engine: buildx` for this image: BuildKit builds each"
                        " platform from its own base, variant included",
                    )

    def _inspect(self, wanted: list[str | None], console: Console) -> None:
        """`docker buildx version`, every builder's `inspect` and, on a guess, `docker info` of
        the default context (what the default builder of the docker driver needs next) at
        once: each is a start of the CLI, tenths of a second that need not add up. A missing
        or too old buildx is the error shown, whatever the inspects said."""
        docker = self._docker or find_docker(self.env)
        with ThreadPoolExecutor(max_workers=2 + len(wanted)) as pool:
            version = (
                pool.submit(check_buildx, self.env, self._passed) if self._docker is None else None
            )
            default = pool.submit(self._default_store)

            def store_of(context: str | None) -> bool:
                if context == "default":
                    return default.result()
                return uses_containerd_store(docker, context, self.env)

            inspected = {
                b: pool.submit(inspect_builder, docker, b, self.env, store_of=store_of)
                for b in wanted
            }
            if version is not None:
                self._docker = version.result()
            for builder, future in inspected.items():
                info = future.result()
                self._builders[builder] = info
                self._say(info, console)

    @staticmethod
    def _say(info: BuilderInfo, console: Console) -> None:
        how = "loaded into its daemon" if info.loads else "as an OCI layout"
        console.write(f"buildx builder {info.name} ({info.driver} driver): images come back {how}")

    def _default_store(self) -> bool:
        """Whether the default context's daemon (DOCKER_HOST, the run's own daemon) keeps
        images in containerd: asked through the SDK, not by a start of the docker CLI (a
        tenth of a second or more, beside the other probes, on two cores)."""
        try:
            return self.daemon.containerd_store()
        except DaemonError as exc:
            raise StageError(
                "preflight", f"the daemon of builder context default does not answer: {exc}"
            ) from None

    def keeps_base_layers(self, image: ImagePlan) -> tuple[str, ...]:
        """The platforms `image` builds, where its engine's image holds each layer of its base
        as the base's registry stores it (BuildKit's image on the containerd store, which the
        daemon pushes to shipit, and a BuildKit OCI layout); none elsewhere, or where the
        platform is not known (stages/base_layers.py)."""
        settings = image.build
        builder = self._builders.get(settings.builder)
        if settings.engine == "sdk":
            daemon = self.daemon
        elif settings.engine == "buildx" and builder is not None and not builder.loads:
            if settings.platforms or builder.platforms:  # buildx names the native one first
                return settings.platforms or builder.platforms[:1]
            if builder.driver != "docker":
                return ()
            daemon = self.daemon_for(builder.daemon_host)  # the docker driver's: its platform
        else:
            return ()
        try:
            info = daemon.describe()
            if settings.engine == "sdk" and not (
                pushes_to_shipit(daemon) and builds_with_buildkit(self.env, info, settings)
            ):
                return ()
        except DaemonError:
            return ()
        return settings.platforms or (f"{info.os}/{info.arch}",)

    def builder(self, image: ImagePlan, workdir: Path, cache: ExportCache | None = None) -> Builder:
        """The engine that builds `image` in `workdir`; `cache` lends the layout engines what
        they wrote last time (stages.export_cache), and keeps the SDK engine's build memo."""
        settings = image.build
        if settings.engine == "sdk" and cache is None:
            cache = ExportCache.from_env(self.env)
        if settings.engine == "buildah":
            if self._buildah is None:
                raise RuntimeError("Engines.prepare() was not called for this image")  # a bug
            workdir.mkdir(parents=True, exist_ok=True)
            return BuildahBuilder(self._buildah, self.env, workdir, cache)
        if settings.engine != "buildx":
            return SdkBuilder(self.daemon, BuildMemo(cache.root / MEMO_FOLDER) if cache else None)
        if self._docker is None or settings.builder not in self._builders:
            raise RuntimeError("Engines.prepare() was not called for this image")  # a bug
        workdir.mkdir(parents=True, exist_ok=True)
        info = self._builders[settings.builder]
        return BuildxBuilder(self._docker, info, self.env, workdir, cache)
