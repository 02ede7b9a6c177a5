"""The one module that talks to the Docker SDK (docker-py). Nothing else imports `docker`.

It honours DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH and the usual docker
config (`config.json` auths, `credsStore`, `credHelpers`), all read from the environment
mapping it is given. Streams from the daemon are read chunk by chunk and an error inside a
stream is a failure, even when the HTTP status said 200 (docker-py reports build and push
errors that way). shipit never pushes through the daemon: it exports the image once
(`save`) and uploads it itself (see stages/push.py).
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.auth
import docker.errors
import docker.utils
import requests.exceptions
import urllib3.exceptions
from docker.api.build import process_dockerfile

from shipit import log

_log = log.get(__name__)
_STEP = re.compile(r"^Step (\d+/\d+) : (.*)$")
_PIPE_CHUNK = 1024 * 1024
_PIPE_DEPTH = 8


class DaemonError(Exception):
    """The Docker daemon is unreachable or refused a request; says which and why."""


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
        """
        try:
            pipe = _ContextPipe(request.context, request.dockerfile)
        except OSError as exc:
            raise StreamError(f"cannot read the build context: {exc}") from None
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
        if request.target:
            kwargs["target"] = request.target
        if request.platform:
            kwargs["platform"] = request.platform
        if request.cache_from:
            kwargs["cache_from"] = list(request.cache_from)
        if request.no_cache:
            kwargs["nocache"] = True
        if request.network:
            kwargs["network_mode"] = request.network
        try:
            pipe.start()
            stream = self._client.api.build(**kwargs)
            return _read_build(stream, on_line)
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

    def containerd_store(self) -> bool:
        """Whether the daemon keeps images in containerd (Docker 24+ with the
        containerd-snapshotter feature; `docker info` shows driver-type
        io.containerd.snapshotter.v1 in DriverStatus) rather than its classic store."""
        try:
            info = self._client.info()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DaemonError(_daemon_message(exc, self.env)) from None
        status = info.get("DriverStatus") or []
        return any(
            isinstance(pair, list) and "io.containerd.snapshotter" in " ".join(map(str, pair))
            for pair in status
        )

    def inspect(self, image: str) -> Mapping[str, Any]:
        try:
            return dict(self._client.api.inspect_image(image))
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


def context_paths(context: Path, dockerfile: str) -> tuple[list[str], str | None]:
    """What `build` sends of `context`: the paths docker-py's archive holds (after
    `.dockerignore`), sorted, and the Dockerfile's text when it lies outside the context (it
    is then added to the archive under a name of its own). OSError if it cannot be read."""
    pipe = _ContextPipe(context, dockerfile)
    name, outside = pipe.dockerfile_entry
    root = str(context.absolute())  # as docker.utils.tar reads it
    paths = docker.utils.build.exclude_paths(root, pipe.exclude or [], dockerfile=name)
    return sorted(paths), outside


class ContextError(Exception):
    """The build context could not be read (a file that vanished or cannot be read)."""


class _ContextPipe:
    """A build context written by docker-py's `utils.tar` in one thread while the request
    body reads it in another: at most `_PIPE_DEPTH` chunks of `_PIPE_CHUNK` bytes in between,
    so the daemon unpacks the context while the rest is still being read from disk."""

    def __init__(self, context: Path, dockerfile: str) -> None:
        self._context = str(context)
        ignore = context / ".dockerignore"
        self._exclude: list[str] | None = None
        if ignore.is_file():  # read as docker-py's build(path=...) reads it
            lines = [line.strip() for line in ignore.read_text().splitlines()]
            self._exclude = [line for line in lines if line and not line.startswith("#")]
        # (name, None) inside the context; (a random name, its text) for one outside it
        self._dockerfile = process_dockerfile(dockerfile, self._context)
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_PIPE_DEPTH)
        self._buffer = bytearray()
        self._offset = 0
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="shipit-context", daemon=True)

    @property
    def dockerfile(self) -> str | None:
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

    def start(self) -> None:
        self._thread.start()

    def _produce(self) -> None:
        try:
            docker.utils.tar(
                self._context, exclude=self._exclude, dockerfile=self._dockerfile, fileobj=self
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


def _read_build(stream: Iterable[Mapping[str, Any]], on_line: Callable[[str], None]) -> str:
    image_id: str | None = None
    step: str | None = None
    for chunk in stream:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail") or {}
            message = str(chunk.get("error") or detail.get("message") or "build failed").strip()
            raise StreamError(message, step=step)
        text = chunk.get("stream")
        if isinstance(text, str):
            for line in text.splitlines():
                if line.strip():
                    on_line(line)
                    if match := _STEP.match(line.strip()):
                        step = f"step {match.group(1)} ({match.group(2)})"
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
