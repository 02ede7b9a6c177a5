"""Reading the daemon's build stream: errors inside a 200 stream, the failing step."""

from __future__ import annotations

from pathlib import Path

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
