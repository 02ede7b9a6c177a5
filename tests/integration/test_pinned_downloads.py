"""The cosign installers of the Action and of the GitLab include, run as the jobs run them
(their own Python, from action.yml and .gitlab-ci-template.yml), against a loopback stand-in
for cosign's release folder that serves this machine's cosign (Debian's build, not the
release's binary) with a cosign_checksums.txt that lists it, as a server that swapped both
would: refused against the pinned sha256, installed with the job's SHIPIT_COSIGN_SHA256, and
another version without a pin refused before anything is downloaded."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import platform
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.services import REPO, tool_path

pytestmark = [pytest.mark.integration]

MACHINE = platform.machine().lower()
NAME = "cosign-linux-" + {"x86_64": "amd64", "aarch64": "arm64"}.get(MACHINE, MACHINE)


def pinned(asset: str) -> str:
    for line in (REPO / "requirements" / "downloads.sha256").read_text().splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "cosign" and words[2] == asset:
            return words[3]
    raise AssertionError(f"no pin for {asset}")


def heredoc(script: str) -> str:
    match = re.search(r" - <<'EOF'\n(.*?)\n\s*EOF", script, re.DOTALL)
    assert match, script
    lines = match.group(1).splitlines()
    indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
    return "\n".join(x[indent:] for x in lines)


def action_installer() -> str:
    steps = yaml.safe_load((REPO / "action.yml").read_text(encoding="utf-8"))["runs"]["steps"]
    [step] = [s for s in steps if "cosign-linux-" in s.get("run", "")]
    return heredoc(step["run"])


def include_installer() -> str:
    template = yaml.safe_load((REPO / ".gitlab-ci-template.yml").read_text(encoding="utf-8"))
    [step] = [s for s in template[".shipit"]["before_script"] if s.startswith("# cosign:")]
    return heredoc(step)


@pytest.fixture
def release(tmp_path: Path) -> Iterator[tuple[str, list[str], bytes]]:
    """The served folder's URL, the paths asked for, and the bytes served as NAME."""
    folder = tmp_path / "release"
    folder.mkdir()
    data = Path(tool_path("cosign")).read_bytes()
    (folder / NAME).write_bytes(data)
    (folder / "cosign_checksums.txt").write_text(
        f"{hashlib.sha256(data).hexdigest()}  {NAME}\n", encoding="utf-8"
    )
    asked: list[str] = []

    class Recording(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Recording, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked, data
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def install(code: str, folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", code],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(folder),
            "GITHUB_ACTION_PATH": str(REPO),  # the action reads requirements/ there
            "SHIPIT_BIN": str(folder / "bin"),  # the action's venv/bin
            "SHIPIT_VENV": str(folder),  # the include's venv
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


INSTALLERS = {"action": action_installer, "include": include_installer}


@pytest.mark.parametrize("which", sorted(INSTALLERS))
def test_a_binary_that_is_not_the_pinned_one_is_refused(
    which: str, tmp_path: Path, release: tuple[str, list[str], bytes]
) -> None:
    base, asked, data = release
    done = install(INSTALLERS[which](), tmp_path / "venv", SHIPIT_COSIGN_BASE_URL=base)
    assert done.returncode != 0
    actual = hashlib.sha256(data).hexdigest()
    assert f"{base}/{NAME} has sha256 {actual}, expected {pinned(NAME)} (refused)" in done.stderr
    assert not (tmp_path / "venv" / "bin" / "cosign").exists()
    assert asked == [f"/{NAME}"]  # the checksums file beside it was not even read


@pytest.mark.parametrize("which", sorted(INSTALLERS))
def test_the_jobs_own_pin_installs_the_binary_it_names(
    which: str, tmp_path: Path, release: tuple[str, list[str], bytes]
) -> None:
    base, asked, data = release
    digest = hashlib.sha256(data).hexdigest()
    done = install(
        INSTALLERS[which](),
        tmp_path / "venv",
        SHIPIT_COSIGN_BASE_URL=base,
        SHIPIT_COSIGN_SHA256=digest.upper(),  # as pasted from a release page
    )
    assert done.returncode == 0, done.stderr
    assert f"cosign: installed {NAME} from {base} (sha256 {digest})" in done.stdout
    target = tmp_path / "venv" / "bin" / "cosign"
    assert target.read_bytes() == data and os.access(target, os.X_OK)
    ran = subprocess.run(
        [str(target), "version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert asked == [f"/{NAME}"]


@pytest.mark.parametrize("which", sorted(INSTALLERS))
def test_another_version_without_a_pin_is_refused_before_any_download(
    which: str, tmp_path: Path, release: tuple[str, list[str], bytes]
) -> None:
    base, asked, _ = release
    done = install(
        INSTALLERS[which](),
        tmp_path / "venv",
        SHIPIT_COSIGN_BASE_URL=base,
        SHIPIT_COSIGN_VERSION="3.0.2",
    )
    assert done.returncode != 0
    assert f"no sha256 is pinned for {NAME} 3.0.2" in done.stderr
    assert "SHIPIT_COSIGN_SHA256" in done.stderr
    assert asked == []
    assert not (tmp_path / "venv" / "bin" / "cosign").exists()
