"""The base image's layers, on their way to the registries while the image builds.

BuildKit keeps a base image's layers as the base's registry stores them (the same gzipped
bytes, so the same digests) in the image it builds on the containerd image store and in an
OCI layout it writes (it compresses only what the build made; checked with dockerd 28.5:
the Debian web app's first layer is its base's, 925c407a…, in the registry of the base and
in the image). On a runner that never pushed that base to the image's registries those
layers are most of what the push sends, and they are known before the build begins.

So before such a build (`Ahead.start`) shipit reads the final stage's base image from its
registry (its manifest for the build's platform), and for each gzipped layer that some
target registry lacks (HEAD) downloads it once, checked against its digest, and hands it to
the image's uploads (`BlobUploads.add_file`), all in a thread of its own while the daemon
builds. When the export comes, an upload already under way is not started again, and the
daemon's push to shipit (stages/receive.py) skips those layers: the receiver answers their
HEAD with what was downloaded (`Ahead.held`).

A blob is invisible until a manifest names it (uploads.py), so nothing is published early;
a layer the image turns out not to hold (a base its Dockerfile's last stage does not keep)
stays an unnamed blob, as a failed push leaves one. It is not tried:
- for a Docker Hub base: Docker Hub counts every manifest GET as a pull against its pull
  rate limit (docs.docker.com/docker-hub/usage/pulls), and the daemon pulls the base anyway;
- for an image that is scanned: its layers go nowhere before the gate passes;
- where the build's layers would not be the base's bytes (the classic builder's image, which
  `docker save` then shipit compresses; buildah's push, which compresses every layer);
and anything that goes wrong here (no credentials, an unreachable registry, a platform the
base lacks) leaves the layers to go the usual way after the build: it never fails a run.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Final

from shipit import containers_config, log
from shipit.ahead import ahead
from shipit.log import Console
from shipit.plan import BuildSettings
from shipit.registry import Credentials, Descriptor, Endpoint, Manifest, Registry, RegistryError
from shipit.stages.build.bases import normalize_ref
from shipit.stages.build.classic_platforms import same_platform
from shipit.stages.build.dockerfile import built_stages, is_image, stage_index, stages
from shipit.stages.uploads import BlobUploads

_log = log.get(__name__)
_GZIP_LAYERS: Final = frozenset(
    {
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    }
)
_DOCKER_HUB: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def final_base(settings: BuildSettings, automatic: Mapping[str, str]) -> str | None:
    """The image the stage the build ends with starts from (through the stages it names), in
    full (`docker.io/library/python:3.12`); None for scratch, an unreadable Dockerfile or a
    name left with a variable in it."""
    try:
        text = (Path(settings.context) / settings.dockerfile).read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError:
        return None
    all_stages = stages(text, settings.build_args, automatic)
    built = built_stages(all_stages, settings.target)
    index: int | None = len(built) - 1
    seen: set[int] = set()
    while index is not None and index >= 0 and index not in seen:
        seen.add(index)
        base = all_stages[index].base
        earlier = stage_index(all_stages, base, before=index)
        if earlier is None:
            return normalize_ref(base) if is_image(base) else None
        index = earlier
    return None


class Ahead:
    """The base image's layers for one build, fetched and handed to its uploads meanwhile."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._lock = threading.Lock()
        self._held: dict[str, Path] = {}
        self._stop = threading.Event()
        self._fetch: Future[None] | None = None

    @property
    def held(self) -> dict[str, Path]:
        """The layers downloaded and checked so far, by digest, each in its file."""
        with self._lock:
            return dict(self._held)

    def stop(self) -> None:
        """No layer after the one under way now (the build is done: the export has them)."""
        self._stop.set()

    def start(
        self,
        base: str,
        platforms: tuple[str, ...],
        uploads: BlobUploads,
        env: Mapping[str, str],
        console: Console,
    ) -> bool:
        """Begin with the layers of `base` for each of `platforms`, unless it is a Docker Hub
        image; whether it began. The credentials are the docker config's (or the containers
        tools' auth files), as for a pull, and are masked in every log line."""
        host, _, rest = base.partition("/")
        if host in _DOCKER_HUB or not rest:
            return False
        repository, at, reference = rest.partition("@")  # normalize_ref: a digest, else a tag
        if not at:
            repository, _, reference = rest.rpartition(":")
        self._folder.mkdir(parents=True, exist_ok=True)

        def fetch() -> None:
            client = None
            try:
                # here, not before the build: a credential helper may take its time
                found = containers_config.find_auth(f"{host}/{repository}", env)
                credentials = None
                if found is not None:
                    console.secret(found.password)
                    credentials = Credentials(username=found.username, password=found.password)
                client = Registry(Endpoint(host=host, credentials=credentials), retries=1)
                for platform in platforms:
                    self._platform(client, repository, reference, platform, uploads)
            except Exception as exc:  # a way to be quicker never fails a run
                _log.debug("the layers of %s go after the build: %s", base, exc)
            finally:
                if client is not None:
                    client.close()

        self._fetch = ahead(fetch, name="base-layers")
        return True

    def wait(self, timeout: float) -> bool:
        """Wait until every layer is handed over or the fetch gave up; whether it ended."""
        return self._fetch is not None and wait([self._fetch], timeout).not_done == set()

    def _platform(
        self,
        client: Registry,
        repository: str,
        reference: str,
        platform: str,
        uploads: BlobUploads,
    ) -> None:
        manifest = client.manifest(repository, reference)
        if manifest.is_index:
            child = _child_for(manifest, platform)
            if child is None:
                _log.debug("%s/%s has no manifest for %s", client.host, repository, platform)
                return
            manifest = client.manifest(repository, child.digest)
        for layer in _layers(manifest):
            if self._stop.is_set():
                return
            if layer.digest in self.held or not uploads.lacking(layer.digest):
                continue
            path = self._folder / layer.digest.removeprefix("sha256:")
            try:
                client.download_blob(repository, layer, path)
            except RegistryError:
                path.unlink(missing_ok=True)
                raise
            if self._stop.is_set():  # the export has begun without it: the layer is its
                return
            with self._lock:
                self._held[layer.digest] = path
            uploads.add_file(path, layer)
            _log.debug("%s: base layer %s on its way to the registries", client.host, layer.digest)


def _child_for(index: Manifest, platform: str) -> Descriptor | None:
    """The index's manifest for `platform`, as containerd matches platforms (an architecture
    without a variant means its default one: arm64 is arm64/v8)."""
    return next(
        (c for c in index.children() if c.platform and same_platform(c.platform, platform)),
        None,
    )


def _layers(manifest: Manifest) -> list[Descriptor]:
    """An image manifest's gzipped sha256 layers that may be copied (not a foreign layer)."""
    return [
        b
        for b in manifest.blobs()
        if b.media_type in _GZIP_LAYERS and b.distributable and b.digest.startswith("sha256:")
    ]
