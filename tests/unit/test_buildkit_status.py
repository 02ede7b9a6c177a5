"""The SDK engine's reading of a Docker daemon's BuildKit build (`/build?version=2`): the
protobuf status reports, the log made of them, and the archive BuildKit takes for a context.

tests/data/buildkit_onbuild_failure.jsonl is a real stream, captured from dockerd 28.5.2 on
the containerd store (2026-12-07): a build FROM a base with two ONBUILD triggers, a COPY, and
a RUN that prints to stdout and stderr and exits 3.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shipit.buildkit_status import Progress, Status, Vertex, decode
from shipit.docker_api import (
    BuildRequest,
    ContextNarrowed,
    DaemonError,
    DaemonInfo,
    StreamError,
    _archive_for_buildkit,
    _read_buildkit,
)
from shipit.errors import StageError
from shipit.plan import BuildSettings
from shipit.stages.build.sdk import SdkBuilder, builds_with_buildkit

CAPTURED = Path(__file__).parents[1] / "data" / "buildkit_onbuild_failure.jsonl"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    """One protobuf field: a varint for an int, length-delimited for text or bytes."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    raw = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


def _vertex(digest: str, name: str, **extra: Any) -> bytes:
    body = _field(1, digest) + _field(3, name)
    if extra.get("cached"):
        body += _field(4, 1)
    if extra.get("started"):
        body += _field(5, _field(1, 1_765_000_000))  # a Timestamp: seconds
    if extra.get("completed"):
        body += _field(6, _field(1, 1_765_000_001))
    if "error" in extra:
        body += _field(7, extra["error"])
    return _field(1, body)


def _log(digest: str, data: bytes, stream: int = 1) -> bytes:
    return _field(3, _field(1, digest) + _field(3, stream) + _field(4, data))


def _chunks() -> Iterator[dict[str, Any]]:
    with CAPTURED.open() as lines:
        for line in lines:
            yield json.loads(line)


def test_the_captured_stream_reads_as_steps_output_and_the_failed_step() -> None:
    lines: list[str] = []
    with pytest.raises(StreamError) as caught:
        _read_buildkit(_chunks(), lines.append, narrowed=False)
    assert "exit code: 3" in str(caught.value)
    assert caught.value.step == (
        '[5/5] RUN ["/bin/busybox","sh","-c","echo hello; echo err >&2; exit 3"]'
    )
    # each step once, in the order they started; what the processes printed, line by line
    assert "[2/5] ONBUILD COPY . /app" in lines and "[4/5] COPY x /x" in lines
    assert lines.count("[4/5] COPY x /x") == 1
    assert lines[lines.index('[3/5] ONBUILD RUN ["/bin/busybox","ls","/app"]') + 1 :][:2] == [
        "Dockerfile",
        "x",
    ]
    assert "hello" in lines and "err" in lines


def test_a_narrowed_context_stops_at_the_first_onbuild_trigger_before_it_runs() -> None:
    lines: list[str] = []
    with pytest.raises(ContextNarrowed) as caught:
        _read_buildkit(_chunks(), lines.append, narrowed=True)
    assert "ONBUILD" in str(caught.value)
    # the triggers were named in the report that listed every step, before any of them ran
    assert not any("ONBUILD" in line for line in lines)


def test_a_build_gives_the_image_id_of_its_last_message() -> None:
    trace = _vertex("sha256:aa", "[1/1] COPY a /a", started=True, completed=True)
    stream = [
        {"id": "moby.buildkit.trace", "aux": base64.b64encode(trace).decode()},
        {"id": "moby.image.id", "aux": {"ID": "sha256:" + "c" * 64}},
    ]
    lines: list[str] = []
    assert _read_buildkit(stream, lines.append, narrowed=True) == "sha256:" + "c" * 64
    assert lines == ["[1/1] COPY a /a"]


def test_a_stream_without_an_image_id_or_with_bad_reports_is_an_error_not_a_crash() -> None:
    stream = [
        {"id": "moby.buildkit.trace", "aux": "not base64!"},
        {"id": "moby.buildkit.trace", "aux": base64.b64encode(b"\x0a\x05ab").decode()},
        {"id": "moby.buildkit.trace", "aux": 7},
        {"stream": "a plain line\n"},
    ]
    lines: list[str] = []
    with pytest.raises(StreamError, match="without an image id"):
        _read_buildkit(stream, lines.append, narrowed=False)
    assert lines == ["a plain line"]


def test_fields_buildkit_may_add_are_skipped_by_their_wire_type() -> None:
    vertex = _field(1, "sha256:aa") + _field(3, "[1/2] RUN make")
    unknown = (
        _field(9, 5)  # a varint
        + _varint(10 << 3 | 1)  # 8 bytes
        + b"\x01" * 8
        + _varint(11 << 3 | 5)  # 4 bytes
        + b"\x02" * 4
        + _field(12, b"\xff\x00")  # bytes
    )
    status = decode(_field(1, vertex + unknown) + _field(2, b"statuses: not read") + unknown)
    assert status.vertexes == [Vertex(digest="sha256:aa", name="[1/2] RUN make")]


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"\x0a\x05ab", "length-delimited field runs past"),
        (b"\x08", "varint runs past"),
        (b"\x0b", "wire type 3"),
        (b"\x00\x01", "numbered 0"),
        (b"\x09\x01\x02", "fixed-size field runs past"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    ],
)
def test_a_report_that_is_not_protobuf_is_a_value_error(data: bytes, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        decode(data)


def test_decode_reads_a_status_of_every_kind() -> None:
    data = (
        _vertex("sha256:aa", "[1/2] FROM x", started=True, completed=True, cached=True)
        + _vertex("sha256:bb", "[2/2] RUN make", started=True, error="exit code: 2")
        + _log("sha256:bb", b"out\n", stream=2)
        + _field(4, _field(1, "sha256:bb") + _field(2, 1) + _field(3, b"JSONArgsRecommended"))
    )
    status = decode(data)
    assert status.vertexes[0] == Vertex("sha256:aa", "[1/2] FROM x", True, True, True, "")
    assert status.vertexes[1].error == "exit code: 2" and not status.vertexes[1].completed
    assert [(log.vertex, log.stream, log.data) for log in status.logs] == [
        ("sha256:bb", 2, b"out\n")
    ]
    assert status.warnings == [("sha256:bb", "JSONArgsRecommended")]


def test_progress_joins_output_split_across_reports_and_ends_an_unfinished_line() -> None:
    lines: list[str] = []
    progress = Progress(lines.append)
    progress.feed(Status(vertexes=[Vertex("d1", "[1/1] RUN x", started=True)]))
    progress.feed(decode(_log("d1", b"hel")))
    progress.feed(decode(_log("d1", b"lo\nwor")))
    progress.feed(decode(_log("d1", b"ld\r\n\n")))
    progress.feed(decode(_log("d1", b"no newline")))
    progress.feed(Status(vertexes=[Vertex("d1", "", started=True, completed=True)]))
    progress.finish()
    assert lines == ["[1/1] RUN x", "hello", "world", "no newline"]


def test_progress_names_a_cached_step_as_cached_and_a_step_it_knows_by_digest_alone() -> None:
    lines: list[str] = []
    progress = Progress(lines.append)
    progress.feed(Status(vertexes=[Vertex("d1", "[1/2] COPY a /a")]))  # announced
    progress.feed(Status(vertexes=[Vertex("d1", "", cached=True, completed=True)]))
    progress.feed(Status(vertexes=[Vertex("d2", "", started=True, error="boom")]))
    assert lines == ["[1/2] COPY a /a: cached", "d2"]
    assert progress.failed == "d2" and progress.onbuild is None


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getmembers()


def test_the_archive_starts_with_a_header_that_stands_alone(tmp_path: Path) -> None:
    """BuildKit reads 1024 bytes to tell an archive from a Dockerfile: the first member's
    header must be one 512-byte ustar block, not a pax or long-name header first."""
    long_name = "a" * 120  # sorts first, needs a long-name header
    (tmp_path / long_name).write_text("long")
    (tmp_path / "link").symlink_to("b" * 150)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "zeta").write_text("z")
    os.utime(tmp_path / "Dockerfile", (1.5, 1_700_000_000.75))  # a fraction: a pax header
    out = io.BytesIO()
    files = sorted([long_name, "link", "Dockerfile", "zeta"], key=lambda p: (p != long_name, p))
    _archive_for_buildkit(str(tmp_path), files, out, [(".dockerignore", "*.md\n")])
    data = out.getvalue()
    first = data[:512]
    assert first[156:157] == b"0"  # a regular file's own header, no pax ('x') or GNU ('L')
    assert first[:10] == b"Dockerfile"
    names = [member.name for member in _members(data)]
    assert names == ["Dockerfile", long_name, "link", "zeta", ".dockerignore"]
    members = {member.name: member for member in _members(data)}
    assert members["Dockerfile"].mtime == 1_700_000_000  # whole seconds for the first alone
    assert members["link"].linkname == "b" * 150
    # Go's reader in BuildKit sees the first header in the first 1024 bytes; so does Python's
    with tarfile.open(fileobj=io.BytesIO(data[:1024])) as head:
        assert head.next() is not None


def test_an_extra_file_overrides_the_contexts_own_in_the_archive(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("the context's own")
    (tmp_path / "a").write_text("a")
    out = io.BytesIO()
    _archive_for_buildkit(str(tmp_path), [".dockerignore", "a"], out, [(".dockerignore", "x")])
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
        assert archive.getnames() == ["a", ".dockerignore"]
        member = archive.extractfile(".dockerignore")
        assert member is not None and member.read() == b"x"


class _Daemon:
    """What the SDK engine asks of a daemon before a BuildKit build: its environment and
    platform, which images it holds (inspect), and pulls."""

    def __init__(self, env: dict[str, str], held: set[str], refuse: str = "") -> None:
        self.env = env
        self.held = held
        self.refuse = refuse
        self.pulled: list[tuple[str, str]] = []

    def describe(self) -> DaemonInfo:
        return _info()

    def inspect(self, name: str) -> dict[str, str]:
        if name not in self.held:
            raise DaemonError(f"No such image: {name}")
        return {"Id": "sha256:" + "1" * 64}

    def pull(self, name: str, platform: str) -> None:
        if self.refuse:
            raise DaemonError(self.refuse)
        self.pulled.append((name, platform))
        self.held.add(name)


def _info(**changes: Any) -> DaemonInfo:
    values: dict[str, Any] = {
        "version": "28.5.2",
        "api_version": "1.51",
        "containerd_store": True,
        "builder_version": "2",
    }
    return DaemonInfo(**{**values, **changes})


@pytest.mark.parametrize(
    ("variable", "store", "podman", "offered", "chosen"),
    [
        (None, True, False, "2", True),  # the containerd store: BuildKit
        (None, False, False, "2", False),  # the classic store: its classic builder
        (None, False, False, "", False),  # dockerd 20.10
        ("0", True, False, "2", False),  # as `DOCKER_BUILDKIT=0 docker build`
        ("false", True, False, "2", False),
        ("1", False, False, "", True),  # as `DOCKER_BUILDKIT=1 docker build`, even on 20.10
        ("yes", False, False, "2", False),  # not a Go boolean: as if unset
        (None, True, False, "1", False),  # BuildKit not the default in daemon.json
        ("1", True, False, "1", True),  # ... but asked for: as the docker CLI asks
        (None, True, True, "2", False),  # Podman builds with buildah
        ("1", True, True, "2", False),
    ],
)
def test_which_builder_an_sdk_build_gets(
    tmp_path: Path, variable: str | None, store: bool, podman: bool, offered: str, chosen: bool
) -> None:
    env = {} if variable is None else {"DOCKER_BUILDKIT": variable}
    info = _info(containerd_store=store, podman=podman, builder_version=offered)
    settings, _ = _request(tmp_path, "FROM scratch\n")
    assert builds_with_buildkit(env, info, settings) is chosen
    cached = replace(settings, cache_from=("registry.example/team/app:cache",))
    assert builds_with_buildkit(env, info, cached) is False  # its entries are images


def _request(tmp_path: Path, dockerfile: str, *, pull: bool = False) -> tuple[Any, Any]:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    settings = BuildSettings(
        context=str(tmp_path),
        dockerfile="Dockerfile",
        target=None,
        platforms=(),
        build_args={"BASE": "registry.example:5000/team/base:1"},
        labels={},
        pull=pull,
        cache_from=(),
    )
    request = BuildRequest(
        context=tmp_path,
        dockerfile="Dockerfile",
        tag="app:local",
        build_args=settings.build_args,
        pull=pull,
        buildkit=True,
    )
    return settings, request


DOCKERFILE = "ARG BASE\nFROM ${BASE} AS build\nFROM busybox\nCOPY --from=build /a /a\n"


def test_before_a_buildkit_build_the_daemon_pulls_every_base(tmp_path: Path) -> None:
    """BuildKit resolves each base in its registry, without credentials behind the Engine
    API: the daemon pulls them all first (with the docker config's), held or not, so that
    what it holds is what the registry holds, and the build does not pull again."""
    daemon = _Daemon({}, held={"busybox"})
    settings, request = _request(tmp_path, DOCKERFILE)
    lines: list[str] = []
    sent = SdkBuilder(daemon)._bases_pulled(request, settings, "app", _console(lines))  # type: ignore[arg-type]
    assert daemon.pulled == [
        ("registry.example:5000/team/base:1", "linux/amd64"),
        ("busybox", "linux/amd64"),
    ]
    assert sent.pull is False and sent.buildkit
    assert lines[0] == "pulling base image registry.example:5000/team/base:1 for linux/amd64"


def test_a_refused_pull_keeps_a_held_base_as_buildkit_does_and_fails_a_missing_one(
    tmp_path: Path,
) -> None:
    settings, request = _request(tmp_path, DOCKERFILE)
    held = _Daemon({}, held={"busybox", "registry.example:5000/team/base:1"}, refuse="denied")
    lines: list[str] = []
    sent = SdkBuilder(held)._bases_pulled(request, settings, "app", _console(lines))  # type: ignore[arg-type]
    assert sent.pull is False
    assert any("not pulled (denied); the build uses the one the daemon holds" in x for x in lines)
    missing = _Daemon({}, held={"busybox"}, refuse="no basic auth credentials")
    with pytest.raises(StageError) as caught:
        SdkBuilder(missing)._bases_pulled(request, settings, "app", _console([]))  # type: ignore[arg-type]
    assert caught.value.message == (
        "build: image app: cannot pull base image registry.example:5000/team/base:1:"
        " no basic auth credentials"
    )
    # with `pull`, BuildKit has no fallback: neither has shipit
    _, pulling = _request(tmp_path, DOCKERFILE, pull=True)
    with pytest.raises(StageError, match="cannot pull base image"):
        SdkBuilder(held)._bases_pulled(pulling, settings, "app", _console([]))  # type: ignore[arg-type]


def _console(lines: list[str]) -> Any:
    class Console:
        verbosity = 0

        def write(self, line: str) -> None:
            lines.append(line)

    return Console()
