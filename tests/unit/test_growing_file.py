"""`GrowingFile`: readers follow a file while its writer is still writing it."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from shipit.registry import Descriptor, GrowingFile, SourceFailed


def write_in_steps(blob: GrowingFile, data: bytes, steps: list[threading.Event]) -> None:
    """Write `data` in len(steps) pieces, each after its event is set; then finish."""
    piece = -(-len(data) // len(steps))
    with blob.path.open("wb", buffering=0) as sink:
        for index, step in enumerate(steps):
            assert step.wait(10)
            sink.write(data[index * piece : (index + 1) * piece])
            blob.grew(min(len(data), (index + 1) * piece))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob.finish(Descriptor(media_type="application/octet-stream", digest=digest, size=len(data)))


def test_readers_follow_the_writer_and_get_every_byte(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    blob = GrowingFile(tmp_path / "layer")
    steps = [threading.Event() for _ in range(4)]
    writer = threading.Thread(target=write_in_steps, args=(blob, data, steps))
    writer.start()
    steps[0].set()
    readers = [blob.follow() for _ in range(3)]
    got = [bytearray(next(reader)) for reader in readers]  # before the second piece exists
    assert not blob.finished
    for step in steps[1:]:
        step.set()
    for reader, buffer in zip(readers, got, strict=True):
        buffer.extend(b"".join(reader))
    writer.join()
    assert all(bytes(x) == data for x in got)
    assert blob.result().size == len(data)
    assert bytes(b"".join(blob.follow())) == data  # a finished file reads as a plain one


def test_a_writer_that_gives_up_stops_every_reader(tmp_path: Path) -> None:
    blob = GrowingFile(tmp_path / "layer")
    blob.path.write_bytes(b"abc")
    blob.grew(3)
    reader = blob.follow()
    assert next(reader) == b"abc"
    waiting = threading.Thread(target=lambda: blob.fail("the export broke off"))
    waiting.start()
    with pytest.raises(SourceFailed, match="the export broke off"):
        next(reader)
    with pytest.raises(SourceFailed):
        blob.result()
    waiting.join()


def test_fail_after_finish_changes_nothing(tmp_path: Path) -> None:
    blob = GrowingFile(tmp_path / "layer")
    blob.path.write_bytes(b"")
    done = Descriptor(media_type="x", digest="sha256:" + hashlib.sha256(b"").hexdigest(), size=0)
    blob.finish(done)
    blob.fail("too late")
    assert blob.result() == done
    assert list(blob.follow()) == []
