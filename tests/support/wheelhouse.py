"""A folder of the locked wheels (requirements/*.lock), for installs that must not reach an
index: the lock tests, the Action under act and the GitLab include under gitlab-ci-local.

`pip download --require-hashes --no-deps --only-binary=:all:` fetches each locked file for
one Python version once, from the machine's package index, into .cache/locked-wheels/PY; it
is fetched again only when a lock changes. Installs then use `--no-index --find-links DIR`
(or PIP_NO_INDEX and PIP_FIND_LINKS in a job's environment).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
CACHE = REPO / ".cache" / "locked-wheels"
DOWNLOAD_TIMEOUT = 300.0
# what an installer needs: shipit's dependencies, its build backend, Trivy
INSTALL_LOCKS = ("shipit.lock", "build.lock", "trivy.lock")


def runner_python() -> str:
    """MAJOR.MINOR of the python3 on PATH: the interpreter the Action and the include use."""
    done = subprocess.run(
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def locked_wheels(python: str, locks: tuple[str, ...] = INSTALL_LOCKS) -> Path:
    """The folder of the files `locks` pin for `python` (MAJOR.MINOR) on this platform,
    each checked against its hash by pip as it is downloaded."""
    key = hashlib.sha256(python.encode())
    for name in locks:
        key.update(name.encode() + b"\0" + (LOCKS / name).read_bytes())
    folder = CACHE / python
    stamp = folder / ".stamp"
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == key.hexdigest():
        return folder
    partial = folder.with_name(f"{folder.name}.{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        requirements = [arg for name in locks for arg in ("-r", str(LOCKS / name))]
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
             "--no-input", "--require-hashes", "--no-deps", "--only-binary=:all:",
             "--python-version", python, "--dest", str(partial), *requirements],
            capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"pip download of the locked wheels failed:\n{done.stdout}\n{done.stderr}"
            )
        (partial / ".stamp").write_text(key.hexdigest(), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def shipit_wheel(dest: Path) -> Path:
    """shipit's wheel built from this checkout (with the venv's hatchling, no index) into
    `dest`: what a release publishes, the lock inside."""
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--quiet", "-w", str(dest), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel of shipit failed:\n{done.stdout}\n{done.stderr}")
    (wheel,) = dest.glob("shipit-*.whl")
    return wheel
