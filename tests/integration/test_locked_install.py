"""The lock, installed for real: a new virtual environment gets shipit's dependencies with
`pip install --require-hashes --no-deps -r requirements/shipit.lock`, then shipit itself
with `--no-deps --no-build-isolation` (its build backend from requirements/build.lock), and
runs; the same lock with one hash altered installs nothing. pip runs with `--isolated` (no
configuration of the machine) and `--no-index --find-links` a folder of the locked wheels
(tests/support/wheelhouse.py), so nothing but the locked files can be installed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.wheelhouse import LOCKS, REPO, locked_wheels

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def wheels() -> Path:
    return locked_wheels(PY)


def new_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin" / "python"


def pip(python: Path, wheels: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "--isolated", "--disable-pip-version-check", "install",
         "--no-input", "--no-index", "--find-links", str(wheels), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def installed(python: Path) -> set[str]:
    done = subprocess.run(
        [str(python), "-m", "pip", "--isolated", "list", "--format=freeze"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return {line.split("==")[0].lower() for line in done.stdout.splitlines()}


def test_the_lock_installs_into_an_empty_venv_with_require_hashes(
    tmp_path: Path, wheels: Path
) -> None:
    python = new_venv(tmp_path / "venv")
    done = pip(
        python, wheels, "--require-hashes", "--no-deps",
        "-r", str(LOCKS / "shipit.lock"), "-r", str(LOCKS / "build.lock"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    done = pip(python, wheels, "--no-deps", "--no-build-isolation", str(REPO))
    assert done.returncode == 0, done.stdout + done.stderr
    # the lock is whole: every installed package has what it requires
    check = subprocess.run(
        [str(python), "-m", "pip", "--isolated", "check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    version = subprocess.run(
        [str(python.parent / "shipit"), "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert {"click", "docker", "isal", "shipit"} <= installed(python)


def test_one_altered_hash_installs_nothing(tmp_path: Path, wheels: Path) -> None:
    # alter the hash of the very file pip would install (click's wheel in the folder)
    (wheel,) = wheels.glob("click-*.whl")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    text = (LOCKS / "shipit.lock").read_text(encoding="utf-8")
    assert text.count(f"sha256:{digest}") == 1, "click's wheel is not in the lock"
    altered = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    lock = tmp_path / "shipit.lock"
    lock.write_text(text.replace(digest, altered), encoding="utf-8")

    python = new_venv(tmp_path / "venv")
    before = installed(python)
    done = pip(python, wheels, "--require-hashes", "--no-deps", "-r", str(lock))
    assert done.returncode != 0, done.stdout
    assert "DO NOT MATCH THE HASHES" in done.stderr, done.stderr
    assert f"Expected sha256 {altered}" in done.stderr and f"Got        {digest}" in done.stderr
    assert installed(python) == before  # not one package went in
