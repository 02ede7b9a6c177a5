"""Reading the daemon's build stream: errors inside a 200 stream, the failing step. And what
the build memo asks the daemon: whether it holds an image and its steps (`Daemon.holds`)."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import socketserver
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipit.docker_api import Daemon, DaemonError, StreamError, _read_build


def test_a_build_stream_gives_the_image_id_and_streams_lines() -> None:
    lines: list[str] = []
    chunks = [
        {"stream": "Step 1/2 : FROM scratch\n"},
        {"stream": " ---> \n"},
        {"stream": "Step 2/2 : COPY a /a\n ---> 123abc\n"},
        {"aux": {"ID": "sha256:" + "1" * 64}},
        {"stream": "Successfully built 123abc\n"},
    ]
    assert _read_build(chunks, lines.append) == "sha256:" + "1" * 64
    assert lines[0] == "Step 1/2 : FROM scratch"
    assert "Successfully built 123abc" in lines


def test_an_error_inside_the_stream_names_the_failing_step() -> None:
    chunks = [
        {"stream": "Step 1/3 : FROM scratch\n"},
        {"stream": "Step 2/3 : COPY missing /x\n"},
        {
            "errorDetail": {"message": "COPY failed: file not found"},
            "error": "COPY failed: file not found",
        },
    ]
    with pytest.raises(StreamError, match="COPY failed") as info:
        _read_build(chunks, lambda _: None)
    assert info.value.step == "step 2/3 (COPY missing /x)"


def test_a_stream_that_ends_without_an_image_is_an_error() -> None:
    with pytest.raises(StreamError, match="without an image id"):
        _read_build([{"stream": "Step 1/1 : FROM scratch\n"}], lambda _: None)


def test_a_missing_socket_is_named_without_a_connection_attempt(tmp_path: Path) -> None:
    with pytest.raises(DaemonError, match=r"does not answer at unix://.*no such socket"):
        Daemon({"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"})


def _hex(n: int) -> str:
    """Image n's id, without sha256: (its first 12 digits tell it from the others)."""
    return hashlib.sha256(str(n).encode()).hexdigest()


class _FakeDaemon(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A Docker API on a unix socket holding `chains`: each an image's history, newest first
    (ids, or None for `<missing>`). `GET /images/{id}/history` answers the chain whose head
    starts with id (404 when none does), `GET /images/json` lists every id it holds; each
    request is counted by its kind."""

    daemon_threads = True

    def __init__(self, path: Path, chains: list[list[int | None]]) -> None:
        self.chains = chains
        self.asked: list[str] = []
        self.fail = False  # every image request a 500
        self.unnamed: set[int] = set()  # held, but their history names no image id
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                status, body = 200, b'{"ApiVersion": "1.41", "Version": "28.5.2"}'
                if server.fail and "/images/" in path:
                    status, body = 500, b'{"message": "the store is broken"}'
                elif path.endswith("/images/json"):
                    server.asked.append("list")
                    held = {x for chain in server.chains for x in chain if x is not None}
                    held |= server.unnamed
                    body = json.dumps([{"Id": f"sha256:{_hex(x)}"} for x in held]).encode()
                elif path.endswith("/history"):
                    wanted = path.split("/images/")[1].removesuffix("/history")
                    wanted = wanted.removeprefix("sha256%3A").removeprefix("sha256:")
                    server.asked.append(f"history {wanted[:12]}")
                    found = [c for c in server.chains if c[0] and _hex(c[0]).startswith(wanted)]
                    if any(_hex(x).startswith(wanted) for x in server.unnamed):
                        body = b'[{"Id": "<missing>"}]'
                    elif found:
                        body = json.dumps([
                            {"Id": f"sha256:{_hex(x)}" if x is not None else "<missing>"}
                            for x in found[0]
                        ]).encode()  # fmt: skip
                    else:
                        status, body = 404, b'{"message": "No such image"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def address_string(self) -> str:
                return "unix"

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(str(path), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def fake_daemon() -> Iterator[Callable[[list[list[int | None]]], tuple[Daemon, _FakeDaemon]]]:
    """Start a fake daemon with chains; a unix socket's path has room for 107 bytes: not
    under pytest's long tmp_path."""
    folder = Path(tempfile.mkdtemp(prefix="shipit-fake-", dir="/tmp"))
    started: list[tuple[Daemon, _FakeDaemon]] = []

    def start(chains: list[list[int | None]]) -> tuple[Daemon, _FakeDaemon]:
        socket = folder / f"docker-{len(started)}.sock"
        fake = _FakeDaemon(socket, chains)
        started.append((Daemon({"DOCKER_HOST": f"unix://{socket}"}), fake))
        return started[-1]

    try:
        yield start
    finally:
        for daemon, fake in started:
            daemon.close()
            fake.shutdown()
            fake.server_close()
        shutil.rmtree(folder, ignore_errors=True)


def _short(*numbers: int) -> list[str]:
    return [_hex(n)[:12] for n in numbers]


def test_two_stages_are_settled_by_two_histories_without_a_listing(fake_daemon: Any) -> None:
    # builder: 1 <- 2 <- 3; runtime: 1 <- 4 <- 5 (the image), as a build printed its steps
    daemon, fake = fake_daemon([[3, 2, 1], [5, 4, 1]])
    assert daemon.holds(f"sha256:{_hex(5)}", _short(1, 2, 3, 1, 4, 5))
    assert fake.asked == [f"history {_hex(5)[:12]}", f"history {_hex(3)[:12]}"]


def test_a_step_the_histories_show_missing_is_not_held(fake_daemon: Any) -> None:
    # step 2 was removed: the image's history stops there, and 2 itself is gone
    daemon, fake = fake_daemon([[3, None, None]])
    assert not daemon.holds(f"sha256:{_hex(3)}", _short(1, 2, 3))
    assert fake.asked == [f"history {_hex(3)[:12]}", f"history {_hex(2)[:12]}"]


def test_a_step_held_but_named_by_no_history_is_found_by_the_listing(fake_daemon: Any) -> None:
    # a history that names a step otherwise (as Podman's may): the listing decides
    daemon, fake = fake_daemon([[3, None, 1]])
    fake.unnamed = {2}
    assert daemon.holds(f"sha256:{_hex(3)}", _short(1, 2, 3))
    assert fake.asked == [f"history {_hex(3)[:12]}", f"history {_hex(2)[:12]}", "list"]
    fake.unnamed = set()  # and gone: not held
    assert not daemon.holds(f"sha256:{_hex(3)}", _short(1, 2, 3))


def test_a_gone_image_or_stage_tip_settles_it_at_once(fake_daemon: Any) -> None:
    daemon, fake = fake_daemon([[5, 4, 1]])
    assert not daemon.holds(f"sha256:{_hex(9)}", _short(1, 4, 9))  # the image itself
    assert not daemon.holds(f"sha256:{_hex(5)}", _short(1, 2, 3, 1, 4, 5))  # stage tip 3
    assert "list" not in fake.asked


def test_a_daemon_that_fails_is_a_daemon_error(fake_daemon: Any) -> None:
    daemon, fake = fake_daemon([[2, 1]])
    fake.fail = True
    with pytest.raises(DaemonError):
        daemon.holds(f"sha256:{_hex(2)}", _short(1, 2))
