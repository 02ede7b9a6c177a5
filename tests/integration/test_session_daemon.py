"""The tests' own dockerd keeps its images in the machine's data root: when the last test
session stops the daemon it started, it removes the images the sessions left there, and
only those (tests/support/services.py, `_remove_images_since`). Checked on a private dockerd
20.10 of this test's own, so the daemon the session shares keeps its images."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.dockerd28 import start_private_dockerd, stop_private_dockerd
from tests.support.services import _image_ids, _remove_images_since

pytestmark = pytest.mark.timeout(300)


def _build(host: str, folder: Path, text: str, tag: str) -> str:
    folder.mkdir()
    (folder / "Dockerfile").write_text(f"FROM scratch\nCOPY f /f\nLABEL made={tag}\n")
    (folder / "f").write_text(text)
    env = {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "0"}
    done = subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_images_made_since_the_start_go_and_those_held_before_stay(tmp_path: Path) -> None:
    daemon = start_private_dockerd(tmp_path / "d")
    try:
        kept = _build(daemon.host, tmp_path / "a", "held before", "kept:1")
        before = _image_ids(daemon.host)
        assert before is not None and kept in before
        made = _build(daemon.host, tmp_path / "b", "a test's", "made:1")
        also = _build(daemon.host, tmp_path / "c", "another test's", "made:2")
        _remove_images_since(daemon.host, sorted(before))
        left = _image_ids(daemon.host)
        assert left is not None
        assert kept in left and made not in left and also not in left
        _remove_images_since(daemon.host, None)  # no record: nothing is removed
        assert _image_ids(daemon.host) == left
    finally:
        stop_private_dockerd(daemon)
