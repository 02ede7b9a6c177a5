"""The package sits where the design card puts it, and its wheel carries everything it needs."""

from __future__ import annotations

import email.parser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import shipit

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_is_at_the_repository_root_and_there_is_no_src_folder() -> None:
    assert Path(shipit.__file__).resolve().parent == ROOT / "shipit"
    assert not (ROOT / "src").exists()
    for name in ("pyproject.toml", "action.yml", ".gitlab-ci-template.yml", "tests", "examples"):
        assert (ROOT / name).exists(), name


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--quiet", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    wheels = list(out.glob("shipit-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_every_module_the_schema_and_the_typing_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "shipit").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert modules, "no modules found"
    assert modules <= names, sorted(modules - names)
    assert {"shipit/schema.json", "shipit/py.typed"} <= names
    assert not [n for n in names if n.startswith(("tests/", "src/", "benchmarks/", "examples/"))]


def test_the_wheel_declares_the_console_script_and_its_version(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    info = next(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
    entry_points = archive.read(info).decode()
    assert "shipit = shipit.cli:run_main" in entry_points
    metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["Name"] == "shipit"
    assert metadata["Version"] == shipit.__version__


def test_python_dash_m_shipit_answers_help_and_version() -> None:
    for args, expect in ((["--help"], "Usage: shipit"), (["--version"], shipit.__version__)):
        done = subprocess.run(
            [sys.executable, "-m", "shipit", *args],
            capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert expect in done.stdout


def test_the_wheel_carries_the_lock_it_was_tested_with(wheel: Path) -> None:
    """The GitLab include installs a release's dependencies from the lock in its wheel."""
    carried = zipfile.ZipFile(wheel).read("shipit/shipit.lock")
    assert carried == (ROOT / "requirements" / "shipit.lock").read_bytes()
