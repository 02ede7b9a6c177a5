"""Reading the daemon's build stream: errors inside a 200 stream, the failing step. And the
image listing a run starts ahead, while preflight waits on the registries."""

from __future__ import annotations

import http.server
import shutil
import socketserver
import tempfile
import threading
from pathlib import Path

import pytest

from shipit.docker_api import BuildRequest, Daemon, DaemonError, StreamError, _read_build


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


class _FakeDaemon(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A Docker API on a unix socket whose image listing (GET /images/json) names one image,
    `sha256:N` for its Nth listing; `fail` makes a listing a 500, `hold` keeps the next one's
    answer back until `release`."""

    daemon_threads = True

    def __init__(self, path: Path) -> None:
        self.listings = 0
        self.fail = False
        self.hold = False
        self.released = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if "/images/json" in self.path:
                    server.listings += 1
                    number, held, server.hold = server.listings, server.hold, False
                    if held:
                        server.released.wait(10)
                    status = 500 if server.fail else 200
                    body = (
                        b'{"message": "no"}' if server.fail else b'[{"Id": "sha256:%d"}]' % number
                    )
                else:  # /version, /_ping
                    status, body = 200, b'{"ApiVersion": "1.41", "Version": "28.5.2"}'
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


def test_a_listing_started_ahead_is_taken_once_and_a_build_drops_it(tmp_path: Path) -> None:
    # a unix socket's path has room for 107 bytes: not under pytest's long tmp_path
    folder = Path(tempfile.mkdtemp(prefix="shipit-fake-", dir="/tmp"))
    fake = _FakeDaemon(folder / "docker.sock")
    try:
        daemon = Daemon({"DOCKER_HOST": f"unix://{folder / 'docker.sock'}"})
        daemon.list_image_ids_ahead()
        daemon.list_image_ids_ahead()  # one listing under way at a time
        assert daemon.image_ids() == {"sha256:1"}
        assert daemon.image_ids() == {"sha256:2"}  # taken once: this one asked again
        fake.hold = True
        daemon.list_image_ids_ahead()
        for _ in range(200):  # its request is in, its answer held back
            if fake.listings == 3:
                break
            threading.Event().wait(0.02)
        request = BuildRequest(context=tmp_path / "none", dockerfile="Dockerfile", tag="x:y")
        with pytest.raises(StreamError):  # no such context: the build stops early
            daemon.build(request, lambda _: None)
        assert daemon.image_ids() == {"sha256:4"}  # not the listing from before the build
        fake.released.set()
        fake.fail = True
        daemon.list_image_ids_ahead()
        with pytest.raises(DaemonError):  # the listing's error reaches whoever takes it
            daemon.image_ids()
        daemon.close()
    finally:
        fake.released.set()
        fake.shutdown()
        fake.server_close()
        shutil.rmtree(folder, ignore_errors=True)
