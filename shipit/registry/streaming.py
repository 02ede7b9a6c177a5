"""A blob's bytes on their way to a registry: where they come from, and the check on the way.

A `BlobSource` opens a blob as chunks, once per upload attempt (so a failed upload can start
over): from memory, from a file on disk (a layer the export stage compressed), or as a
streaming GET from another registry. `VerifiedBody` is the request body of an upload: it counts
and hashes the chunks as they go and holds the last one back until the whole blob has matched
its digest and size, so a registry never completes an upload of wrong bytes. A layer hashed as
the export stage wrote it is only counted, not hashed again (the registry checks its digest).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final

import requests

from shipit.registry.errors import RegistryError
from shipit.registry.oci import Descriptor, short_digest

STREAM_CHUNK: Final = 1024 * 1024
# A streamed (chunked) request body reaches the socket piece by piece, each framed by urllib3
# 2.x as `b"%x\r\n%b\r\n" % (len(piece), piece)`: a copy that costs about 0.7 ms per 1 MiB
# piece but a tenth of that per byte for 64 KiB ones (measured with Python 3.11), so
# `GrowingFile.follow` hands out pieces of 64 KiB.
FOLLOW_PIECE: Final = 64 * 1024


BlobSource = Callable[[], contextlib.AbstractContextManager[Iterator[bytes]]]
"""Opens a blob's bytes as chunks, once per upload attempt."""


@contextlib.contextmanager
def _bytes_chunks_cm(data: bytes) -> Iterator[Iterator[bytes]]:
    yield (data[i : i + STREAM_CHUNK] for i in range(0, len(data), STREAM_CHUNK))


def bytes_chunks(data: bytes) -> BlobSource:
    """The source of a blob held in memory (an image config, say)."""
    return functools.partial(_bytes_chunks_cm, data)


@contextlib.contextmanager
def _file_chunks_cm(path: Path) -> Iterator[Iterator[bytes]]:
    with path.open("rb") as file:
        yield iter(functools.partial(file.read, STREAM_CHUNK), b"")


def file_chunks(path: Path) -> BlobSource:
    """The source of a blob in a file, read from disk a chunk at a time."""
    return functools.partial(_file_chunks_cm, path)


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """`chunks` regrouped into pieces of `size` bytes (the last may be shorter)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


class VerifiedBody:
    """A blob streamed from a source: counted and (unless `check` is off) hashed on the way.

    The last chunk is held back until the whole blob has matched its size and digest, so a
    target never completes an upload of wrong bytes. `check=False` is for bytes shipit hashed
    itself as it wrote them: only their size is checked here, and the registry checks the
    digest before it accepts the blob. `len()` gives requests a Content-Length.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        blob: Descriptor,
        *,
        origin: str,
        host: str,
        on_bytes: Callable[[int], None] | None,
        check: bool = True,
    ) -> None:
        self._chunks = chunks
        self._blob = blob
        self._origin = origin
        self._host = host
        self._on_bytes = on_bytes
        self._check = check

    def __len__(self) -> int:
        return self._blob.size

    def __iter__(self) -> Iterator[bytes]:
        blob = self._blob
        hasher = hashlib.new(blob.digest.split(":", 1)[0]) if self._check else None
        total = 0
        held = b""
        try:
            for chunk in self._chunks:
                if not chunk:
                    continue
                total += len(chunk)
                if total > blob.size:
                    raise self._mismatch(f"more than its {blob.size} bytes")
                if hasher is not None:
                    hasher.update(chunk)
                if held:
                    yield held
                    self._progress(total - len(chunk))
                held = chunk
        except requests.RequestException as exc:
            raise RegistryError(
                f"reading blob {short_digest(blob.digest)} from {self._origin} broke off after "
                f"{total} bytes: {type(exc).__name__}",
                host=self._host,
                kind="connect",
            ) from exc
        digest = f"{hasher.name}:{hasher.hexdigest()}" if hasher is not None else blob.digest
        if total != blob.size or digest != blob.digest:
            raise self._mismatch(f"{total} bytes with digest {digest}")
        if held:
            yield held
        self._progress(total)

    def _progress(self, done: int) -> None:
        if self._on_bytes is not None:
            self._on_bytes(done)

    def _mismatch(self, got: str) -> RegistryError:
        return RegistryError(
            f"blob {self._blob.digest} from {self._origin} does not match its descriptor "
            f"({self._blob.size} bytes): got {got}; the source registry's copy is damaged",
            host=self._host,
            kind="protocol",
        )


class SourceFailed(Exception):
    """The writer of a `GrowingFile` gave up (the export failed); the blob will not exist."""


class GrowingFile:
    """A blob file still being written, which readers can follow as it grows.

    The file is created (empty) here, so readers can open it at once. The writer then writes
    it (unbuffered, in place) and calls `grew(size)` once `size` bytes are in it, then
    `finish(descriptor)` with the blob's digest and size, or `fail(reason)`. Any thread may
    `follow()` the bytes as they come or wait for the `result()`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()
        self._changed = threading.Condition()
        self._size = 0
        self._descriptor: Descriptor | None = None
        self._failure: str | None = None

    def grew(self, size: int) -> None:
        with self._changed:
            self._size = size
            self._changed.notify_all()

    def finish(self, descriptor: Descriptor) -> None:
        with self._changed:
            self._size = descriptor.size
            self._descriptor = descriptor
            self._changed.notify_all()

    def fail(self, reason: str) -> None:
        """Give up the blob (no-op once it is finished): every reader stops with `SourceFailed`."""
        with self._changed:
            if self._descriptor is None and self._failure is None:
                self._failure = reason
                self._changed.notify_all()

    @property
    def finished(self) -> bool:
        with self._changed:
            return self._descriptor is not None

    def result(self) -> Descriptor:
        """The finished blob's descriptor, once the writer is done (raises `SourceFailed`)."""
        with self._changed:
            self._changed.wait_for(lambda: self._descriptor is not None or self._failure)
            if self._descriptor is None:
                raise SourceFailed(self._failure)
            return self._descriptor

    def _available(self, offset: int) -> tuple[int, bool]:
        """Wait until there is more than `offset` bytes or the blob is done: (size, done)."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._size > offset or self._descriptor is not None or self._failure
            )
            if self._failure is not None:
                raise SourceFailed(self._failure)
            return self._size, self._descriptor is not None

    def follow(self) -> Iterator[bytes]:
        """The blob's bytes as they reach the file, to the end of the finished blob: read a MiB
        at a time, handed out in pieces of `FOLLOW_PIECE` bytes."""
        with self.path.open("rb", buffering=0) as file:
            offset = 0
            while True:
                size, done = self._available(offset)
                while offset < size:
                    data = file.read(min(STREAM_CHUNK, size - offset))
                    if not data:
                        raise SourceFailed(f"{self.path} is shorter than its writer said")
                    offset += len(data)
                    for start in range(0, len(data), FOLLOW_PIECE):
                        yield data[start : start + FOLLOW_PIECE]
                if done:
                    return
