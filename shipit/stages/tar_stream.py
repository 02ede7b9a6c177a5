"""A tar archive read as it streams, without copying its file data.

`docker save` sends the image as a tar stream of chunks. The standard library's stream mode
(`tarfile.open(mode="r|")`) copies every byte several times on the way (it joins and slices
its read buffer for each read); here a member's data comes out as `memoryview`s of the chunks
the daemon sent, so the export's hashing and compression see each byte without a copy.

What is read (POSIX.1-1988 ustar headers, as `tarfile.TarInfo.frombuf` parses them, plus the
two ways to carry longer names: PAX extended headers, type `x`, whose `path`, `linkpath` and
`size` records apply to the next member, and GNU long names, types `L` and `K`; both are
described in GNU tar's manual, "Basic Tar Format", and POSIX.1-2001 pax): regular files,
symbolic and hard links. Other members (folders, devices) are skipped. A truncated stream or
a damaged header is an `ExportError`.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

BLOCK: Final = 512
_MAX_META: Final = 1024 * 1024  # a PAX header or GNU long name larger than this is refused


class TarStreamError(Exception):
    """The stream is not a tar archive shipit can read; says where it broke."""


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One member: its normalised name, what it is, its data size and a link's target."""

    name: str
    kind: Literal["file", "symlink", "hardlink", "other"]
    size: int
    link: str = ""


class _Cursor:
    """The stream as a sequence of bytes, handed out as views of the chunks it arrived in."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._view = memoryview(b"")

    def _fill(self) -> bool:
        while not self._view:
            try:
                self._view = memoryview(next(self._chunks))
            except StopIteration:
                return False
        return True

    def pieces(self, count: int) -> Iterator[memoryview]:
        """The next `count` bytes, as views (each at most one chunk long)."""
        while count > 0:
            if not self._fill():
                raise TarStreamError(f"the stream ends {count} bytes early")
            piece = self._view[:count]
            self._view = self._view[len(piece) :]
            count -= len(piece)
            yield piece

    def read(self, count: int) -> bytes:
        return b"".join(self.pieces(count))

    def at_end(self) -> bool:
        return not self._fill()

    def drain(self) -> None:
        """Read what is left (the zero blocks that end an archive), so the sender finishes."""
        while self._fill():
            self._view = memoryview(b"")


def read_tar(chunks: Iterable[bytes]) -> Iterator[tuple[Entry, Iterator[memoryview]]]:
    """Each member with an iterator over its data. Data left unread is skipped when the next
    member is asked for; the data iterator is only valid until then."""
    cursor = _Cursor(chunks)
    pending: dict[str, str] = {}  # what PAX or GNU headers say about the next member
    while not cursor.at_end():
        block = cursor.read(BLOCK)
        if block.count(0) == BLOCK:  # the end of the archive: two zero blocks
            break
        info = _header(block)
        padded = -(-info.size // BLOCK) * BLOCK
        if info.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            if info.size > _MAX_META:
                raise TarStreamError(f"an extended header of {info.size} bytes")
            meta = cursor.read(padded)[: info.size]
            pending.update(_extended(info.type, meta))
            continue
        if info.type == tarfile.XGLTYPE:  # global PAX defaults: nothing shipit reads
            cursor.read(padded)
            continue
        size = int(pending.get("size", info.size))
        padded = -(-size // BLOCK) * BLOCK
        entry = Entry(
            name=posixpath.normpath(pending.get("path", info.name)),
            kind=_kind(info),
            size=size,
            link=pending.get("linkpath", info.linkname),
        )
        pending = {}
        data = cursor.pieces(padded)
        yield entry, _limited(data, size)
        for _ in data:  # skip what the caller did not read, and the padding
            pass
    cursor.drain()


def _header(block: bytes) -> tarfile.TarInfo:
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise TarStreamError(f"a damaged tar header ({exc})") from None


def _kind(info: tarfile.TarInfo) -> Literal["file", "symlink", "hardlink", "other"]:
    if info.isreg():
        return "file"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "other"


def _extended(kind: bytes, meta: bytes) -> dict[str, str]:
    """The records of a PAX header (`LENGTH KEY=VALUE\\n` each), or a GNU long (link) name."""
    if kind == tarfile.GNUTYPE_LONGNAME:
        return {"path": meta.rstrip(b"\0").decode("utf-8", "surrogateescape")}
    if kind == tarfile.GNUTYPE_LONGLINK:
        return {"linkpath": meta.rstrip(b"\0").decode("utf-8", "surrogateescape")}
    records: dict[str, str] = {}
    position = 0
    while position < len(meta) and meta[position] != 0:
        length_text, _, _ = meta[position : position + 20].partition(b" ")
        if not length_text.isdigit() or int(length_text) <= len(length_text):
            raise TarStreamError("a damaged PAX header")
        record = meta[position : position + int(length_text)]
        key, _, value = record[len(length_text) + 1 :].rstrip(b"\n").partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += int(length_text)
    if "size" in records and not records["size"].isdigit():
        raise TarStreamError(f"a PAX size of {records['size']!r}")
    return records


def _limited(pieces: Iterator[memoryview], size: int) -> Iterator[memoryview]:
    """The first `size` bytes of `pieces` (the rest is the block padding)."""
    left = size
    if left <= 0:
        return
    for piece in pieces:
        chunk = piece[:left]
        left -= len(chunk)
        yield chunk
        if left <= 0:
            return
