"""The daemonless engine: the buildah CLI through the subprocess door, no Docker anywhere.

For CI runners that cannot run a privileged Docker daemon (Kubernetes executors, shared
runners). Each platform is one `buildah build` into buildah's own storage, then one
`buildah push --format v2s2` of that image into an OCI image layout in the run's work folder;
from there the image goes on as buildx's layouts do: Trivy reads the layout (`--input`), and
shipit's own client uploads its compressed layers as they are, assembles the index of
several platforms itself (one digest in every registry), signs by digest, then tags.

What the command lines rely on (buildah-build(1) and buildah-push(1) of buildah 1.28, the
version Debian 12 ships; each flag checked on it):

- `--isolation chroot` unless the spec says `isolation:` (or, with no spec key,
  BUILDAH_ISOLATION does): chroot needs no privilege to create namespaces, so it works in an
  unprivileged CI container; it runs `RUN` steps on the host's network ("reusing the host's
  control group, network, IPC, and PID namespaces"), and buildah refuses any `--network`
  other than host with it ("cannot set --network other than host with --isolation chroot"),
  which the spec turns into a located error for `network: none`.
- `--layers`: intermediate images are kept, so a rebuild is answered from them (as `docker
  build`'s cache), and `--cache-from`/`--cache-to` (a registry repository) are "ignored
  unless --layers is specified".
- Build args as `--build-arg NAME` with the value in the child's environment (buildah reads
  a value left out from there), secrets as `--secret id=ID,type=env,env=VAR` or
  `id=ID,type=file,src=FILE`: never a value on a command line. The type is always named:
  without it buildah 1.28 takes `src` for an environment variable whenever one of that name
  exists (containers/buildah#5282, reproduced here: the secret comes out empty).
- `--pull=always` for `pull: true` (Docker's `--pull`: pull even when the image is there),
  else `--pull=false` ("only pull the image if not present").
- The format, always named (so BUILDAH_FORMAT cannot change it): OCI's (`--format oci`, and
  `buildah push --format oci`), unless the Dockerfile has HEALTHCHECK, SHELL or ONBUILD, which
  the OCI image config has no place for: with `--format oci` buildah drops them ("HEALTHCHECK
  is not supported for OCI image format and will be ignored. Must use `docker` format"), and
  `buildah push --format oci` of a docker-format image drops them from the config too; such a
  Dockerfile is built in Docker's format, as `docker build` makes it (`--format docker`, then
  `--format v2s2`); any other keeps OCI's, the format buildah and Podman default to. (In
  Docker's format buildah 1.28 reused none of its `--layers` cache on a base image whose
  history has no `created` times, as a hand-made base may lack: 0 of 18 steps on the test
  suite's first mmdebstrap base, 18 of 18 once it had them.) All checked with buildah 1.28.
  An OCI layout holds a
  Docker v2s2 manifest as it is (index.json names its media type), and the index shipit
  assembles for several platforms lists each platform's manifest with its own media type.
  `--iidfile` gives the image id, and `buildah push --digestfile` the manifest's digest in
  the layout: never read from the log.
- Storage: buildah's own default (containers-storage.conf(5): /var/lib/containers/storage
  for root), or what CONTAINERS_STORAGE_CONF names; shipit passes the run's environment
  through and picks no storage of its own. The built image keeps its name there (as
  `docker build` leaves it in the daemon), under the first ref, plus the platform with
  several.

A warm `buildah build` whose every step is answered from its layer cache still takes about a
second: for each COPY buildah hashes the source files again (1.2-1.3 s for four COPYs of
48 MB each with buildah 1.28, against 0.0 s for the memo's run, whose own hashing of the
context is in a 0.55 s `shipit run`; measured here). So buildah builds have a build memo as
the SDK engine's (memo.py): when every input is as it was when buildah built image X, and its
storage still holds X and the image of every step of that build, `buildah build` would walk
its cache to X again, and X is taken without running it (then tagged as the build would tag
it). The inputs (`memo_key`):

- every path of the context folder, or, when the Dockerfile says what its COPY and ADD read
  (`dockerfile.context_names`), every path under the top-level names they name (a `.git`
  beside them is not hashed; a build whose base image has ONBUILD triggers, which may read any
  file, is then not recorded); but those its ignore files leave out for certain
  (`skipped_paths`): buildah 1.28 reads `.containerignore` or `.dockerignore` with a
  matcher of its libraries' (a fork of Docker's), whose every rule shipit does not reproduce;
  only a plain path (no wildcard) that every ignore file names, in files with no `!`
  exception, is skipped, with all below it (as Docker's matcher does); hashing more than
  buildah reads is only slower, never wrong. The ignore files' own text is hashed too;
- the Dockerfile's bytes and name, the build args, labels, target, platform and network, the
  format (`needs_docker_format`), the isolation as the build gets it, the cache flags;
- buildah itself (its path, size and time), the storage (CONTAINERS_STORAGE_CONF, its graphroot,
  runroot and driver; the user and HOME for buildah's default), every BUILDAH_* and
  CONTAINERS_* variable, and "buildah", so its records never mix with the SDK's;
- the image id of every base image (`FROM`, `COPY --from`) as the storage resolves its name now
  (checked when recalled, as the SDK memo does).

It is not used with `no_cache`, `pull` (the base may have moved in its registry),
`cache_from`/`cache_to`, build secrets or `ssh` (a RUN step's output can depend on them, and
they are not in the context), or a Dockerfile that ADDs a URL. With `--iidfile`, buildah 1.28
prints no `--> <id>` line for a step it builds (only `--> Using cache <64 hex>` for one it
finds), so a build's steps are the images its storage holds after it that it did not hold
before (one `buildah images --all` each side), with those it found in its cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from shipit import proc
from shipit.docker_api import held_in
from shipit.errors import StageError
from shipit.log import Console
from shipit.plan import BuildSettings, ImagePlan
from shipit.registry import Manifest
from shipit.spec.build import buildah_cache
from shipit.stages.build.bases import BaseImage, dockerfile_bases, resolve_bases
from shipit.stages.build.buildx import secret_values
from shipit.stages.build.dockerfile import context_names
from shipit.stages.build.images import (
    BuiltImage,
    PlatformImage,
    local_name,
    platform_args,
    platform_slug,
)
from shipit.stages.build.memo import FOLDER as MEMO_FOLDER
from shipit.stages.build.memo import (
    BuildMemo,
    FileHashes,
    HeldUnknown,
    fetches_url,
    folder_digest,
    inputs_digest,
    key_now_or_later,
)
from shipit.stages.build.probes import EMULATION_HINT, PROBE_TIMEOUT
from shipit.stages.export import ExportError
from shipit.stages.export_cache import ExportCache, write_atomically
from shipit.stages.layout import load_image, platform_manifests

BUILD_TIMEOUT: Final = 6 * 3600.0
PUSH_TIMEOUT: Final = 3600.0
BUILDAH_HINT: Final = (
    "install buildah (Debian/Ubuntu: `apt-get install buildah`; Fedora: `dnf install buildah`),"
    " or use shipit's own image, which has it"
)
DEFAULT_ISOLATION: Final = "chroot"
REF_NAME: Final = "org.opencontainers.image.ref.name"
# the instructions whose settings only Docker's image config holds (buildah 1.28's warnings)
_DOCKER_ONLY: Final = re.compile(r"^\s*(HEALTHCHECK|SHELL|ONBUILD)\s", re.IGNORECASE | re.MULTILINE)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CACHED = re.compile(r"^--> Using cache ([0-9a-f]{64})$")  # a step found in the layer cache
_WILDCARD = re.compile(r"[*?\[\]\\]")  # an ignore pattern that is no plain path
_ENVIRONMENT: Final = ("BUILDAH_", "CONTAINERS_")  # variables buildah or its libraries read


class BuildahBuilder:
    """Builds with `buildah build`, one platform at a time, into one OCI layout."""

    def __init__(
        self,
        buildah: str,
        env: Mapping[str, str],
        workdir: Path,
        cache: ExportCache | None = None,
    ) -> None:
        self.buildah = buildah
        self.env = env
        self.workdir = workdir
        self.cache = cache
        self.memo = BuildMemo(cache.root / MEMO_FOLDER) if cache is not None else None
        self.storage = Storage(buildah, env)
        self._triggers: set[str] = set()  # base images seen with ONBUILD triggers

    def build(self, image: ImagePlan, console: Console) -> BuiltImage:
        chosen: tuple[str | None, ...] = image.build.platforms or (None,)
        many = len(chosen) > 1
        layout = self.workdir / "oci"
        return BuiltImage(
            platforms=tuple(
                self._platform(image, platform, layout, console, many=many) for platform in chosen
            )
        )

    def _platform(
        self, image: ImagePlan, platform: str | None, layout: Path, console: Console, *, many: bool
    ) -> PlatformImage:
        settings = image.build
        slug = platform_slug(platform)
        iidfile = self.workdir / f"iid-{slug}"
        digestfile = self.workdir / f"digest-{slug}"
        tag = local_name(image, platform if many else None)
        argv, child = build_command(
            self.buildah, settings, platform, tag=tag, iidfile=iidfile, env=self.env
        )
        which = f" for {platform}" if platform else ""
        with console.group(f"build {image.name} {image.version.text} with buildah{which}"):
            key, later = key_now_or_later(self.memo, lambda: self._memo_key(settings, platform))
            recalled = self._memo_recall(key, settings, platform, tag, console)
            if recalled is None:
                held = self._held(key is not None or later is not None)
                image_id, cached = self._run(
                    argv, child, iidfile, settings, name=image.name, which=which, console=console
                )
                bases = self._bases(settings, platform)  # after the build: it may have pulled
                if later is not None:
                    key = later.result()
                self._memo_keep(key, image_id, held, cached, bases)
            else:
                image_id, bases = recalled
            digest = self._recalled(image_id, layout, slug)
            if digest is not None:
                console.write(
                    f"{image_id[:19]} was written into a layout before and is kept: not pushed"
                    " into one again"
                )
            else:
                digest = self._push(
                    image_id,
                    layout,
                    slug,
                    digestfile,
                    child,
                    name=image.name,
                    which=which,
                    docker=needs_docker_format(settings),
                )
            try:
                [found] = platform_manifests(layout, digest)
            except (ExportError, ValueError) as exc:
                raise StageError("build", f"image {image.name}{which}: {exc}") from None
            if self.cache is not None:
                with contextlib.suppress(OSError, ValueError, ExportError):  # never fails a run
                    config = load_image(layout, found).config
                    self.cache.keep_layout(
                        image_id, layout, found.manifest.blobs()[1:], manifest=found.manifest,
                        config=config,
                    )  # fmt: skip
            if platform is not None and found.platform != platform:
                raise StageError(
                    "build",
                    f"image {image.name}: buildah built {found.platform}, not {platform}",
                    hint=EMULATION_HINT,
                )
            console.write(f"built {image.name}{which}: {image_id} (manifest {digest})")
        return PlatformImage(platform=platform, layout=layout, manifest=digest, bases=bases)

    def _run(
        self,
        argv: list[str],
        child: Mapping[str, str],
        iidfile: Path,
        settings: BuildSettings,
        *,
        name: str,
        which: str,
        console: Console,
    ) -> tuple[str, list[str]]:
        """`buildah build`: the image id it wrote to `iidfile`, and the steps it found in its
        layer cache."""
        steps = StepTracker()
        try:
            proc.stream(
                argv,
                env=child,
                on_line=steps.line_handler(console),
                secrets=secret_values(settings, self.env),
                timeout=BUILD_TIMEOUT,
            )
        except proc.CommandError as exc:
            raise StageError("build", steps.failure(name, which, exc)) from None
        return _read_digest(iidfile, name, "--iidfile", prefix="sha256:"), steps.cached

    def _memo_key(self, settings: BuildSettings, platform: str | None) -> str | None:
        if self.memo is None:
            return None
        hashes = self.memo.file_hashes(Path(settings.context))
        key = memo_key(self.buildah, settings, platform, self.env, hashes)
        hashes.save()
        return key

    def _memo_recall(
        self,
        key: str | None,
        settings: BuildSettings,
        platform: str | None,
        tag: str,
        console: Console,
    ) -> tuple[str, tuple[BaseImage, ...]] | None:
        """The image the memo says this build gives, tagged `tag` as the build would tag it,
        and the base images it was checked against; None: the build is to run."""
        if key is None or self.memo is None:
            return None
        looked: list[tuple[BaseImage, ...]] = []

        def base_ids() -> dict[str, str | None]:
            looked.append(self._bases(settings, platform))
            return _ids(looked[-1])

        image_id = self.memo.recall_from(key, self.storage, base_ids)
        if image_id is None:
            return None
        tagged = proc.run(
            [self.buildah, "tag", image_id, tag], env=self.env, timeout=PROBE_TIMEOUT, check=False
        )
        if tagged.returncode != 0:
            return None  # the build tags it (or says why it cannot)
        console.write(
            f"the context, Dockerfile and arguments are as when buildah built {image_id[:19]},"
            " and its storage holds every step of that build: its cache would give the same"
            " image, so buildah build was not run"
        )
        return image_id, looked[-1]  # recall checked the bases before it answered

    def _held(self, recording: bool) -> set[str] | None:
        """The images the storage holds before a build that the memo is to record."""
        if not recording:
            return None
        try:
            return self.storage.image_ids()
        except HeldUnknown:
            return None

    def _memo_keep(
        self,
        key: str | None,
        image_id: str,
        before: set[str] | None,
        cached: list[str],
        bases: tuple[BaseImage, ...],
    ) -> None:
        """Record a build: its steps are the images it made (held now, not before) and those
        it found in the cache (see the module docstring). Never fails the build."""
        if key is None or before is None or self.memo is None:
            return
        if any(base.name in self._triggers for base in bases):
            return  # its ONBUILD triggers may read any file: the key may not cover them
        try:
            made = self.storage.image_ids() - before
        except HeldUnknown:
            return
        steps = {x.removeprefix("sha256:") for x in made} | set(cached)
        self.memo.keep(key, image_id, sorted(steps), _ids(bases))

    def _push(
        self,
        image_id: str,
        layout: Path,
        slug: str,
        digestfile: Path,
        child: Mapping[str, str],
        *,
        name: str,
        which: str,
        docker: bool,
    ) -> str:
        """`buildah push` of the image into the layout: its manifest's digest."""
        try:
            proc.run(
                push_command(
                    self.buildah,
                    image_id,
                    layout,
                    slug,
                    digestfile,
                    docker=docker,
                ),
                env=child,
                timeout=PUSH_TIMEOUT,
            )
        except proc.CommandError as exc:
            raise StageError(
                "build", f"image {name}{which}: buildah push to {layout} failed: {exc}"
            ) from None
        return _read_digest(digestfile, name, "push --digestfile")

    def _recalled(self, image_id: str, layout: Path, slug: str) -> str | None:
        """The manifest digest of `image_id` written into the layout from the export cache,
        as `buildah push` would write it (index.json names it `slug`); None when the cache
        does not hold it, or what it holds no longer does."""
        if self.cache is None:
            return None
        recalled = self.cache.recall_layout(image_id, layout)
        if recalled is None:
            return None
        manifest, lent = recalled
        if not lent.held():
            return None
        try:
            name_in_index(layout, manifest, slug)
        except (OSError, ValueError):
            return None
        return manifest.digest

    def _bases(self, settings: BuildSettings, platform: str | None) -> tuple[BaseImage, ...]:
        names = dockerfile_bases(
            settings, settings.build_args, automatic=platform_args(platform), buildkit=False
        )
        return resolve_bases(names, platform, {}, self._inspect)

    def _inspect(self, name: str) -> dict[str, object] | None:
        """A base image as buildah's storage holds it, in the shape of Docker's inspect
        (`RepoDigests`, `Id`) that bases.py reads; an image named `localhost/...` was made
        here, so its digest is no registry's."""
        argv = [self.buildah, "inspect", "--type", "image", name]
        result = proc.run(argv, env=self.env, timeout=PROBE_TIMEOUT, check=False)
        if result.returncode != 0:
            return None
        try:
            document = json.loads(result.stdout)
        except ValueError:
            return None
        if onbuild_triggers(document):
            self._triggers.add(name)
        return inspect_record(name, document)


class Storage:
    """buildah's storage as the build memo asks it (memo.HeldImages)."""

    def __init__(self, buildah: str, env: Mapping[str, str]) -> None:
        self.buildah = buildah
        self.env = env

    def holds(self, image_id: str, steps: Sequence[str]) -> bool:
        return held_in(self.image_ids(), image_id, steps)

    def image_ids(self) -> set[str]:
        """The id of every image it holds, intermediate ones included, in one call."""
        argv = [self.buildah, "images", "--all", "--quiet", "--no-trunc"]
        result = proc.run(argv, env=self.env, timeout=PROBE_TIMEOUT, check=False)
        if result.returncode != 0:
            raise HeldUnknown(result.stderr.strip())
        return set(_DIGEST.findall(result.stdout))


def memo_key(
    buildah: str,
    settings: BuildSettings,
    platform: str | None,
    env: Mapping[str, str],
    hashes: FileHashes | None = None,
) -> str | None:
    """The build memo's key of one platform's build (the inputs: module docstring), or None
    when the memo is not to be used for it."""
    if settings.no_cache or settings.pull or settings.cache_from or settings.cache_to:
        return None
    if settings.secrets or settings.ssh:
        return None  # a RUN step's output may depend on them
    context = Path(settings.context)
    try:
        dockerfile = (context / settings.dockerfile).read_bytes()
        text = dockerfile.decode("utf-8", errors="replace")
        if fetches_url(text):
            return None
        ignore, skipped = skipped_paths(context, settings.dockerfile)
        files = folder_digest(context, skipped, hashes, context_names(text))
        tool = os.stat(buildah)
    except (OSError, ValueError):
        return None  # the build says what is wrong with the context
    isolation = settings.isolation or env.get("BUILDAH_ISOLATION") or DEFAULT_ISOLATION
    inputs = {
        "engine": "buildah",
        "buildah": [buildah, tool.st_size, tool.st_mtime_ns],
        "storage": storage_identity(env),
        "environment": sorted((k, v) for k, v in env.items() if k.startswith(_ENVIRONMENT)),
        "files": files,
        "ignore": ignore,
        "dockerfile": settings.dockerfile,
        "dockerfile_digest": hashlib.sha256(dockerfile).hexdigest(),
        "target": settings.target,
        "platform": platform,
        "args": sorted(settings.build_args.items()),
        "labels": sorted(settings.labels.items()),
        "network": settings.network,
        "format": "docker" if needs_docker_format(settings) else "oci",
        "isolation": isolation,
        "cache": cache_flags(settings),
    }
    return inputs_digest(inputs)


def skipped_paths(context: Path, dockerfile: str) -> tuple[list[str], frozenset[str]]:
    """The context's ignore files (name and text digest) and the paths that every one of them
    leaves out for certain: a line that is a plain path (no wildcard, `#` comment or `!`
    exception in the file), cleaned as Docker's and buildah's readers clean it. None is
    skipped when an ignore file beside the Dockerfile exists (a later buildah may read that
    one instead) or when a file has an exception. OSError when one cannot be read."""
    beside = [f"{dockerfile}.containerignore", f"{dockerfile}.dockerignore"]
    if any((context / name).exists() for name in beside):
        return ["beside the Dockerfile"], frozenset()
    ignore: list[str] = []
    sets: list[set[str]] = []
    for name in (".containerignore", ".dockerignore"):
        try:
            data = (context / name).read_bytes()
        except FileNotFoundError:
            continue
        ignore.append(f"{name} {hashlib.sha256(data).hexdigest()}")
        lines = [x.strip() for x in data.decode("utf-8", errors="replace").splitlines()]
        patterns = [x for x in lines if x and not x.startswith("#")]
        if any(x.startswith("!") for x in patterns):
            return ignore, frozenset()
        sets.append({_plain(x) for x in patterns if not _WILDCARD.search(x)} - {"", "."})
    return ignore, frozenset(set.intersection(*sets) if sets else set())


def _plain(pattern: str) -> str:
    """A plain pattern as the matchers clean it: `filepath.Clean`, no leading `/`."""
    return os.path.normpath(pattern).lstrip("/")


def storage_identity(env: Mapping[str, str]) -> dict[str, object]:
    """What names the storage buildah builds into (containers-storage.conf(5)): the file
    CONTAINERS_STORAGE_CONF names and its graphroot, runroot and driver; else buildah's
    default, which depends on the user (root's /var/lib/containers/storage, or under HOME)."""
    found: dict[str, object] = {"uid": os.getuid(), "home": env.get("HOME")}
    found["xdg"] = [env.get("XDG_CONFIG_HOME"), env.get("XDG_DATA_HOME")]
    conf = env.get("CONTAINERS_STORAGE_CONF")
    if conf:
        found["conf"] = conf
        try:
            table = tomllib.loads(Path(conf).read_text(encoding="utf-8")).get("storage", {})
        except (OSError, ValueError):
            table = {}
        if isinstance(table, dict):
            found.update({k: str(table.get(k)) for k in ("graphroot", "runroot", "driver")})
    return found


def onbuild_triggers(document: object) -> bool:
    """Whether `buildah inspect --type image` shows ONBUILD triggers (`Docker.config.OnBuild`:
    only a Docker-format image keeps them; buildah 1.28 drops them from an OCI one)."""
    docker = document.get("Docker") if isinstance(document, dict) else None
    config = docker.get("config") if isinstance(docker, dict) else None
    return isinstance(config, dict) and bool(config.get("OnBuild"))


def inspect_record(name: str, document: object) -> dict[str, object] | None:
    """`buildah inspect --type image NAME` as the record bases.py reads."""
    if not isinstance(document, dict):
        return None
    found: dict[str, object] = {}
    image_id = document.get("FromImageID")
    if isinstance(image_id, str) and re.fullmatch(r"[0-9a-f]{64}", image_id):
        found["Id"] = f"sha256:{image_id}"
    digest = document.get("FromImageDigest")
    repository = name.partition("@")[0]
    if ":" in repository.rpartition("/")[2]:
        repository = repository.rpartition(":")[0]
    if (
        isinstance(digest, str)
        and _DIGEST.fullmatch(digest)
        and not repository.startswith("localhost/")
    ):
        found["RepoDigests"] = [f"{repository}@{digest}"]
    return found


def build_command(
    buildah: str,
    settings: BuildSettings,
    platform: str | None,
    *,
    tag: str,
    iidfile: Path,
    env: Mapping[str, str],
) -> tuple[list[str], dict[str, str]]:
    """The `buildah build` argv of one platform and the child's environment.

    Values that could be secret never go into argv (see the module docstring). Flags as
    buildah-build(1) of buildah 1.28 documents them.
    """
    child = dict(env)
    image_format = "docker" if needs_docker_format(settings) else "oci"
    argv = [buildah, "build", "--format", image_format, "--layers", "--iidfile", str(iidfile)]
    # --isolation: chroot, oci or rootless; BUILDAH_ISOLATION is read when the flag is absent
    isolation = settings.isolation or (None if env.get("BUILDAH_ISOLATION") else DEFAULT_ISOLATION)
    if isolation:
        argv += ["--isolation", isolation]
    argv += ["--file", str(Path(settings.context) / settings.dockerfile), "--tag", tag]
    if platform:
        argv += ["--platform", platform]
    if settings.target:
        argv += ["--target", settings.target]
    for name, value in settings.build_args.items():
        child[name] = value  # --build-arg NAME: the value comes from the environment
        argv += ["--build-arg", name]
    for name, value in settings.labels.items():
        argv += ["--label", f"{name}={value}"]
    for secret in settings.secrets:
        # --secret id=ID,type=env,env=VAR | id=ID,type=file,src=PATH (the type named: #5282)
        source = f"type=env,env={secret.env}" if secret.env else f"type=file,src={secret.file}"
        argv += ["--secret", f"id={secret.id},{source}"]
    for entry in settings.ssh:
        argv += ["--ssh", entry]  # --ssh default|id[=socket|key[,key]]
    argv += cache_flags(settings)
    if settings.network and settings.network != "default":
        argv += ["--network", settings.network]  # none | host (default: private, or chroot's)
    if settings.no_cache:
        argv.append("--no-cache")
    # --pull=always: pull even when present; =false: "only pull the image if not present"
    argv.append("--pull=always" if settings.pull else "--pull=false")
    argv.append(settings.context)
    return argv, child


def cache_flags(settings: BuildSettings) -> list[str]:
    """`--cache-from`/`--cache-to` with the registry repository of each cache entry (they
    need `--layers`, which the build always has)."""
    flags = []
    for flag, entries in (("--cache-from", settings.cache_from), ("--cache-to", settings.cache_to)):
        for entry in entries:
            repository = buildah_cache(entry)
            if repository is None:  # the spec refused it already: a bug if it comes here
                raise ValueError(f"{entry!r} is no cache buildah can use")
            flags += [flag, repository]
    return flags


def needs_docker_format(settings: BuildSettings) -> bool:
    """Whether the Dockerfile has an instruction only Docker's image config can hold
    (HEALTHCHECK, SHELL, ONBUILD; see the module docstring)."""
    try:
        text = (Path(settings.context) / settings.dockerfile).read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError:
        return False  # the build says what is wrong
    return _DOCKER_ONLY.search(text) is not None


def push_command(
    buildah: str, image_id: str, layout: Path, name: str, digestfile: Path, *, docker: bool
) -> list[str]:
    """`buildah push` of one built image into the OCI layout `layout`, under `name` (each
    platform its own entry of the layout's index.json), its manifest digest to `digestfile`;
    in Docker's v2s2 format when it was built in Docker's."""
    return [
        buildah, "push", "--format", "v2s2" if docker else "oci", "--digestfile",
        str(digestfile), "--quiet", image_id, f"oci:{layout}:{name}",
    ]  # fmt: skip


def name_in_index(layout: Path, manifest: Manifest, name: str) -> None:
    """Name `manifest` `name` in the layout's index.json, as `buildah push ... oci:DIR:NAME`
    does (the annotation `org.opencontainers.image.ref.name`, image-spec annotations.md), an
    entry of that name replaced; the `oci-layout` file written when the layout has none."""
    marker = layout / "oci-layout"
    if not marker.exists():
        write_atomically(marker, b'{"imageLayoutVersion": "1.0.0"}')
    path = layout / "index.json"
    index: dict[str, Any] = json.loads(path.read_bytes()) if path.exists() else {}
    index.setdefault("schemaVersion", 2)
    entries = [
        entry
        for entry in index.get("manifests", [])
        if (entry.get("annotations") or {}).get(REF_NAME) != name
    ]
    entries.append({
        "mediaType": manifest.media_type, "digest": manifest.digest, "size": len(manifest.data),
        "annotations": {REF_NAME: name},
    })  # fmt: skip
    index["manifests"] = entries
    write_atomically(path, json.dumps(index).encode())


def _read_digest(path: Path, name: str, what: str, *, prefix: str = "") -> str:
    try:
        text = prefix + path.read_text(encoding="utf-8").strip().removeprefix(prefix)
    except OSError as exc:
        raise StageError("build", f"image {name}: buildah wrote no {what} file: {exc}") from None
    if not _DIGEST.fullmatch(text):
        raise StageError("build", f"image {name}: buildah's {what} file holds no digest")
    return text


class StepTracker:
    """Names the failing step from buildah's log: `STEP 4/6: RUN make`, then `Error: building
    at STEP "RUN make": while running runtime: exit status 2`. A Dockerfile of several stages
    gets each step's stage in front, `[2/2] STEP 3/3: COPY missing /m` (buildah 1.28)."""

    _STEP = re.compile(r"^(?:\[\d+/\d+\] )?STEP (\d+/\d+): (.*)$")
    _ERROR = re.compile(r'^Error: building at STEP "(.*)": (.*)$')

    def __init__(self) -> None:
        self.last: str | None = None
        self.failed: tuple[str, str] | None = None
        self.cached: list[str] = []  # the steps found in the layer cache (`--> Using cache`)

    def line_handler(self, console: Console) -> Callable[[str], None]:
        def handle(line: str) -> None:
            if match := self._STEP.match(line):
                self.last = match[2]
            elif match := _CACHED.match(line):
                self.cached.append(match[1])
            elif (match := self._ERROR.match(line)) and self.failed is None:
                self.failed = (match[1], match[2])
            if line.strip():
                console.write(line)

        return handle

    def failure(self, name: str, which: str, exc: proc.CommandError) -> str:
        if exc.timed_out:
            return f"image {name}: buildah did not finish within {BUILD_TIMEOUT / 3600:.0f} h"
        if self.failed is not None:
            step, reason = self.failed
            text = f"image {name}{which}: step {step} failed: {reason}"
        elif self.last is not None:
            tail = (exc.result.stderr or exc.result.stdout).strip().splitlines()
            text = f"image {name}{which}: step {self.last} failed: {tail[-1] if tail else ''}"
        else:
            text = f"image {name}{which}: buildah failed: {exc}"
        if "exec format error" in exc.result.stdout + exc.result.stderr:
            text += f"; a binary of another CPU could not run: {EMULATION_HINT}"
        return text


def _ids(bases: tuple[BaseImage, ...]) -> dict[str, str | None]:
    """Each base image's name and the storage's id for it, as the build memo records them."""
    return {base.name: base.image_id for base in bases}
