"""Export an image from a daemon on the containerd image store by letting it push to shipit.

On the containerd image store (Docker 24+ with the containerd-snapshotter feature, Docker
29's default) the daemon keeps every layer gzipped in its content store, and `docker push`
sends those bytes as they are: 0.6 s for a 153 MB image to a loopback registry, where `docker
save` of the same image takes 2.6 to 3.3 s, every time (measured with dockerd 28.5,
2026-12-07). So on that store shipit exports an image by having the daemon push it to a
registry shipit serves itself, in process, on 127.0.0.1 (`Receiver`), for this one export:

- the daemon treats 127.0.0.0/8 as an insecure registry by default (dockerd's
  `--insecure-registry` documentation: "127.0.0.0/8 ... is always insecure"), so it speaks
  plain HTTP to it and needs no configuration;
- each blob arrives with its digest (containerd's pusher opens a session with POST, then sends
  the whole blob in the PUT that names its digest; a PATCH, as other clients send, is taken
  too), is written to a file of its own and hashed on the way, and is refused (400
  DIGEST_INVALID, distribution's docs/spec/api.md) when it does not match;
- a layer is announced (`on_blob_start`) as soon as its first MiB is in and shows gzip's magic,
  so the uploads follow it to every registry while the daemon is still sending it (as the
  `docker save` path does while it compresses, `stages.export`);
- the manifest comes last, under the tag it was pushed as.

What is pushed then is exactly what was built: the daemon's manifest must have the digest of
the image id (on that store an image's id is its manifest's digest), it names the config and
each layer by digest, and every blob was checked against its digest as it came. From those
blobs shipit writes the same manifest it writes from `docker save` (`export.image_manifest`),
so both ways give one digest. A layer the content store does not hold gzipped (zstd, or not
compressed) gives up this way: the caller exports with `docker save`, which compresses.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from shipit import log
from shipit.docker_api import Daemon, DaemonError
from shipit.log import counted
from shipit.registry import DIGEST_RE, Descriptor, GrowingFile, Manifest
from shipit.stages.export import (
    LAYER_MEDIA_TYPE,
    ExportedImage,
    ExportError,
    Layer,
    image_manifest,
    names_config,
)

_log = log.get(__name__)
_ANNOUNCE_AT: Final = 1024 * 1024  # bytes in before a blob is announced: a config never is
_PIECE: Final = 1024 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b\x08"
_NAME: Final = r"[a-z0-9]+(?:[._/-][a-z0-9]+)*"
_BLOB = re.compile(rf"/v2/(?P<name>{_NAME})/blobs/(?P<digest>sha256:[a-f0-9]{{64}})")
_UPLOADS = re.compile(rf"/v2/(?P<name>{_NAME})/blobs/uploads/(?P<id>[a-f0-9]*)")
_MANIFEST = re.compile(rf"/v2/(?P<name>{_NAME})/manifests/(?P<ref>[\w][\w.:-]{{0,127}})")
_GZIP_TYPES: Final = frozenset({LAYER_MEDIA_TYPE, "application/vnd.oci.image.layer.v1.tar+gzip"})


class ReceiveError(ExportError):
    """What the daemon pushed is not an image shipit can push; says what was wrong."""


@dataclass
class _Blob:
    """A blob the daemon sent (or is sending): its file, and what is known of it so far."""

    file: GrowingFile
    hasher: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    head: bytes = b""
    announced: bool = False
    digest: str | None = None  # once complete and checked


@dataclass(frozen=True)
class Received:
    """What one push left: every complete blob by digest, every manifest by digest and tag."""

    blobs: dict[str, Path]
    manifests: dict[str, Manifest]
    tags: dict[str, str]
    announced: frozenset[str]  # digests of the blobs announced while they came


class Receiver:
    """A registry on 127.0.0.1 that takes one image pushed by a local daemon (see the module).

    Use as a context manager; `host` is where it listens ("127.0.0.1:PORT"). `on_blob_start`
    hears of each layer file the moment it is announced (from one of the server's threads).
    """

    def __init__(
        self,
        folder: Path,
        on_blob_start: Callable[[GrowingFile], None],
        held: Mapping[str, Path] | None = None,
    ) -> None:
        self._folder = folder
        self._on_blob_start = on_blob_start
        self._lock = threading.Lock()
        self._uploads: dict[str, _Blob] = {}
        # blobs shipit holds already, checked against their digests (the base image's layers,
        # stages/base_layers.py): their HEAD says so, and the daemon does not send them
        self._blobs: dict[str, Path] = dict(held or {})
        self._manifests: dict[str, Manifest] = {}
        self._tags: dict[str, str] = {}
        self._announced: set[str] = set()
        self._count = 0
        folder.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for blob in self._uploads.values():
                blob.file.fail("the daemon's push stopped before this blob was complete")

    def received(self) -> Received:
        with self._lock:
            return Received(
                blobs=dict(self._blobs),
                manifests=dict(self._manifests),
                tags=dict(self._tags),
                announced=frozenset(self._announced),
            )

    @property
    def started_any(self) -> bool:
        """Whether any blob was announced (uploads follow it: no way back to `docker save`)."""
        with self._lock:
            return bool(self._announced)

    # --- what the handler calls --------------------------------------------------------

    def has_blob(self, digest: str) -> int | None:
        with self._lock:
            path = self._blobs.get(digest)
        return path.stat().st_size if path is not None else None

    def open_upload(self) -> str:
        with self._lock:
            upload = uuid.uuid4().hex
            self._count += 1
            path = self._folder / f"blob-{self._count}"
            self._uploads[upload] = _Blob(file=GrowingFile(path))
            return upload

    def exists(self, upload: str) -> bool:
        with self._lock:
            return upload in self._uploads

    def write(self, upload: str, pieces: Callable[[], bytes]) -> int:
        """Append the body's pieces to the upload's file; its size after."""
        with self._lock:
            blob = self._uploads[upload]
        with blob.file.path.open("ab", buffering=0) as sink:
            while piece := pieces():
                sink.write(piece)
                blob.hasher.update(piece)
                blob.size += len(piece)
                if len(blob.head) < len(_GZIP_MAGIC):
                    blob.head += piece[: len(_GZIP_MAGIC)]
                blob.file.grew(blob.size)
                if not blob.announced and blob.size >= _ANNOUNCE_AT:
                    self._announce(blob)
        return blob.size

    def _announce(self, blob: _Blob) -> None:
        blob.announced = True  # looked at once: a blob that is not gzip stays unannounced
        if blob.head[: len(_GZIP_MAGIC)] == _GZIP_MAGIC:
            self._on_blob_start(blob.file)

    def finish(self, upload: str, digest: str) -> str | None:
        """Close the upload as `digest`; None when done, else why it was refused."""
        with self._lock:
            blob = self._uploads.pop(upload)
        got = f"sha256:{blob.hasher.hexdigest()}"
        if got != digest:
            blob.file.fail(f"the daemon sent {got} as {digest}")
            return f"the bytes have digest {got}"
        blob.file.finish(
            Descriptor(media_type="application/octet-stream", digest=digest, size=blob.size)
        )
        with self._lock:
            self._blobs.setdefault(digest, blob.file.path)
            if blob.announced and blob.head[: len(_GZIP_MAGIC)] == _GZIP_MAGIC:
                self._announced.add(digest)
        return None

    def cancel(self, upload: str) -> None:
        with self._lock:
            blob = self._uploads.pop(upload, None)
        if blob is not None:
            blob.file.fail("the daemon cancelled the upload")

    def put_manifest(self, ref: str, manifest: Manifest) -> None:
        with self._lock:
            self._manifests[manifest.digest] = manifest
            if not DIGEST_RE.fullmatch(ref):
                self._tags[ref] = manifest.digest

    def manifest(self, ref: str) -> Manifest | None:
        with self._lock:
            return self._manifests.get(self._tags.get(ref, ref))


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.receiver = receiver
    return Handler


class _Handler(BaseHTTPRequestHandler):
    """The few calls of distribution's API (docs/spec/api.md) a push makes."""

    receiver: Receiver
    protocol_version = "HTTP/1.1"  # keep-alive, as the daemon's client expects

    def handle_one_request(self) -> None:
        """A TLS handshake (its first byte 0x16, RFC 8446 section 5.1) is answered with a plain
        HTTP 400: containerd's resolver tries HTTPS first even for an insecure registry, and
        goes over to HTTP only when the answer starts with "HTTP/" (remotes/docker's
        `HTTPFallback`, on a `tls.RecordHeaderError`); Python's own error for such a request
        line would start with no status line at all."""
        try:
            first = self.rfile.peek(1)[:1]  # type: ignore[attr-defined]
        except OSError:
            return
        if first == b"\x16":
            self.wfile.write(b"HTTP/1.0 400 Bad Request\r\n\r\nthis registry speaks HTTP\n")
            self.close_connection = True
            return
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        return  # nothing on stderr; the daemon's own errors say what went wrong

    # --- the answers -----------------------------------------------------------------------

    def _answer(
        self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        self.send_response(status)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        self._answer(status, {"Content-Type": "application/json"}, body)

    # --- the body ----------------------------------------------------------------------------

    def _pieces(self) -> Callable[[], bytes]:
        """A function giving the request body's next piece (b"" at its end), whether it came
        with Content-Length or chunked (RFC 9112, section 7.1)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            left = [0]
            done = [False]

            def chunked() -> bytes:
                if done[0]:
                    return b""
                if left[0] == 0:
                    line = self.rfile.readline(1024).split(b";", 1)[0].strip()
                    left[0] = int(line or b"0", 16)
                    if left[0] == 0:
                        while self.rfile.readline(1024).strip():  # trailers, then the blank line
                            pass
                        done[0] = True
                        return b""
                data = self.rfile.read(min(left[0], _PIECE))
                if not data:
                    raise ConnectionError("the body ended early")
                left[0] -= len(data)
                if left[0] == 0:
                    self.rfile.readline(16)  # the CRLF after a chunk
                return data

            return chunked
        remaining = [int(self.headers.get("Content-Length") or 0)]

        def sized() -> bytes:
            if remaining[0] <= 0:
                return b""
            data = self.rfile.read(min(remaining[0], _PIECE))
            if not data:
                raise ConnectionError("the body ended early")
            remaining[0] -= len(data)
            return data

        return sized

    # --- the calls ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/v2", "/v2/"):
            self._answer(200, {"Content-Type": "application/json"}, b"{}")
        elif match := _MANIFEST.fullmatch(path):
            self._get_manifest(match["ref"])
        else:
            self._error(404, "BLOB_UNKNOWN", "not here")

    def do_HEAD(self) -> None:
        path = urlsplit(self.path).path
        if match := _BLOB.fullmatch(path):
            size = self.receiver.has_blob(match["digest"])
            if size is None:
                self._error(404, "BLOB_UNKNOWN", "blob unknown")
            else:
                self._head_blob(match["digest"], size)
        elif match := _MANIFEST.fullmatch(path):
            self._get_manifest(match["ref"])
        else:
            self._answer(200 if path in ("/v2", "/v2/") else 404)

    def _head_blob(self, digest: str, size: int) -> None:
        self.send_response(200)
        self.send_header("Docker-Content-Digest", digest)
        self.send_header("Content-Length", str(size))
        self.end_headers()

    def _get_manifest(self, ref: str) -> None:
        found = self.receiver.manifest(ref)
        if found is None:
            self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            return
        headers = {"Content-Type": found.media_type, "Docker-Content-Digest": found.digest}
        self._answer(200, headers, found.data)

    def do_POST(self) -> None:
        split = urlsplit(self.path)
        match = _UPLOADS.fullmatch(split.path)
        if match is None or match["id"]:
            self._error(404, "NAME_UNKNOWN", "not here")
            return
        upload = self.receiver.open_upload()
        digest = parse_qs(split.query).get("digest", [""])[0]
        if digest:  # a monolithic upload: the blob in this request (no mount is ever offered)
            self._close(match["name"], upload, digest)
            return
        location = f"/v2/{match['name']}/blobs/uploads/{upload}"
        headers = {"Location": location, "Range": "0-0", "Docker-Upload-UUID": upload}
        self._answer(202, headers)

    def do_PATCH(self) -> None:
        match = _UPLOADS.fullmatch(urlsplit(self.path).path)
        if match is None or not self.receiver.exists(match["id"]):
            self._error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")
            return
        try:
            size = self.receiver.write(match["id"], self._pieces())
        except (OSError, ValueError) as exc:
            self.receiver.cancel(match["id"])
            self.close_connection = True
            self._error(400, "BLOB_UPLOAD_INVALID", str(exc))
            return
        location = f"/v2/{match['name']}/blobs/uploads/{match['id']}"
        headers = {"Location": location, "Range": f"0-{max(size - 1, 0)}",
                   "Docker-Upload-UUID": match["id"]}  # fmt: skip
        self._answer(202, headers)

    def do_PUT(self) -> None:
        split = urlsplit(self.path)
        if match := _MANIFEST.fullmatch(split.path):
            self._put_manifest(match["name"], match["ref"])
            return
        match = _UPLOADS.fullmatch(split.path)
        if match is None or not self.receiver.exists(match["id"]):
            self._error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")
            return
        digest = parse_qs(split.query).get("digest", [""])[0]
        self._close(match["name"], match["id"], digest)

    def _close(self, name: str, upload: str, digest: str) -> None:
        """The last bytes of an upload, if any, and its digest: the blob, or a refusal."""
        try:
            self.receiver.write(upload, self._pieces())
        except (OSError, ValueError) as exc:
            self.receiver.cancel(upload)
            self.close_connection = True
            self._error(400, "BLOB_UPLOAD_INVALID", str(exc))
            return
        if not re.fullmatch(r"sha256:[a-f0-9]{64}", digest):
            self.receiver.cancel(upload)
            self._error(400, "DIGEST_INVALID", f"{digest!r} is not a sha256 digest")
            return
        refused = self.receiver.finish(upload, digest)
        if refused is not None:
            self._error(400, "DIGEST_INVALID", refused)
            return
        headers = {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest}
        self._answer(201, headers)

    def _put_manifest(self, name: str, ref: str) -> None:
        pieces = self._pieces()
        data = b"".join(iter(pieces, b""))
        media_type = self.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            manifest = Manifest.from_bytes(data, media_type or None)
        except ValueError as exc:
            self._error(400, "MANIFEST_INVALID", str(exc))
            return
        if DIGEST_RE.fullmatch(ref) and ref != manifest.digest:
            self._error(400, "DIGEST_INVALID", f"the manifest's digest is {manifest.digest}")
            return
        self.receiver.put_manifest(ref, manifest)
        headers = {"Location": f"/v2/{name}/manifests/{manifest.digest}",
                   "Docker-Content-Digest": manifest.digest}  # fmt: skip
        self._answer(201, headers)

    def do_DELETE(self) -> None:
        match = _UPLOADS.fullmatch(urlsplit(self.path).path)
        if match is not None and match["id"]:
            self.receiver.cancel(match["id"])
            self._answer(204)
        else:
            self._error(405, "UNSUPPORTED", "not here")


def received_image(received: Received, image_id: str, tag: str, *, oci: bool) -> ExportedImage:
    """The image the daemon pushed as `tag`: checked from the image id down (see the module).

    Raises `ReceiveError` when it is not that image, or not one shipit can push as it is (a
    layer not gzipped: `docker save` then does, compressing it).
    """
    top_digest = received.tags.get(tag)
    if top_digest is None:
        raise ReceiveError(f"the daemon's push of {image_id} sent no manifest")
    top = received.manifests[top_digest]
    if top.is_index or top.digest != image_id:
        raise ReceiveError(f"the daemon pushed {top.media_type} {top.digest} for {image_id}")
    document = json.loads(top.data)
    config_ref = document.get("config") or {}
    config_path = received.blobs.get(str(config_ref.get("digest")))
    if config_path is None:
        raise ReceiveError(f"the daemon's push of {image_id} lacks its config")
    config = config_path.read_bytes()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    if not names_config(top.data, top.digest, config_digest):
        raise ReceiveError(f"the daemon's manifest {top.digest} does not name its config")
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    entries = document.get("layers") or []
    if len(entries) != len(diff_ids):
        raise ReceiveError(
            f"the daemon's manifest lists {len(entries)} layers, the config {len(diff_ids)}"
        )
    layers = []
    for entry, diff_id in zip(entries, diff_ids, strict=True):
        digest = str(entry.get("digest"))
        path = received.blobs.get(digest)
        if path is None:
            raise ReceiveError(f"the daemon's push lacks the layer {digest}")
        if entry.get("mediaType") not in _GZIP_TYPES:
            raise ReceiveError(f"the layer {digest} is {entry.get('mediaType')}, not gzip")
        size = path.stat().st_size
        descriptor = Descriptor(media_type=LAYER_MEDIA_TYPE, digest=digest, size=size)
        layers.append(Layer(diff_id=diff_id, path=path, descriptor=descriptor))
    return ExportedImage(
        image_id=image_id,
        config=config,
        layers=tuple(layers),
        manifest=image_manifest(config, layers, oci=oci),
        id_manifest=top.data,
    )


def pushes_to_shipit(daemon: Daemon) -> bool:
    """Whether `daemon` can export an image by pushing it to a `Receiver`: it is on this
    machine (DOCKER_HOST a unix socket: a dind service's 127.0.0.1 is its own) and keeps its
    images in the containerd image store."""
    return daemon.host.startswith("unix://") and daemon.describe().containerd_store


def receive_export(
    daemon: Daemon,
    image_id: str,
    folder: Path,
    on_blob_start: Callable[[GrowingFile], None],
    *,
    oci: bool,
    held: Mapping[str, Path] | None = None,
) -> ExportedImage | None:
    """The image `image_id`, pushed by `daemon` to a `Receiver` of this call's own; None when
    this way is not open (the caller exports with `docker save`): the daemon is not on the
    containerd store or not on this machine (DOCKER_HOST not a unix socket: a dind service's
    127.0.0.1 is its own), the image has no name to stand beside the receiver's (untagging the
    only name would delete the image), or the daemon could not reach the receiver before any
    layer came (a rootless daemon has a network namespace of its own).

    `held` are blobs shipit has already (by digest, each checked): the daemon is told so and
    does not send them. Raises `ExportError` when the push failed after a layer was on its way
    to the registries.
    """
    if not pushes_to_shipit(daemon):
        return None
    try:
        if not daemon.inspect(image_id).get("RepoTags"):
            return None
    except DaemonError:
        return None
    tag = uuid.uuid4().hex[:12]
    with Receiver(folder, on_blob_start, held) as receiver:
        repository = f"{receiver.host}/shipit/export"
        daemon.tag(image_id, repository, tag)
        try:
            daemon.push(f"{repository}:{tag}")
        except DaemonError as exc:
            if receiver.started_any:
                failed = f"the daemon's push of {image_id} to shipit failed: {exc}"
                raise ExportError(failed) from None
            _log.debug("the daemon did not push to shipit (%s): exporting with docker save", exc)
            return None
        finally:
            daemon.untag(f"{repository}:{tag}")
        received = receiver.received()
    _log.debug(
        "the daemon pushed %s to shipit at %s: %s, %d of them on their way already",
        image_id, receiver.host, counted(len(received.blobs), "blob"), len(received.announced),
    )  # fmt: skip
    try:
        return received_image(received, image_id, tag, oci=oci)
    except ReceiveError as exc:  # the layers on their way are the image's: they do no harm
        _log.debug("%s: exporting with docker save", exc)
        return None
