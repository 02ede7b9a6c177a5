"""scripts/release, as .github/workflows/release.yml runs it but with a key of the test's own
instead of keyless signing: the wheel and the sdist built, each signed by the real cosign
with a Sigstore bundle beside it, which `cosign verify-blob --bundle` accepts for the files as
built and refuses for an altered wheel or another key; the key's password never on a command
line or in the output."""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.services import REPO, tool_path

pytestmark = [pytest.mark.integration]


def release(out: Path, keys: KeyPair) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / "release"), str(out)],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(out.parent),
            "COSIGN": tool_path("cosign"),
            "COSIGN_KEY": str(keys.private),
            "COSIGN_PASSWORD": keys.password,
            "COSIGN_TLOG": "false",  # offline: no transparency log to upload to
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def verify(blob: Path, bundle: Path, public: Path) -> subprocess.CompletedProcess[str]:
    # --insecure-ignore-tlog: the bundle has no log entry, as signed offline above
    return subprocess.run(
        [
            tool_path("cosign"),
            "verify-blob",
            *("--key", str(public), "--bundle", str(bundle)),
            *("--insecure-ignore-tlog", str(blob)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, KeyPair, str]:
    keys = cosign_key_pair(tmp_path_factory.mktemp("release-keys"))
    out = tmp_path_factory.mktemp("release") / "dist"
    done = release(out, keys)
    assert done.returncode == 0, done.stderr
    return out, keys, done.stdout + done.stderr


def test_the_wheel_and_the_sdist_are_built_and_signed(
    released: tuple[Path, KeyPair, str],
) -> None:
    out, keys, log = released
    files = sorted(p.name for p in out.iterdir())
    [wheel] = [f for f in files if f.endswith(".whl")]
    [sdist] = [f for f in files if f.endswith(".tar.gz")]
    assert files == sorted(
        [wheel, sdist, f"{wheel}.sigstore.json", f"{sdist}.sigstore.json", "SHA256SUMS"]
    )
    # the wheel carries the lock it was tested with, as the GitLab include expects
    with zipfile.ZipFile(out / wheel) as archive:
        assert (
            archive.read("shipit/shipit.lock") == (REPO / "requirements/shipit.lock").read_bytes()
        )
    sums = dict(reversed(line.split()) for line in (out / "SHA256SUMS").read_text().splitlines())
    for name in (wheel, sdist):
        assert sums[name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
        done = verify(out / name, out / f"{name}.sigstore.json", keys.public)
        assert done.returncode == 0, done.stderr
        assert "Verified OK" in done.stderr
    assert keys.password not in log


def test_an_altered_wheel_fails_verification(
    released: tuple[Path, KeyPair, str], tmp_path: Path
) -> None:
    out, keys, _ = released
    [wheel] = out.glob("*.whl")
    altered = tmp_path / wheel.name
    altered.write_bytes(wheel.read_bytes())
    with zipfile.ZipFile(altered, "a") as archive:  # one file more, as a tampered upload
        archive.writestr("shipit/_extra.py", "print('not what was signed')\n")
    done = verify(altered, out / f"{wheel.name}.sigstore.json", keys.public)
    assert done.returncode != 0
    assert "Verified OK" not in done.stderr
    assert "invalid signature" in done.stderr


def test_another_key_does_not_verify_the_release(
    released: tuple[Path, KeyPair, str], tmp_path: Path
) -> None:
    out, _, _ = released
    other = cosign_key_pair(tmp_path / "other")
    [wheel] = out.glob("*.whl")
    done = verify(wheel, out / f"{wheel.name}.sigstore.json", other.public)
    assert done.returncode != 0
    assert "Verified OK" not in done.stderr


def test_without_a_usable_key_nothing_is_signed(tmp_path: Path) -> None:
    keys = cosign_key_pair(tmp_path / "keys")
    wrong = KeyPair(private=keys.private, public=keys.public, password="not-" + keys.password)
    done = release(tmp_path / "dist", wrong)
    assert done.returncode != 0
    assert "cosign could not sign" in done.stderr
    assert not list((tmp_path / "dist").glob("*.sigstore.json"))
    assert not (tmp_path / "dist" / "SHA256SUMS").exists()
    assert wrong.password not in done.stdout + done.stderr
