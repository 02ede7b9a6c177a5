"""The one module that talks to the Docker SDK (docker-py). Nothing else imports `docker`.

It honours DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH and the usual docker
config (`config.json` auths, `credsStore`, `credHelpers`), all read from the environment
mapping it is given. Streams from the daemon are read chunk by chunk and an error inside a
stream is a failure, even when the HTTP status said 200 (docker-py reports build and push
errors that way). shipit never pushes through the daemon: it exports the image once
(`save`) and uploads it itself (see stages/push.py).

Podman's Docker API (`podman system service`) answers too: `describe` says so (its version's
components name "Podman Engine"), and `build` speaks it where it differs. Its compat build
handler reads `networkmode` as buildah's own policy, "NetworkDefault", "NetworkDisabled" or
"NetworkEnabled" (anything else is NetworkDefault), and runs RUN steps in the host's network
namespace unless told otherwise (podman v4.3.1 pkg/api/handlers/compat/images_build.go,
`parseNetworkConfigurationPolicy` and the `nsoptions` default); buildah v1.28's run_linux.go
`configureNamespaces` gives a NetworkDisabled step a network namespace of its own with no
network in it. So `network: none` is sent to Podman as "NetworkDisabled". Its log names steps
`STEP n/N: ...` where Docker's says `Step n/N : ...`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import os
import posixpath
import queue
import re
import secrets
import stat
import tarfile
import threading
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import docker
import docker.auth
import docker.errors
import docker.utils
import requests.exceptions
import urllib3.exceptions
from docker.api.build import process_dockerfile
from docker.utils.build import PatternMatcher, create_archive, exclude_paths

from shipit import buildkit_status, log

_log = log.get(__name__)
_STEP = re.compile(r"^(?:Step (\d+/\d+) :|STEP (\d+/\d+):) (.*)$")  # Docker's, Podman's
_PODMAN: Final = "Podman Engine"  # the version's component that names Podman
# the classic builder's line before it runs a base image's ONBUILD triggers (moby's
# builder/dockerfile: "# Executing %d build %s...\n" in 20.10's dispatchers.go; dockerd 28.5
# sends "# Executing 1 build trigger" without the dots)
_TRIGGERS = re.compile(r"# Executing \d+ build triggers?\b")
_PIPE_CHUNK = 1024 * 1024
_PIPE_DEPTH = 8
_MOST_STAGES: Final = 16  # histories walked for one record before the listing decides


class DaemonError(Exception):
    """The Docker daemon is unreachable or refused a request; says which and why."""


class ContextNarrowed(Exception):
    """A build sent with only part of its context (`BuildRequest.context_names`) began to run
    a base image's ONBUILD triggers, which may read any file of the context: the build was
    stopped there, and is to be sent again with the whole context."""


class StreamError(DaemonError):
    """An error reported inside a build stream (the HTTP status said 200)."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    context: Path
    dockerfile: str
    tag: str  # the local name the image gets (repository:tag)
    target: str | None = None
    platform: str | None = None
    build_args: Mapping[str, str] | None = None
    labels: Mapping[str, str] | None = None
    pull: bool = False
    cache_from: tuple[str, ...] = ()
    no_cache: bool = False
    network: str | None = None
    # the Dockerfile to build instead of the context's (the SDK engine's platform bases); sent
    # so that the daemon drops it from the build context, which stays the user's
    dockerfile_text: str | None = None
    # only these top-level entries of the context are sent, with the Dockerfile and
    # .dockerignore: what the Dockerfile's COPY and ADD can read (dockerfile.context_names);
    # None, or a link among them that leads elsewhere in the context: the whole context
    context_names: frozenset[str] | None = None
    # built by the daemon's BuildKit (`/build?version=2`, no client session) instead of its
    # classic builder
    buildkit: bool = False


@dataclass(frozen=True, kw_only=True)
class DaemonInfo:
    """What a daemon is: its version, its API version, and where it keeps images."""

    version: str  # e.g. 20.10.24+dfsg1
    api_version: str  # e.g. 1.41
    containerd_store: bool  # images in containerd (Docker 24+ with the snapshotter feature)
    os: str = "linux"  # the daemon's own platform
    arch: str = "amd64"
    podman: bool = False  # Podman's Docker API (`podman system service`), builds by buildah
    # the builder a client is to use by default, as `/_ping`'s `Builder-Version` says: "2"
    # BuildKit (Docker 23 and later), "1" the classic builder (a daemon.json with
    # `"features": {"buildkit": false}`), "" unsaid (Docker 20.10's default); BuildKit
    # answers `version=2` whatever it says (checked on dockerd 20.10 and 28.5)
    builder_version: str = ""


@dataclass(frozen=True, kw_only=True)
class RegistryAuth:
    """Credentials for a registry, as the daemon takes them. Never logged."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"RegistryAuth(username={self.username!r}, password='********')"


class Daemon:
    """A connection to the Docker daemon, made from an environment mapping."""

    def __init__(self, env: Mapping[str, str], *, timeout: int = 600) -> None:
        self.env = env
        host = self.host
        if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
            # checked here: docker-py would leak the socket of the failed connection
            raise DaemonError(
                f"the Docker daemon does not answer at {host} (no such socket:"
                " is dockerd running? is DOCKER_HOST right?)"
            )
        try:
            self._client = docker.from_env(environment=dict(env), timeout=timeout)
        except docker.errors.DockerException as exc:
            raise DaemonError(_daemon_message(exc, env)) from None
        self._info: DaemonInfo | None = None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host(self) -> str:
        return self.env.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def ping(self) -> str:
        """Check the daemon answers; returns its version."""
        try:
            self._client.ping()
            version = self._client.version()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DaemonError(_daemon_message(exc, self.env)) from None
        return str(version.get("Version", "unknown"))

    def build(self, request: BuildRequest, on_line: Callable[[str], None]) -> str:
        """Build an image; stream its log to `on_line`; return the image id.

        The context is docker-py's own archive (its `.dockerignore` rules, its tar), sent to
        the daemon while it is written (`_ContextPipe`) rather than written whole to a
        temporary file first, as docker-py's `build(path=...)` does.

        With `context_names`, only part of the context is sent; if the build then starts to
        run a base image's ONBUILD triggers (which can read any file), the request is closed
        there (the daemon cancels a build whose client went away) and `ContextNarrowed` is
        raised.
        """
        try:
            pipe = _ContextPipe(
                request.context,
                request.dockerfile,
                request.dockerfile_text,
                names=request.context_names,
                buildkit=request.buildkit,
            )
        except OSError as exc:
            raise StreamError(f"cannot read the build context: {exc}") from None
        if pipe.narrowed:
            _log.debug(
                "sending the build context's %s (what the Dockerfile's COPY and ADD name), not"
                " the rest of it",
                ", ".join(sorted(request.context_names or ())),
            )
        kwargs: dict[str, Any] = {
            "fileobj": pipe.chunks(),
            "custom_context": True,
            "dockerfile": pipe.dockerfile,
            "tag": request.tag,
            "rm": True,
            "forcerm": True,
            "decode": True,
            "pull": request.pull,
            "buildargs": dict(request.build_args or {}),
            "labels": dict(request.labels or {}),
        }
        kwargs.update(self._options(request))
        stream: Generator[Mapping[str, Any], None, None] | None = None
        try:
            pipe.start()
            if request.buildkit:
                stream = self._buildkit(kwargs)
                return _read_buildkit(stream, on_line, narrowed=pipe.narrowed)
            stream = self._client.api.build(**kwargs)
            return _read_build(stream, _watching(on_line) if pipe.narrowed else on_line)
        except ContextError as exc:
            raise StreamError(f"cannot send the build context: {exc}") from None
        except docker.errors.APIError as exc:
            raise StreamError(_api_message(exc)) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DaemonError(_daemon_message(exc, self.env)) from None
        except urllib3.exceptions.HTTPError as exc:  # the stream broke off (daemon gone)
            raise DaemonError(
                f"the connection to the Docker daemon at {self.host} broke off during the"
                f" build ({exc}): did dockerd stop or restart?"
            ) from None
        finally:
            pipe.abandon()
            if stream is not None:
                stream.close()  # ends docker-py's reader and with it the connection

    def _buildkit(self, kwargs: Mapping[str, Any]) -> Generator[Mapping[str, Any], None, None]:
        """The build request with `version=2`, which docker-py's `build()` cannot send: the
        daemon's BuildKit then builds from the context in the request's body, with no client
        session (moby's daemon/internal/builder-next/builder.go: the body is served to the
        Dockerfile frontend as its `context`; target, filename, build args, labels, no-cache,
        pull, platform, cache-from and network none/host are passed on as frontend attributes).
        No registry credentials go along: BuildKit takes them only from a session (the classic
        builder alone reads `X-Registry-Config`, daemon/builder/dockerfile/imagecontext.go),
        which is why `SdkBuilder` has the daemon pull the bases first (`_bases_pulled`)."""
        api = self._client.api
        params: dict[str, Any] = {
            "version": "2",
            "t": kwargs["tag"],
            "dockerfile": kwargs["dockerfile"],
            "pull": "1" if kwargs.get("pull") else None,
            "nocache": "1" if kwargs.get("nocache") else None,
            "target": kwargs.get("target"),
            "platform": kwargs.get("platform"),
            "networkmode": kwargs.get("network_mode"),
            "buildargs": json.dumps(kwargs.get("buildargs") or {}),
            "labels": json.dumps(kwargs.get("labels") or {}),
            "cachefrom": json.dumps(kwargs["cache_from"]) if kwargs.get("cache_from") else None,
        }
        response = api._post(
            api._url("/build"),
            data=kwargs["fileobj"],
            params={k: v for k, v in params.items() if v is not None},
            headers={"Content-Type": "application/x-tar"},
            stream=True,
            timeout=None,
        )
        api._raise_for_status(response)
        stream: Generator[Mapping[str, Any], None, None] = api._stream_helper(response, decode=True)
        return stream

    def _options(self, request: BuildRequest) -> dict[str, Any]:
        """The build's optional parameters, as docker-py names them."""
        found: dict[str, Any] = {}
        if request.target:
            found["target"] = request.target
        if request.platform:
            found["platform"] = request.platform
        if request.cache_from:
            found["cache_from"] = list(request.cache_from)
        if request.no_cache:
            found["nocache"] = True
        if request.network and not self.describe().podman:
            found["network_mode"] = request.network
        elif request.network == "none":  # Podman: buildah's own policy (see the module)
            found["network_mode"] = "NetworkDisabled"
        return found

    def containerd_store(self) -> bool:
        """Whether the daemon keeps images in containerd (Docker 24+ with the
        containerd-snapshotter feature; `docker info` shows driver-type
        io.containerd.snapshotter.v1 in DriverStatus) rather than its classic store."""
        try:
            info = self._client.info()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DaemonError(_daemon_message(exc, self.env)) from None
        return _snapshotter(info)

    def describe(self) -> DaemonInfo:
        """The daemon's version, API version, image store and platform (asked once)."""
        if self._info is None:
            api = self._client.api
            try:
                version = self._client.version()
                info = self._client.info()
                builder = api._get(api._url("/_ping")).headers.get("Builder-Version")
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise DaemonError(_daemon_message(exc, self.env)) from None
            self._info = DaemonInfo(
                version=str(version.get("Version", "unknown")),
                api_version=str(version.get("ApiVersion") or self._client.api.api_version),
                containerd_store=_snapshotter(info),
                os=str(version.get("Os") or "linux"),
                arch=str(version.get("Arch") or "amd64"),
                podman=_is_podman(version),
                builder_version=str(builder or ""),
            )
        return self._info

    def pull(self, name: str, platform: str) -> None:
        """Pull `name` for `platform`, with the credentials the docker config of the run's
        environment holds for its registry (`config_auth`; docker-py alone would read the
        config of the process's own HOME)."""
        try:
            repository, _ = docker.utils.parse_repository_tag(name)
            registry, _ = docker.auth.resolve_repository_name(repository)
            found = config_auth(registry, self.env)
            auth = {"username": found.username, "password": found.password} if found else None
            stream = self._client.api.pull(
                name, platform=platform, stream=True, decode=True, auth_config=auth
            )
            _drain(stream)
        except docker.errors.APIError as exc:
            raise DaemonError(_api_message(exc)) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DaemonError(_daemon_message(exc, self.env)) from None

    def load(self, archive: bytes, platform: str | None = None) -> str:
        """`docker load` of an image archive; the id of the image it held. With `platform`
        (API 1.48, Docker 28) the daemon unpacks that platform and checks the image has it."""
        api = self._client.api
        params = {"quiet": "1"}
        if platform:
            params["platform"] = json.dumps(platform_object(platform))
        loaded: str | None = None
        try:
            # docker-py's load_image() takes no platform: its own request, with the parameter
            response = api._post(api._url("/images/load"), data=archive, params=params, stream=True)
            for chunk in api._stream_helper(response, decode=True):
                if "error" in chunk or "errorDetail" in chunk:
                    detail = chunk.get("errorDetail") or {}
                    raise DaemonError(str(chunk.get("error") or detail.get("message")).strip())
                text = str(chunk.get("stream") or "").strip()
                loaded = (
                    text.partition("Loaded image ID: ")[2]
                    or text.partition("Loaded image: ")[2]
                    or loaded
                )
        except docker.errors.APIError as exc:
            raise DaemonError(_api_message(exc)) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DaemonError(_daemon_message(exc, self.env)) from None
        if loaded is None:
            raise DaemonError("the daemon loaded the archive but named no image")
        return loaded if loaded.startswith("sha256:") else str(self.inspect(loaded)["Id"])

    def inspect(self, image: str, *, manifests: bool = False) -> Mapping[str, Any]:
        """`docker image inspect`; with `manifests` (API 1.48, Docker 28 on the containerd
        store) also `Manifests`: each platform's manifest, whether the daemon has its content."""
        api = self._client.api
        try:
            if not manifests:
                return dict(api.inspect_image(image))
            # docker-py's inspect_image() takes no parameters: its own request, with one
            url = api._url("/images/{0}/json", image)
            return dict(api._result(api._get(url, params={"manifests": "1"}), True))
        except docker.errors.DockerException as exc:
            raise DaemonError(str(exc)) from None

    def save(self, image: str) -> Iterator[bytes]:
        """The image as `docker save` writes it: a tar stream, read chunk by chunk."""
        try:
            yield from self._client.api.get_image(image, chunk_size=1024 * 1024)
        except docker.errors.DockerException as exc:
            raise DaemonError(f"cannot export {image} from the daemon: {exc}") from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise DaemonError(
                f"the export of {image} from the Docker daemon at {self.host} broke off: {exc}"
            ) from None

    def push(self, ref: str) -> None:
        """`docker push` of `ref` to a registry that asks no credentials (shipit's own
        receiver, `stages.receive`); raises `DaemonError` with the daemon's message."""
        repository, _, tag = ref.rpartition(":")
        try:
            # an empty X-Registry-Auth: nothing from the user's docker config goes along
            stream = self._client.api.push(
                repository, tag=tag, stream=True, decode=True, auth_config={}
            )
            _drain(stream)
        except docker.errors.APIError as exc:
            raise DaemonError(_api_message(exc)) from None
        except (
            docker.errors.DockerException,
            requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError,
        ) as exc:
            raise DaemonError(_daemon_message(exc, self.env)) from None

    def holds(self, image_id: str, steps: Sequence[str]) -> bool:
        """Whether the daemon holds `image_id` and an image for each of `steps` (ids, or their
        first hex digits as a build printed them): what the build memo asks (memo.HeldImages).

        First from the histories of the image and of the last step of each other stage
        (`GET /images/{id}/history` names each image of the chain the daemon holds, and
        `<missing>` from the first one it does not): one or two requests of 40 ms where the
        listing of every image takes 0.25 to 0.4 s on the containerd image store (dockerd
        28.5, 20 to 60 images, measured 2026-12-07). An image that is gone settles it; where
        the histories do not, the listing does (`held_in`): Podman's history names one image
        per layer, so the image and its steps that add no layer (`USER`, `EXPOSE`) go unnamed
        there (podman 4.3, checked 2026-12-07)."""
        try:
            walked = self._walk_histories(image_id, steps)
        except docker.errors.NotFound:
            return False  # the image, or a stage's last step, is gone
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DaemonError(_daemon_message(exc, self.env)) from None
        return walked or held_in(self.image_ids(), image_id, steps)

    def _walk_histories(self, image_id: str, steps: Sequence[str]) -> bool:
        """Whether the chains of `image_id` and of the latest step outside every chain seen
        so far (another stage's last step) name every step; False when they do not."""
        seen: set[str] = set()
        asked: set[str] = set()
        tip = image_id
        for _ in range(_MOST_STAGES):
            asked.add(tip)
            for entry in self._client.api.history(tip):
                found = str(entry.get("Id") or "")
                if found.startswith("sha256:"):
                    seen.add(found.removeprefix("sha256:"))
            if image_id.removeprefix("sha256:") not in seen:
                return False
            missing = [s for s in steps if not any(x.startswith(s) for x in seen)]
            if not missing:
                return True
            tip = missing[-1]
            if tip in asked:
                return False
        return False

    def image_ids(self) -> set[str]:
        """The id of every image the daemon holds, intermediate ones included (`images -aq`)."""
        try:
            return {str(x) for x in self._client.api.images(all=True, quiet=True)}
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DaemonError(_daemon_message(exc, self.env)) from None

    def tag(self, image: str, repository: str, tag: str) -> None:
        try:
            self._client.api.tag(image, repository, tag, force=True)
        except docker.errors.DockerException as exc:
            raise DaemonError(f"cannot tag {image} as {repository}:{tag}: {exc}") from None

    def untag(self, ref: str) -> None:
        try:
            self._client.api.remove_image(ref, noprune=True)
        except docker.errors.DockerException as exc:
            _log.debug("could not remove the local tag %s: %s", ref, exc)


def held_in(ids: Collection[str], image_id: str, steps: Sequence[str]) -> bool:
    """Whether the ids of every image a store holds (intermediate ones included) take in
    `image_id` and every step (a step is held when an image id starts with it)."""
    if image_id not in ids:
        return False
    short = {x.removeprefix("sha256:")[:n] for x in ids for n in {len(s) for s in steps}}
    return all(step in short for step in steps)


def context_paths(
    context: Path, dockerfile: str, names: frozenset[str] | None = None
) -> tuple[list[str], str | None]:
    """What `build` sends of `context`: the paths docker-py's archive holds (after
    `.dockerignore`; with `names`, those of them `_narrowed` keeps), sorted, and the
    Dockerfile's text when it lies outside the context (it is then added to the archive under
    a name of its own). OSError if it cannot be read."""
    pipe = _ContextPipe(context, dockerfile, names=names)
    return pipe.files, pipe.dockerfile_entry[1]


def _narrowed(
    root: str, files: list[str], names: frozenset[str], kept: set[str]
) -> list[str] | None:
    """The paths of `files` (sorted, relative to `root`) under the top-level `names`, with the
    paths `kept`; None when a link among them leads out of `names` (`links_within`), or when
    nothing would be left out."""
    found = [path for path in files if path.split("/", 1)[0] in names or path in kept]
    if len(found) == len(files) or not links_within(root, found, names):
        return None
    return found


def links_within(root: str, paths: Iterable[str], names: frozenset[str]) -> bool:
    """Whether every link among `paths` (relative to `root`) leads to a path under the
    top-level `names`: a builder follows a source's links within the context (moby's
    FollowSymlinkInScope; an absolute target is taken from the context's root), so a link out
    of them would need its target too."""
    for path in paths:
        full = os.path.join(root, path)
        if not os.path.islink(full):
            continue
        target = os.readlink(full)
        where = posixpath.normpath(
            target.lstrip("/")
            if target.startswith("/")
            else posixpath.join(posixpath.dirname(path), target)
        )
        if where.split("/", 1)[0] not in names:
            return False
    return True


def dockerfile_replaceable(context: Path, dockerfile: str) -> bool:
    """Whether `build` can send a Dockerfile of shipit's (`BuildRequest.dockerfile_text`) for
    this context with the build context left as it is (`_replace_dockerfile`). OSError if
    the context cannot be read."""
    pipe = _ContextPipe(context, dockerfile)
    root = os.path.abspath(str(context))
    return _replace_dockerfile(root, pipe.dockerfile_entry, pipe.exclude, "") is not None


def unreplaceable_dockerfile(context: Path) -> str:
    return (
        f"the build context {context} has a .dockerignore that excludes nothing a Dockerfile"
        " of shipit's could be named, and not the Dockerfile itself: the daemon would keep"
        " that Dockerfile in the build context (a `COPY .` would copy it); add the"
        " Dockerfile's name to .dockerignore"
    )


@dataclass(frozen=True, kw_only=True)
class _Replaced:
    name: str  # the Dockerfile the build names
    files: list[str]  # the context's paths, as the archive holds them (sorted)
    extra: list[tuple[str, str]]  # (name, text) added to the archive, or written over a path


def _replace_dockerfile(
    root: str, entry: tuple[str | None, str | None], exclude: list[str] | None, text: str
) -> _Replaced | None:
    """Where a Dockerfile of shipit's goes in the archive so that the daemon builds it and then
    drops it from the build context, which stays as the user's; None when nowhere can.

    The daemon reads the Dockerfile, then removes it and `.dockerignore` from the build
    context when the archive's `.dockerignore` excludes them (moby's builder/remotecontext/
    detect.go, removeDockerfile, in 20.10 and 28 alike); docker-py excludes the rest itself,
    and always sends the context's own Dockerfile and `.dockerignore`. So the text goes
    1. over the context's own Dockerfile, when `.dockerignore` excludes it;
    2. when the context has no `.dockerignore`, under a name of its own, with a
       `.dockerignore` that excludes that name and itself (what docker-py does with a
       Dockerfile from outside the context);
    3. else under a name that `.dockerignore`, left as it is, already excludes and that
       nothing in the context has.
    """
    patterns = list(exclude or [])
    own = os.path.normpath(entry[0]) if entry[0] and entry[1] is None else None
    files = sorted(exclude_paths(root, list(patterns), dockerfile=own or entry[0]))
    matcher = PatternMatcher(patterns)
    if own is not None and ".dockerignore" in files and matcher.matches(own):
        return _Replaced(name=own, files=files, extra=[(own, text)])
    if ".dockerignore" not in files:
        name = f".dockerfile.{secrets.token_hex(20)}"
        ignore = "\n".join([*(patterns or [".dockerignore"]), name])
        return _Replaced(name=name, files=files, extra=[(".dockerignore", ignore), (name, text)])
    hidden = _ignored_name(patterns, set(files), matcher)
    return None if hidden is None else _Replaced(name=hidden, files=files, extra=[(hidden, text)])


def _ignored_name(patterns: list[str], taken: set[str], matcher: PatternMatcher) -> str | None:
    """A top-level name that `patterns` exclude and that the context does not hold: one of
    the patterns with its wildcards filled in (`*.log` gives `<random>.log`)."""
    token = f"shipit-dockerfile-{secrets.token_hex(8)}"
    for pattern in patterns:
        if pattern.startswith("!") or any(c in pattern for c in "[\\"):
            continue
        name = pattern.strip("/")
        while name.startswith("**/"):
            name = name[3:]
        name = name.replace("**", token).replace("*", token).replace("?", "x")
        if not name or "/" in name or name in (".", "..", ".dockerignore") or name in taken:
            continue
        if matcher.matches(name):
            return name
    return None


def platform_object(platform: str) -> dict[str, str]:
    """`linux/arm/v7` as the OCI platform object the API takes: os, architecture, variant."""
    os_name, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    found = {"os": os_name, "architecture": arch}
    if variant:
        found["variant"] = variant
    return found


def _is_podman(version: Mapping[str, Any]) -> bool:
    components = version.get("Components") or []
    return any(isinstance(c, dict) and c.get("Name") == _PODMAN for c in components)


def _snapshotter(info: Mapping[str, Any]) -> bool:
    status = info.get("DriverStatus") or []
    return any(
        isinstance(pair, list) and "io.containerd.snapshotter" in " ".join(map(str, pair))
        for pair in status
    )


class ContextError(Exception):
    """The build context could not be read (a file that vanished or cannot be read)."""


class _ContextPipe:
    """A build context written by docker-py's `utils.tar` in one thread while the request
    body reads it in another: at most `_PIPE_DEPTH` chunks of `_PIPE_CHUNK` bytes in between,
    so the daemon unpacks the context while the rest is still being read from disk.

    With `replacement`, the archive holds that Dockerfile instead of the context's, placed so
    that the daemon drops it from the build context (`_replace_dockerfile`). With `names`, it
    holds only the paths `_narrowed` keeps of those (`narrowed` says whether it did)."""

    def __init__(
        self,
        context: Path,
        dockerfile: str,
        replacement: str | None = None,
        *,
        names: frozenset[str] | None = None,
        buildkit: bool = False,
    ) -> None:
        self._context = str(context)
        self._buildkit = buildkit
        ignore = context / ".dockerignore"
        self._exclude: list[str] | None = None
        if ignore.is_file():  # read as docker-py's build(path=...) reads it
            lines = [line.strip() for line in ignore.read_text().splitlines()]
            self._exclude = [line for line in lines if line and not line.startswith("#")]
        # (name, None) inside the context; (a random name, its text) for one outside it
        self._dockerfile = process_dockerfile(dockerfile, self._context)
        self._replaced: _Replaced | None = None
        if replacement is not None:
            self._replaced = _replace_dockerfile(
                os.path.abspath(self._context), self.dockerfile_entry, self._exclude, replacement
            )
            if self._replaced is None:
                raise StreamError(unreplaceable_dockerfile(context))
        self._files: list[str] | None = None  # None: docker-py's tar chooses, as it always did
        self.narrowed = False
        if names is not None:
            files = self.files
            kept = {".dockerignore", *(e[0] for e in self._extra())}
            if (own := self.dockerfile_entry[0]) and self.dockerfile_entry[1] is None:
                kept.add(os.path.normpath(own))
            only = _narrowed(os.path.abspath(self._context), files, names, kept)
            self.narrowed = only is not None
            self._files = only
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_PIPE_DEPTH)
        self._buffer = bytearray()
        self._offset = 0
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="shipit-context", daemon=True)

    @property
    def dockerfile(self) -> str | None:
        if self._replaced is not None:
            return self._replaced.name
        name = self._dockerfile[0]
        return str(name) if name else None

    @property
    def dockerfile_entry(self) -> tuple[str | None, str | None]:
        """The Dockerfile's name in the archive, and its text when it is not in the context."""
        name, text = self._dockerfile
        return (str(name) if name else None), (str(text) if text is not None else None)

    @property
    def exclude(self) -> list[str] | None:
        return self._exclude

    @property
    def files(self) -> list[str]:
        """The context's paths the archive holds, sorted (extra files aside)."""
        if self._files is not None:
            return self._files
        if self._replaced is not None:
            return self._replaced.files
        root = os.path.abspath(self._context)  # as docker.utils.tar reads it
        name = self.dockerfile_entry[0]
        return sorted(exclude_paths(root, list(self._exclude or []), dockerfile=name))

    def _extra(self) -> list[tuple[str, str]]:
        """The files the archive adds: shipit's Dockerfile, or one from outside the context
        with its `.dockerignore` (as docker.utils.tar adds them)."""
        if self._replaced is not None:
            return self._replaced.extra
        name, text = self.dockerfile_entry
        if text is None or name is None:
            return []
        ignore = "\n".join([*(self._exclude or [".dockerignore"]), name])
        return [(".dockerignore", ignore), (name, text)]

    def start(self) -> None:
        self._thread.start()

    def _produce(self) -> None:
        try:
            if self._buildkit:
                _archive_for_buildkit(
                    os.path.abspath(self._context), self.files, self, self._extra()
                )
            elif self._replaced is None and self._files is None:
                docker.utils.tar(
                    self._context, exclude=self._exclude, dockerfile=self._dockerfile, fileobj=self
                )
            else:
                create_archive(
                    os.path.abspath(self._context),
                    files=self.files,
                    fileobj=self,
                    extra_files=self._extra(),
                )
            if self._buffer:
                self._put(bytes(self._buffer))
            self._put(None)
        except ContextError:
            return  # abandoned: nobody reads any more
        except Exception as exc:  # handed to the reader, which reports it
            with contextlib.suppress(ContextError):
                self._put(exc)

    def write(self, data: bytes) -> int:
        """What tarfile writes; sent on in chunks of `_PIPE_CHUNK`."""
        self._buffer += data
        self._offset += len(data)
        if len(self._buffer) >= _PIPE_CHUNK:
            self._put(bytes(self._buffer))
            self._buffer.clear()
        return len(data)

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._offset  # docker-py rewinds the archive it wrote: here, nothing to do

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._abandoned.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.2)
                return
        raise ContextError("the daemon stopped reading the build context")

    def chunks(self) -> Iterator[bytes]:
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise ContextError(str(item)) from item
            yield item

    def abandon(self) -> None:
        """Stop the writer if the request ended early (no-op once the context is sent)."""
        self._abandoned.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()


def _archive_for_buildkit(
    root: str, files: Sequence[str], out: Any, extra: Sequence[tuple[str, str]]
) -> None:
    """The context as docker-py's `create_archive` writes it (the same paths, extra files
    last and overriding), but with a first member whose header stands alone in 512 bytes.

    The daemon's BuildKit takes a request body for an archive only when Go's tar reader finds
    a header in its first 1024 bytes (buildkit frontend/dockerui/context.go, `isArchive` over a
    1024-byte range); anything else is read as the Dockerfile itself. Python's tarfile gives a
    file whose modification time has a fraction a pax header first (3 blocks before the
    file's own header: seen as `unknown instruction: ././@PaxHeader` on dockerd 28.5), and a
    name over 100 bytes or a link target a GNU long-name block. So the first member is the
    first path of a short name that is not a link, its time in whole seconds."""
    extra_names = {name for name, _ in extra}
    paths = [path for path in files if path not in extra_names]
    first = next((i for i, p in enumerate(paths) if _plain_header(root, p)), None)
    if first:
        paths.insert(0, paths.pop(first))
    with tarfile.open(mode="w", fileobj=out) as archive:
        for index, path in enumerate(paths):
            full = os.path.join(root, path)
            # None for a socket (typeshed says otherwise)
            info: tarfile.TarInfo | None = archive.gettarinfo(full, arcname=path)
            if info is None:
                continue  # docker-py skips it too
            if index == 0 or not 0 <= info.mtime <= 8**11 - 1:
                info.mtime = int(info.mtime)
            if info.isfile():
                with open(full, "rb") as data:
                    archive.addfile(info, data)
            else:
                archive.addfile(info)
        for name, text in extra:
            encoded = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(encoded)
            archive.addfile(info, io.BytesIO(encoded))


def _plain_header(root: str, path: str) -> bool:
    """Whether `path` gets a ustar header of its own once its time is whole seconds."""
    if len(path.encode()) > 100 or not path.isascii():
        return False
    try:
        info = os.lstat(os.path.join(root, path))
    except OSError:
        return False
    limit = 8**7
    return not stat.S_ISLNK(info.st_mode) and info.st_uid < limit and info.st_gid < limit


def config_auth(host: str, env: Mapping[str, str]) -> RegistryAuth | None:
    """Credentials for `host` from the docker config (auths, credsStore, credHelpers)."""
    config_dir = env.get("DOCKER_CONFIG") or str(
        Path(env.get("HOME", "~")).expanduser() / ".docker"
    )
    config_path = Path(config_dir) / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = docker.auth.load_config(str(config_path), credstore_env=dict(env))
        found = config.resolve_authconfig(_config_key(host))
    except (docker.errors.DockerException, OSError, ValueError) as exc:
        _log.warning("cannot read credentials for %s from %s: %s", host, config_path, exc)
        return None
    if not found:
        return None
    username = found.get("username") or found.get("Username")
    password = found.get("password") or found.get("Password") or found.get("IdentityToken")
    if username and password:
        return RegistryAuth(username=str(username), password=str(password))
    return None


def _config_key(host: str) -> str:
    """Docker config keys Docker Hub as its index URL."""
    return (
        docker.auth.INDEX_NAME
        if host in ("docker.io", "index.docker.io", "registry-1.docker.io")
        else host
    )


def _drain(stream: Iterable[Mapping[str, Any]]) -> None:
    """Read a pull's or push's progress to its end; the first error in it as `DaemonError`."""
    for chunk in stream:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail") or {}
            raise DaemonError(str(chunk.get("error") or detail.get("message")).strip())


def _watching(on_line: Callable[[str], None]) -> Callable[[str], None]:
    """`on_line`, raising `ContextNarrowed` at the line that starts a base's ONBUILD triggers."""

    def watch(line: str) -> None:
        on_line(line)
        if _TRIGGERS.search(line):
            raise ContextNarrowed(line)

    return watch


def _build_error(chunk: Mapping[str, Any]) -> str | None:
    """The error a build stream's message reports (either builder's), or None."""
    if "error" not in chunk and "errorDetail" not in chunk:
        return None
    detail = chunk.get("errorDetail") or {}
    return str(chunk.get("error") or detail.get("message") or "build failed").strip()


def _read_buildkit(
    stream: Iterable[Mapping[str, Any]], on_line: Callable[[str], None], *, narrowed: bool
) -> str:
    """The image id from a BuildKit build's stream (buildkit_status has its messages); its
    steps and output to `on_line`. With `narrowed`, `ContextNarrowed` as soon as a base image's
    ONBUILD trigger is named, before it runs."""
    progress = buildkit_status.Progress(on_line)
    image_id: str | None = None
    for chunk in stream:
        if (message := _build_error(chunk)) is not None:
            progress.finish()
            raise StreamError(message, step=progress.failed)
        kind, aux = chunk.get("id"), chunk.get("aux")
        if kind == "moby.buildkit.trace" and isinstance(aux, str):
            try:
                status = buildkit_status.decode(base64.b64decode(aux, validate=True))
            except (ValueError, binascii.Error) as exc:
                _log.debug("a BuildKit status report that does not parse: %s", exc)
                continue
            progress.feed(status)
            if narrowed and progress.onbuild is not None:
                raise ContextNarrowed(progress.onbuild)
        elif kind == "moby.image.id" and isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image_id = aux["ID"]
        elif isinstance(text := chunk.get("stream"), str):
            for line in text.splitlines():
                if line.strip():
                    on_line(line)
    progress.finish()
    if image_id is None:
        raise StreamError("the daemon finished the build without an image id", step=None)
    return image_id


def _read_build(stream: Iterable[Mapping[str, Any]], on_line: Callable[[str], None]) -> str:
    image_id: str | None = None
    step: str | None = None
    for chunk in stream:
        if (message := _build_error(chunk)) is not None:
            raise StreamError(message, step=step)
        text = chunk.get("stream")
        if isinstance(text, str):
            for line in text.splitlines():
                if line.strip():
                    on_line(line)
                    if match := _STEP.match(line.strip()):
                        step = f"step {match.group(1) or match.group(2)} ({match.group(3)})"
        aux = chunk.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image_id = aux["ID"]
    if image_id is None:
        raise StreamError("the daemon finished the build without an image id", step=step)
    return image_id


def _api_message(exc: docker.errors.APIError) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()


def _daemon_message(exc: Exception, env: Mapping[str, str]) -> str:
    host = env.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    text = str(exc)
    if "No such file" in text or "FileNotFoundError" in text or "Connection refused" in text:
        return (
            f"the Docker daemon does not answer at {host}"
            " (is dockerd running? is DOCKER_HOST right?)"
        )
    if "Permission denied" in text:
        return (
            f"no permission to use the Docker daemon at {host} (add the user to the docker group)"
        )
    return f"the Docker daemon at {host} failed: {text}"
