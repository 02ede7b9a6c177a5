"""The BuildKit engine: `docker buildx build` through the subprocess door.

What build-push-action users rely on (`RUN --mount=type=cache|secret|ssh`, heredocs, build
secrets, cache export, several platforms) comes with it. How the image comes back depends on
the builder (facts checked with buildx 0.29 against Docker 20.10 and 28.5):

- the `docker` driver on a daemon with the classic image store cannot export OCI layouts or
  build several platforms at once ("OCI exporter is not supported for the docker driver",
  "Multi-platform build is not supported for the docker driver"), so each platform is one
  `--load`ed build into that daemon, and the export stage takes it out with `docker save`
  (no way around that daemon round trip there: `--output type=docker,dest=FILE` is refused
  the same way, "Docker exporter is not supported for the docker driver", and
  `type=tar` writes the final file system, flattened, without config or layers);
- any other case (the containerd image store, a docker-container, remote or kubernetes
  builder) writes one OCI layout for every platform at once (`--output
  type=oci,tar=false,dest=DIR`), whose compressed layers are pushed as they are.

`builder:` may name a buildx builder or a docker context (another daemon, remote or local).
A layout comes back to shipit from any of them; a docker-driver builder on a classic store
loads into its own daemon, which `docker context inspect` names, and shipit reads the image
back from that daemon, never from the run's own (DOCKER_HOST), which may not even exist.

Digests come from buildx's `--metadata-file` (`containerimage.digest`), never from its log.
Attestations are turned off (`--provenance=false --sbom=false`): BuildKit would put them into
the image index as `unknown/unknown` entries; shipit attaches provenance next to the image.
Secrets reach BuildKit as `--secret id=ID,env=VAR` or `id=ID,src=FILE` (a name, never the
value), and build args as `--build-arg NAME` with the value in the child's environment, so
no value is ever on a command line.

The base images a build used, for the provenance: BuildKit's progress names each one it
pulled with the digest it resolved (`#5 [linux/arm64 1/2] FROM docker.io/library/alpine:3.19
@sha256:...`); one taken from the daemon's own store is named without a digest, and is then
looked up with `docker image inspect` in the builder's daemon (RepoDigests).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from shipit import proc
from shipit.errors import StageError, UsageError
from shipit.log import Console, counted
from shipit.plan import BuildSettings, ImagePlan
from shipit.stages.build.bases import BaseImage, dockerfile_bases, normalize_ref, resolve_bases
from shipit.stages.build.contexts import builder_argv, daemon_cli, last_line
from shipit.stages.build.images import (
    BuiltImage,
    PlatformImage,
    local_name,
    platform_args,
    platform_slug,
)
from shipit.stages.build.probes import EMULATION_HINT, PROBE_TIMEOUT, BuilderInfo, direct
from shipit.stages.export import ExportError
from shipit.stages.export_cache import ExportCache
from shipit.stages.layout import platform_manifests

BUILD_TIMEOUT: Final = 6 * 3600.0
# the environment buildx reads: no default attestations, no provenance in the metadata file
# (docs/reference/buildx_build.md: BUILDX_NO_DEFAULT_ATTESTATIONS, BUILDX_METADATA_PROVENANCE)
_QUIET_ENV: Final = {
    "BUILDX_NO_DEFAULT_ATTESTATIONS": "1",
    "BUILDX_METADATA_PROVENANCE": "disabled",
}
# Docker 28's embedded BuildKit writing a two-platform OCI layout (tar=false) prints lines like
# "ERROR: (*service).Write failed: rpc error: ... locked for 2ms ...: unavailable" and still
# exits 0 with every blob intact (checked blob by blob): noise, shown only with -v
_NOISE = re.compile(r"^ERROR: \(\*service\)\.Write failed: .* locked for .*: unavailable$")


class BuildxBuilder:
    """Builds with `docker buildx build`; see the module docstring for how images come back."""

    def __init__(
        self,
        docker: str,
        info: BuilderInfo,
        env: Mapping[str, str],
        workdir: Path,
        cache: ExportCache | None = None,
    ) -> None:
        self.docker = docker
        self.info = info
        self.env = env
        self.workdir = workdir
        self.cache = cache

    def build(self, image: ImagePlan, console: Console) -> BuiltImage:
        platforms = image.build.platforms
        if self.info.loads:
            chosen: tuple[str | None, ...] = platforms or (None,)
            many = len(chosen) > 1
            return BuiltImage(
                platforms=tuple(self._load(image, p, console, many=many) for p in chosen)
            )
        return self._layout(image, console)

    def _load(
        self, image: ImagePlan, platform: str | None, console: Console, *, many: bool
    ) -> PlatformImage:
        local_ref = local_name(image, platform if many else None)
        metadata = self.workdir / f"metadata-{platform_slug(platform)}.json"
        output = ["--load", "--tag", local_ref]
        if not many:
            for ref in image.refs[1:]:
                output += ["--tag", ref]
        digest, steps = self._run(image, (platform,) if platform else (), output, metadata, console)
        return PlatformImage(
            platform=platform,
            image_id=digest,
            local_ref=local_ref,
            docker_host=self.info.daemon_host,
            bases=self._bases(image, platform, steps),
        )

    def _layout(self, image: ImagePlan, console: Console, *, lend: bool = True) -> BuiltImage:
        dest = self.workdir / "oci"
        metadata = self.workdir / "metadata.json"
        output = ["--output", f"type=oci,tar=false,dest={dest}"]
        key = self._layout_key(image)
        # BuildKit skips the blobs the folder holds: lent what this image's last layout wrote
        lent = self.cache.lend(key, dest) if self.cache is not None and lend else None
        if lent is not None and lent.digests:
            console.write(
                f"{counted(len(lent.digests), 'layer')} of this image's last build lent to"
                " BuildKit from the export cache (it skips writing what the layout holds)"
            )
        try:
            digest, steps = self._run(image, image.build.platforms, output, metadata, console)
        finally:
            held = lent.held() if lent is not None else True
        if not held:
            console.write("a layer kept from an earlier build no longer holds: building again")
            shutil.rmtree(dest, ignore_errors=True)
            return self._layout(image, console, lend=False)
        try:
            found = platform_manifests(dest, digest)
        except ExportError as exc:
            raise StageError("build", f"image {image.name}: {exc}") from None
        if self.cache is not None:
            layers = [layer for p in found for layer in p.manifest.blobs()[1:]]
            with contextlib.suppress(OSError, ValueError):  # a cache never fails a run
                self.cache.keep_layout(key, dest, layers)
        wanted = image.build.platforms
        got = [p.platform for p in found]
        if wanted and sorted(got) != sorted(wanted):
            raise StageError(
                "build",
                f"image {image.name}: buildx wrote {', '.join(got)}, not {', '.join(wanted)}",
            )
        many = len(found) > 1 or bool(wanted)
        return BuiltImage(
            platforms=tuple(
                PlatformImage(
                    platform=p.platform if many else None,
                    layout=dest,
                    manifest=p.manifest.digest,
                    bases=self._bases(image, p.platform, steps),
                )
                for p in found
            ),
            layout_digest=digest,
        )

    def _layout_key(self, image: ImagePlan) -> str:
        """What the layouts of one image's builds are kept under: the builder and what the
        spec says to build (a layer of another image's layout would only be lent in vain)."""
        settings = image.build
        context = str(Path(settings.context).resolve())
        what = [self.info.name, self.info.endpoint, image.name, context, settings.dockerfile,
                settings.target, list(settings.platforms)]  # fmt: skip
        return "sha256:" + hashlib.sha256(json.dumps(what).encode()).hexdigest()

    def _run(
        self,
        image: ImagePlan,
        platforms: tuple[str, ...],
        output: list[str],
        metadata: Path,
        console: Console,
    ) -> tuple[str, _StepTracker]:
        settings = image.build
        argv, child = build_command(self.docker, settings, self.info, platforms, self.env)
        at = argv.index("build") + 1
        argv[at:at] = [*output, "--metadata-file", str(metadata)]
        for secret in secret_values(settings, self.env):
            console.secret(secret)
        which = f" for {', '.join(platforms)}" if platforms else ""
        steps = _StepTracker()
        with console.group(f"build {image.name} {image.version.text} with buildx{which}"):
            try:
                proc.stream(
                    argv,
                    env=child,
                    on_line=steps.line_handler(console),
                    secrets=secret_values(settings, self.env),
                    timeout=BUILD_TIMEOUT,
                )
            except proc.CommandError as exc:
                raise StageError("build", steps.failure(image.name, which, exc)) from None
            digest = read_metadata(metadata, image.name)
            console.write(f"built {image.name}{which}: {digest}")
        return digest, steps

    def _bases(
        self, image: ImagePlan, platform: str | None, steps: _StepTracker
    ) -> tuple[BaseImage, ...]:
        """The images the build of `platform` started from: as BuildKit resolved them, else
        as the builder's daemon holds them."""
        settings = image.build
        names = dockerfile_bases(
            settings, settings.build_args, automatic=platform_args(platform), buildkit=True
        )
        return resolve_bases(names, platform, steps.resolved, self._inspect)

    def _inspect(self, name: str) -> dict[str, object] | None:
        argv, child = daemon_cli(self.docker, self.info.endpoint, self.env)
        argv += ["image", "inspect", "--format", "{{json .}}", name]
        result = proc.run(argv, env=child, timeout=PROBE_TIMEOUT, check=False)
        if result.returncode != 0:
            return None
        try:
            document = json.loads(result.stdout)
        except ValueError:
            return None
        return document if isinstance(document, dict) else None


def build_command(
    docker: str,
    settings: BuildSettings,
    info: BuilderInfo,
    platforms: tuple[str, ...],
    env: Mapping[str, str],
) -> tuple[list[str], dict[str, str]]:
    """The `docker buildx build` argv (outputs go in after `build`) and the child's environment.

    Values that could be secret never go into argv: build args travel in the environment
    (`--build-arg NAME` takes the value from there), secrets by variable name or file path.
    A docker-driver builder is a docker context, chosen with `docker --context NAME`: buildx
    refuses `--builder NAME` for a context that is not the current one ("use `docker
    --context=NAME buildx` to switch to context", buildx 0.29); any other with `--builder`.
    """
    chosen, child = direct(
        builder_argv(docker, driver=info.driver, endpoint=info.endpoint, name=info.name), env
    )
    child |= _QUIET_ENV
    argv = [*chosen, "build", "--progress", "plain"]
    argv += ["--provenance=false", "--sbom=false"]
    argv += ["--file", str(Path(settings.context) / settings.dockerfile)]
    if platforms:
        argv += ["--platform", ",".join(platforms)]
    if settings.target:
        argv += ["--target", settings.target]
    for name, value in settings.build_args.items():
        child[name] = value
        argv += ["--build-arg", name]
    for name, value in settings.labels.items():
        argv += ["--label", f"{name}={value}"]
    for secret in settings.secrets:
        source = f"env={secret.env}" if secret.env else f"src={secret.file}"
        argv += ["--secret", f"id={secret.id},{source}"]
    for entry in settings.ssh:
        argv += ["--ssh", entry]
    for entry in settings.cache_from:
        argv += ["--cache-from", entry]
    for entry in settings.cache_to:
        argv += ["--cache-to", entry]
    if settings.network:
        argv += ["--network", settings.network]
    if settings.no_cache:
        argv.append("--no-cache")
    if settings.pull:
        argv.append("--pull")
    argv.append(settings.context)
    return argv, child


def secret_values(settings: BuildSettings, env: Mapping[str, str]) -> list[str]:
    """The values of the build's env secrets (to mask), plus its build arg values named like
    secrets are not guessed at: only what `secrets:` names is treated as secret."""
    found = []
    for secret in settings.secrets:
        if secret.env is not None:
            value = env.get(secret.env)
            if not value:
                raise UsageError(
                    f"build secret {secret.id}: the variable {secret.env} is not set",
                    hint="set it in the job's environment (a masked CI/CD variable or secret)",
                )
            found.append(value)
    return found


def read_metadata(path: Path, name: str) -> str:
    """`containerimage.digest` from buildx's metadata file: the image (or index) it made."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageError("build", f"image {name}: buildx wrote no metadata file: {exc}") from None
    digest = document.get("containerimage.digest") if isinstance(document, dict) else None
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise StageError(
            "build", f"image {name}: buildx's metadata file has no containerimage.digest"
        )
    return digest


class _StepTracker:
    """Names the failing step from BuildKit's plain progress (`#7 [2/3] RUN make`, then
    `#7 ERROR: ...`), so a failure says which step broke, as the SDK engine does."""

    _STEP = re.compile(r"^#(\d+) (\[[^\]]+\] .*)$")
    _ERROR = re.compile(r"^#(\d+) ERROR: (.*)$")
    # `#5 [linux/arm64 build 1/3] FROM docker.io/library/alpine:3.19@sha256:...`
    _FROM = re.compile(r"^#\d+ \[([^\]]*)\] FROM (\S+)@(sha256:[0-9a-f]{64})$")

    def __init__(self) -> None:
        self.titles: dict[str, str] = {}
        self.failed: tuple[str, str] | None = None
        # (platform or None, normalised name) -> the digest BuildKit resolved it to
        self.resolved: dict[tuple[str | None, str], str] = {}

    def line_handler(self, console: Console) -> Callable[[str], None]:
        def handle(line: str) -> None:
            if match := self._FROM.match(line):
                words = match[1].split()  # [PLATFORM] [STAGE] N/M
                first = words[0] if len(words) > 1 else ""
                platform = first if "/" in first else None
                self.resolved[(platform, normalize_ref(match[2]))] = match[3]
            if match := self._STEP.match(line):
                self.titles.setdefault(match[1], match[2])
            elif (match := self._ERROR.match(line)) and self.failed is None:
                self.failed = (self.titles.get(match[1], f"step #{match[1]}"), match[2])
            if console.verbosity > 0 or not (_NOISE.match(line) or not line.strip()):
                console.write(line)

        return handle

    def failure(self, name: str, which: str, exc: proc.CommandError) -> str:
        if exc.timed_out:
            return f"image {name}: buildx did not finish within {BUILD_TIMEOUT / 3600:.0f} h"
        if self.failed is not None:
            step, reason = self.failed
            text = f"image {name}{which}: step {step} failed: {reason}"
        else:
            text = f"image {name}{which}: buildx failed: {last_line(exc.result)}"
        if "exec format error" in exc.result.stdout:
            text += f"; a binary of another CPU could not run: {EMULATION_HINT}"
        return text
