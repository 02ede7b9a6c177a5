"""The export's tar reader against archives the standard library writes, in every format.

Each archive is cut into chunks of awkward sizes (one byte, a prime, a header and a bit, the
whole) and what `read_tar` yields is compared with what `tarfile` itself reads back.
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from shipit.stages.tar_stream import Entry, TarStreamError, read_tar

LONG = "deep/" * 30 + "name-longer-than-one-hundred-bytes.bin"  # 188 bytes: PAX or GNU L


def archive(fmt: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        folder = tarfile.TarInfo("etc")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in (
            ("etc/hello.txt", b"hello\n"),
            ("./empty", b""),
            ("exact", b"x" * 1024),
            (LONG, os.urandom(70_000)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("etc/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "../exact" if fmt == tarfile.USTAR_FORMAT else "../" + LONG
        tar.addfile(link)
        hard = tarfile.TarInfo("hard")
        hard.type = tarfile.LNKTYPE
        hard.linkname = "exact"
        tar.addfile(hard)
    return buffer.getvalue()


def expected(raw: bytes) -> list[tuple[Entry, bytes]]:
    found = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar:
            kind = (
                "file"
                if member.isreg()
                else "symlink"
                if member.issym()
                else "hardlink"
                if member.islnk()
                else "other"
            )
            handle = tar.extractfile(member) if member.isreg() else None
            data = handle.read() if handle else b""
            entry = Entry(
                name=os.path.normpath(member.name),
                kind=kind,
                size=member.size,
                link=member.linkname,
            )
            found.append((entry, data))
    return found


def drain(raw: bytes) -> None:
    for _, data in read_tar([raw]):
        for _ in data:
            pass


def cut(raw: bytes, size: int) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("chunk", [1, 511, 513, 7777, 1 << 30])
def test_every_member_and_byte_as_tarfile_reads_them(fmt: int, chunk: int) -> None:
    raw = archive(fmt)  # USTAR holds LONG in its prefix field; GNU and PAX in headers of their own
    got = [(entry, b"".join(bytes(p) for p in data)) for entry, data in read_tar(cut(raw, chunk))]
    assert got == expected(raw)
    assert got[-3][0].name == LONG
    link = "../exact" if fmt == tarfile.USTAR_FORMAT else "../" + LONG
    assert got[-2][0] == Entry(name="etc/link", kind="symlink", size=0, link=link)
    assert got[-1][0] == Entry(name="hard", kind="hardlink", size=0, link="exact")


def test_data_left_unread_is_skipped() -> None:
    raw = archive(tarfile.PAX_FORMAT)
    names = [entry.name for entry, _ in read_tar(cut(raw, 1000))]
    assert names == [entry.name for entry, _ in expected(raw)]


def test_the_pieces_are_views_of_the_chunks_not_copies() -> None:
    raw = archive(tarfile.GNU_FORMAT)
    for entry, data in read_tar([raw]):
        for piece in data:
            assert isinstance(piece, memoryview)
            assert piece.obj is raw or entry.size == 0


def test_a_truncated_stream_is_an_error() -> None:
    raw = archive(tarfile.PAX_FORMAT)
    with pytest.raises(TarStreamError, match=r"ends \d+ bytes early"):
        drain(raw[: len(raw) // 2])


def test_a_damaged_header_is_an_error() -> None:
    raw = bytearray(archive(tarfile.GNU_FORMAT))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        second = tar.getmembers()[1].offset
    raw[second + 10] ^= 0xFF  # inside the second member's name: its checksum breaks
    with pytest.raises(TarStreamError, match="damaged tar header"):
        drain(bytes(raw))


def test_a_stream_without_the_end_blocks_still_ends() -> None:
    raw = archive(tarfile.PAX_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        end = tar.getmembers()[-1].offset + 512  # the last member (a link) has no data
    assert raw[end:].count(0) == len(raw) - end
    members = list(read_tar([raw[:end]]))
    assert [e.name for e, _ in members] == [e.name for e, _ in expected(raw)]
