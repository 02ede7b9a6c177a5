"""Export a built image from the daemon once, and compress each layer once.

The Docker daemon compresses every layer again for every registry it pushes to, so N
pushes cost N times one, and the digests can differ. shipit instead streams the image out
of the daemon (`docker save`), gzips each layer once while it streams (ISA-L, several times
faster than zlib; zlib where ISA-L is not installed), and writes the manifest itself. The
push stage then uploads these same bytes to every registry: one compression, one digest.

Both layouts `docker save` writes are read: the classic one (Docker up to 24:
`<id>/layer.tar`, `manifest.json` last) and the OCI one (Docker 25+: `blobs/sha256/...`).
On the containerd image store (seen with Docker 28.5) the export holds the layers as the
content store keeps them, often gzipped already: those are pushed unchanged, not compressed
again, and the image id is its manifest's digest rather than its config's.
Every layer is checked against the image config's `rootfs.diff_ids`, and the config
against the image id, so what is pushed is exactly what was built (and scanned). What an
export made is kept (`stages.export_cache`), so an image built again is not exported again.

The stream is read by `tar_stream` (a layer's bytes reach the hashing and the compressor as
views of what the daemon sent, not copies), and each layer file is a `GrowingFile`, begun
empty and announced (`on_layer_start`) before its first byte, so the uploads can follow it to
every registry while it is still compressed. Memory stays flat: a few chunks are in flight,
the layers are on disk. (Docker 20.10 writes the whole export to a folder of its own before
it sends the first byte; what this stage can overlap is everything after that.)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import posixpath
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shipit.log import counted
from shipit.registry import DOCKER_MANIFEST, OCI_MANIFEST, Descriptor, GrowingFile, Manifest
from shipit.stages.tar_stream import Entry, TarStreamError, read_tar

try:  # ISA-L's deflate: the same gzip format, several times faster than zlib
    from isal import isal_zlib as _deflate

    _LEVEL = 2
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps shipit working
    import zlib as _deflate  # type: ignore[no-redef]

    _LEVEL = 1

LAYER_MEDIA_TYPE: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CONFIG_MEDIA_TYPE: Final = "application/vnd.docker.container.image.v1+json"
OCI_LAYER_MEDIA_TYPE: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_CONFIG_MEDIA_TYPE: Final = "application/vnd.oci.image.config.v1+json"
_SMALL: Final = 4 * 1024 * 1024  # members kept in memory unless they are layers
_IN_FLIGHT: Final = 8  # chunks read ahead of the compressor
_BLOCK: Final = 256 * 1024  # what the compressor is fed at a time, always (see _chunks)
_GZIP_MAGIC: Final = b"\x1f\x8b\x08"  # RFC 1952: ID1, ID2, CM=deflate


class ExportError(Exception):
    """The daemon's export was not an image shipit can push; says what was wrong."""


@dataclass(frozen=True, kw_only=True)
class Layer:
    diff_id: str  # sha256 of the uncompressed tar, as in the config
    path: Path  # the gzipped layer on disk
    descriptor: Descriptor  # digest and size of the gzipped bytes


@dataclass(frozen=True, kw_only=True)
class ExportedImage:
    image_id: str
    config: bytes
    layers: tuple[Layer, ...]  # in the image's order (a repeated layer appears twice)
    manifest: Manifest
    # the daemon's own manifest, where the image id is its digest (the containerd store)
    id_manifest: bytes | None = None

    @property
    def size(self) -> int:
        unique = {layer.descriptor.digest: layer.descriptor.size for layer in self.layers}
        return len(self.config) + sum(unique.values())


def export_image(
    chunks: Iterable[bytes],
    image_id: str,
    workdir: Path,
    *,
    on_layer: Callable[[Layer], None] | None = None,
    on_layer_start: Callable[[GrowingFile], None] | None = None,
    oci: bool = False,
) -> ExportedImage:
    """Read a `docker save` stream of one image; gzip its layers into `workdir`.

    `on_layer_start` hears of each layer file as soon as it is begun, so uploads can follow
    it while it is compressed; `on_layer` hears of each layer once its file is complete
    (before the export ends). Every layer is checked against the config by the time this
    returns. The manifest is Docker's schema 2, as `docker push` writes it, or with `oci` an
    OCI image manifest (for an OCI image index).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    reading = _Reading(workdir, on_layer, on_layer_start)
    try:
        for entry, data in read_tar(chunks):
            reading.add(entry, data)
        return _assemble(image_id, reading, oci=oci)
    except TarStreamError as exc:
        raise ExportError(f"the export is not a tar archive shipit can read: {exc}") from None
    finally:
        for blob in reading.growing:
            blob.fail("the export stopped before this layer was complete")  # no-op when done


class _Reading:
    """What the export holds so far: small files, compressed layers, links."""

    def __init__(
        self,
        workdir: Path,
        on_layer: Callable[[Layer], None] | None,
        on_layer_start: Callable[[GrowingFile], None] | None,
    ) -> None:
        self.workdir = workdir
        self.on_layer = on_layer
        self.on_layer_start = on_layer_start
        self.small: dict[str, bytes] = {}
        self.compressed: dict[str, Layer] = {}  # member name -> layer
        self.links: dict[str, str] = {}
        self.growing: list[GrowingFile] = []

    def add(self, entry: Entry, data: Iterator[memoryview]) -> None:
        name = entry.name
        if entry.kind == "symlink":
            self.links[name] = posixpath.normpath(
                posixpath.join(posixpath.dirname(name), entry.link)
            )
        elif entry.kind == "hardlink":
            self.links[name] = posixpath.normpath(entry.link)
        elif entry.kind == "file":
            head, rest = _split_head(data)
            if _is_tar(head) or name.endswith("layer.tar") or head[:3] == _GZIP_MAGIC:
                self.add_layer(name, head, rest, keep=head[:3] == _GZIP_MAGIC)
            elif entry.size <= _SMALL:
                self.small[name] = head + b"".join(rest)

    def add_layer(self, name: str, head: bytes, rest: Iterator[memoryview], *, keep: bool) -> None:
        """Compress a layer (or, `keep`, copy one that is gzipped already) into its file."""
        blob = GrowingFile(self.workdir / f"layer-{len(self.compressed)}.tar.gz")
        self.growing.append(blob)
        if self.on_layer_start is not None:
            self.on_layer_start(blob)
        diff_id, descriptor = (_keep_gzip if keep else _gzip)(head, rest, blob)
        layer = Layer(diff_id=diff_id, path=blob.path, descriptor=descriptor)
        self.compressed[name] = layer
        if self.on_layer is not None:
            self.on_layer(layer)


def _split_head(data: Iterator[memoryview]) -> tuple[bytes, Iterator[memoryview]]:
    """The first 512 bytes of a member (to tell a layer from a file), and the rest."""
    head = bytearray()
    for piece in data:
        need = 512 - len(head)
        head += piece[:need]
        if len(piece) > need:
            return bytes(head), itertools.chain((piece[need:],), data)
        if len(head) == 512:
            break
    return bytes(head), data


def _assemble(image_id: str, reading: _Reading, *, oci: bool) -> ExportedImage:
    small, links = reading.small, reading.links
    if "manifest.json" not in small:
        raise ExportError("the export has no manifest.json: not an image saved by Docker")
    entries = json.loads(small["manifest.json"])
    entry = _entry_for(entries, image_id)
    config = small.get(_resolve(entry["Config"], links))
    if config is None:
        raise ExportError(f"the export lacks the image config {entry['Config']}")
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    id_manifest = None
    if config_digest != image_id:
        id_manifest = small.get(f"blobs/sha256/{image_id.removeprefix('sha256:')}")
        if not names_config(id_manifest, image_id, config_digest):
            raise ExportError(f"the exported config is {config_digest}, not the image {image_id}")
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    names = [_resolve(path, links) for path in entry["Layers"]]
    if len(names) != len(diff_ids):
        raise ExportError(
            f"the export lists {counted(len(names), 'layer')}, the config {len(diff_ids)}"
        )
    layers = []
    for name, want in zip(names, diff_ids, strict=True):
        if name not in reading.compressed and name in small:  # an empty layer: no tar header
            reading.add_layer(name, small[name], iter(()), keep=False)
        if name not in reading.compressed:
            raise ExportError(f"the export lacks the layer {name}")
        layer = reading.compressed[name]
        if layer.diff_id != want:
            raise ExportError(f"layer {name} is {layer.diff_id}, the config expects {want}")
        layers.append(layer)
    return ExportedImage(
        image_id=image_id,
        config=config,
        layers=tuple(layers),
        manifest=image_manifest(config, layers, oci=oci),
        id_manifest=id_manifest,
    )


def names_config(data: bytes | None, image_id: str, config_digest: str) -> bool:
    """On the containerd image store (Docker 24+) an image's id is its manifest's digest, not
    its config's; such an export carries that manifest as a blob: check that `data` is that
    manifest and names the config."""
    if data is None or "sha256:" + hashlib.sha256(data).hexdigest() != image_id:
        return False
    try:
        document = json.loads(data)
    except ValueError:
        return False
    config = document.get("config") if isinstance(document, dict) else None
    return isinstance(config, dict) and config.get("digest") == config_digest


def image_manifest(config: bytes, layers: Iterable[Layer], *, oci: bool) -> Manifest:
    """The manifest shipit pushes for `config` and `layers`: the same bytes for the same image."""
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    kind, config_type, layer_type = (
        (OCI_MANIFEST, OCI_CONFIG_MEDIA_TYPE, OCI_LAYER_MEDIA_TYPE)
        if oci
        else (DOCKER_MANIFEST, CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE)
    )
    document = {
        "schemaVersion": 2,
        "mediaType": kind,
        "config": {"mediaType": config_type, "size": len(config), "digest": config_digest},
        "layers": [
            {
                "mediaType": layer_type,
                "size": layer.descriptor.size,
                "digest": layer.descriptor.digest,
            }
            for layer in layers
        ],
    }
    data = json.dumps(document, indent=3).encode()  # the indentation `docker push` uses
    return Manifest.from_bytes(data, kind)


def _entry_for(entries: Any, image_id: str) -> dict[str, Any]:
    if not isinstance(entries, list) or not entries:
        raise ExportError("manifest.json of the export lists no image")
    hexdigest = image_id.removeprefix("sha256:")
    for entry in entries:
        if isinstance(entry, dict) and hexdigest in str(entry.get("Config", "")):
            return entry
    if len(entries) == 1 and isinstance(entries[0], dict):
        return entries[0]
    raise ExportError(f"the export does not contain the image {image_id}")


def _resolve(name: str, links: dict[str, str]) -> str:
    name = posixpath.normpath(name)
    for _ in range(16):  # a chain of links, bounded
        if name not in links:
            return name
        name = links[name]
    raise ExportError(f"a cycle of links in the export at {name}")


def _is_tar(head: bytes) -> bool:
    return len(head) >= 263 and head[257:262] == b"ustar"


def _keep_gzip(
    head: bytes, rest: Iterator[memoryview], blob: GrowingFile
) -> tuple[str, Descriptor]:
    """A layer the export holds gzipped already (the containerd image store exports its blobs
    as they are): copy it unchanged, hashing it, and hash what it unpacks to for the diff id."""
    plain = hashlib.sha256()
    packed = hashlib.sha256()
    size = 0
    unpacker = zlib.decompressobj(31)  # 31: the gzip wrapper
    with blob.path.open("wb", buffering=0) as sink:
        for chunk in _chunks(head, rest):
            packed.update(chunk)
            sink.write(chunk)
            size += len(chunk)
            blob.grew(size)
            plain.update(unpacker.decompress(chunk))
        plain.update(unpacker.flush())
    descriptor = Descriptor(
        media_type=LAYER_MEDIA_TYPE, digest=f"sha256:{packed.hexdigest()}", size=size
    )
    blob.finish(descriptor)
    return f"sha256:{plain.hexdigest()}", descriptor


def _gzip(head: bytes, rest: Iterator[memoryview], blob: GrowingFile) -> tuple[str, Descriptor]:
    """Gzip a layer into `blob`'s file; return its diff id and the compressed blob's descriptor.

    Two cores' worth: this thread reads and hashes the plain bytes while a worker thread
    compresses, hashes and writes them (hashlib and ISA-L release the GIL).
    """
    plain = hashlib.sha256()
    packer = _Packer(blob)
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(max_workers=1) as worker, packer:
        for chunk in _chunks(head, rest):
            pending.append(worker.submit(packer.add, chunk))
            plain.update(chunk)
            while len(pending) > _IN_FLIGHT:
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    descriptor = packer.descriptor()
    blob.finish(descriptor)
    return f"sha256:{plain.hexdigest()}", descriptor


class _Packer:
    """Compresses chunks in order into a blob's file, hashing and counting the compressed
    bytes; each write goes to the file unbuffered, so uploads following it see it at once."""

    def __init__(self, blob: GrowingFile) -> None:
        self._blob = blob
        self._sink = blob.path.open("wb", buffering=0)
        self._hash = hashlib.sha256()
        self._size = 0
        self._compressor = _deflate.compressobj(_LEVEL, _deflate.DEFLATED, 31)  # 31: gzip

    def add(self, chunk: bytes | memoryview) -> None:
        self._emit(self._compressor.compress(chunk))

    def _emit(self, data: bytes) -> None:
        if data:
            self._hash.update(data)
            self._sink.write(data)
            self._size += len(data)
            self._blob.grew(self._size)

    def __enter__(self) -> _Packer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._emit(self._compressor.flush())
        finally:
            self._sink.close()

    def descriptor(self) -> Descriptor:
        return Descriptor(
            media_type=LAYER_MEDIA_TYPE, digest=f"sha256:{self._hash.hexdigest()}", size=self._size
        )


def _chunks(head: bytes, rest: Iterator[memoryview]) -> Iterator[bytes | memoryview]:
    """The layer's bytes in blocks of exactly `_BLOCK` (the last one shorter), however the
    stream cut them: ISA-L's output depends on where its input is cut (zlib's does not), and
    the same layer must compress to the same blob, run after run."""
    pending = bytearray(head)
    for piece in rest:
        if not pending and len(piece) >= _BLOCK:  # whole blocks straight from the stream
            whole = len(piece) - len(piece) % _BLOCK
            for start in range(0, whole, _BLOCK):
                yield piece[start : start + _BLOCK]
            pending += piece[whole:]
            continue
        pending += piece
        if len(pending) >= _BLOCK:
            whole = len(pending) - len(pending) % _BLOCK
            view = bytes(pending[:whole])
            del pending[:whole]
            for start in range(0, whole, _BLOCK):
                yield memoryview(view)[start : start + _BLOCK]
    if pending:
        yield bytes(pending)
