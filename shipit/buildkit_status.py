"""BuildKit's progress, as a Docker daemon's `/build?version=2` streams it.

dockerd's BuildKit backend sends each `moby.buildkit.v1.StatusResponse` it gets from its
solver as a JSON message `{"id": "moby.buildkit.trace", "aux": "<base64>"}`, the base64 of
the message's protobuf encoding, and at the end `{"id": "moby.image.id", "aux": {"ID": ...}}`
(moby's daemon/internal/builder-next/builder.go, `aux.Emit`). The fields read here are those
of buildkit's api/services/control/control.proto (as vendored by moby, read 2026-12-07):

- StatusResponse: 1 repeated Vertex vertexes, 3 repeated VertexLog logs, 4 repeated
  VertexWarning warnings (2, the statuses' byte counts, is not read);
- Vertex: 1 string digest, 3 string name, 4 bool cached, 5 Timestamp started, 6 Timestamp
  completed, 7 string error;
- VertexLog: 1 string vertex, 3 int64 stream, 4 bytes msg;
- VertexWarning: 1 string vertex, 3 bytes short.

The wire format is protobuf's (protobuf.dev, "Encoding"): each field a varint key (field
number << 3 | wire type), then a varint (type 0), 8 bytes (1), a varint length and that many
bytes (2) or 4 bytes (5). Fields not listed are skipped by their wire type, so a newer
BuildKit's additions do not break the reading; a message that does not parse is ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


@dataclass
class Vertex:
    """One step of the build as BuildKit reports it (each report repeats what it knows)."""

    digest: str = ""
    name: str = ""
    cached: bool = False
    started: bool = False
    completed: bool = False
    error: str = ""


@dataclass
class Log:
    vertex: str
    stream: int  # 1 stdout, 2 stderr
    data: bytes


@dataclass
class Status:
    """What one StatusResponse says."""

    vertexes: list[Vertex] = field(default_factory=list)
    logs: list[Log] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (vertex, text)


def decode(data: bytes) -> Status:
    """A StatusResponse's fields read from its protobuf encoding; ValueError when it is not one."""
    status = Status()
    for number, value in _fields(data):
        if number == 1 and isinstance(value, bytes):
            status.vertexes.append(_vertex(value))
        elif number == 3 and isinstance(value, bytes):
            status.logs.append(_log(value))
        elif number == 4 and isinstance(value, bytes):
            status.warnings.append(_warning(value))
    return status


def _vertex(data: bytes) -> Vertex:
    vertex = Vertex()
    for number, value in _fields(data):
        if number == 1:
            vertex.digest = _text(value)
        elif number == 3:
            vertex.name = _text(value)
        elif number == 4:
            vertex.cached = bool(value)
        elif number == 5:
            vertex.started = True
        elif number == 6:
            vertex.completed = True
        elif number == 7:
            vertex.error = _text(value)
    return vertex


def _log(data: bytes) -> Log:
    vertex, stream, msg = "", 0, b""
    for number, value in _fields(data):
        if number == 1:
            vertex = _text(value)
        elif number == 3 and isinstance(value, int):
            stream = value
        elif number == 4 and isinstance(value, bytes):
            msg = value
    return Log(vertex, stream, msg)


def _warning(data: bytes) -> tuple[str, str]:
    vertex, short = "", ""
    for number, value in _fields(data):
        if number == 1:
            vertex = _text(value)
        elif number == 3:
            short = _text(value)
    return vertex, short


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ValueError("a text field is not length-delimited")
    return value.decode("utf-8", errors="replace")


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of one message: an int for a varint or a fixed
    number, bytes for a length-delimited field."""
    at, end = 0, len(data)
    while at < end:
        key, at = _varint(data, at)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise ValueError("a field numbered 0")
        if kind == _VARINT:
            value, at = _varint(data, at)
            yield number, value
        elif kind in (_FIXED64, _FIXED32):
            size = 8 if kind == _FIXED64 else 4
            if at + size > end:
                raise ValueError("a fixed-size field runs past the message")
            yield number, int.from_bytes(data[at : at + size], "little")
            at += size
        elif kind == _BYTES:
            size, at = _varint(data, at)
            if at + size > end:
                raise ValueError("a length-delimited field runs past the message")
            yield number, data[at : at + size]
            at += size
        else:
            raise ValueError(f"wire type {kind} (groups are not used by BuildKit)")


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("a varint runs past the message")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


_ONBUILD = re.compile(r"^\[[^\]]*\] ONBUILD ")  # a base's trigger: "[2/5] ONBUILD COPY . /app"


class Progress:
    """The build's log from BuildKit's status reports, as lines for `on_line`: each step's
    name once, when it starts (or `<name>: cached`), what its process prints, line by line,
    and BuildKit's warnings. Each report repeats a step with what is known of it so far.

    `failed` is the name of the step BuildKit reported an error for; `onbuild` that of the
    first step which is a base image's ONBUILD trigger. BuildKit names every step of the
    build in its first reports, before any runs (seen on dockerd 28.5: `[2/5] ONBUILD COPY .
    /app` announced before `[1/3] FROM` started)."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self.failed: str | None = None
        self.onbuild: str | None = None
        self._names: dict[str, str] = {}
        self._shown: set[str] = set()
        self._partial: dict[str, bytes] = {}

    def feed(self, status: Status) -> None:
        for vertex in status.vertexes:
            name = vertex.name or self._names.get(vertex.digest, vertex.digest)
            self._names[vertex.digest] = name
            if self.onbuild is None and _ONBUILD.match(name):
                self.onbuild = name
            if vertex.digest not in self._shown and (vertex.started or vertex.cached):
                self._shown.add(vertex.digest)
                self.on_line(f"{name}: cached" if vertex.cached else name)
            if vertex.error and self.failed is None:
                self.failed = name
        for log in status.logs:
            lines = (self._partial.pop(log.vertex, b"") + log.data).split(b"\n")
            if lines[-1]:
                self._partial[log.vertex] = lines[-1]
            for line in lines[:-1]:
                self._line(line)
        for _, text in status.warnings:
            self.on_line(f"warning: {text.strip()}")

    def finish(self) -> None:
        """The last line of each step that printed one without a newline."""
        for rest in self._partial.values():
            self._line(rest)
        self._partial.clear()

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if text.strip():
            self.on_line(text)
