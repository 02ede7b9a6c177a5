"""scripts/debian-mirror: the Debian mirror scripts/install-tools downloads sid and arm64
packages from is the one the machine's apt is configured with, read from its sources (a
temporary root here, laid out like /etc/apt)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "debian-mirror"

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.corp.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.corp.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

ONE_LINE = """\
# the company's mirror
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://apt.corp.example/debian/ bookworm main
deb-src http://src.corp.example/debian bookworm main
deb http://apt.corp.example/debian-security bookworm-security main
deb http://apt.corp.example/debian bookworm-updates main
  deb [ arch=amd64 signed-by=/etc/apt/keyrings/x.gpg ] https://second.corp.example/debian bookworm main contrib
deb http://plain.corp.example/debian stable main  # a comment after the entry
"""

OTHERS = """\
Types: deb
URIs: https://deb.nodesource.example/node_20.x
Suites: nodistro
Components: main
"""


def root_with(tmp_path: Path, files: dict[str, str], codename: str = "bookworm") -> Path:
    root = tmp_path / "root"
    (root / "etc" / "apt" / "sources.list.d").mkdir(parents=True)
    (root / "etc" / "os-release").write_text(
        f'PRETTY_NAME="Debian GNU/Linux"\nVERSION_CODENAME={codename}\nID=debian\n',
        encoding="utf-8",
    )
    for name, text in files.items():
        (root / "etc" / "apt" / name).write_text(text, encoding="utf-8")
    return root


def mirrors(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), str(root)], capture_output=True, text=True, timeout=30, check=False
    )


def test_deb822_gives_the_archive_not_security_nor_updates(tmp_path: Path) -> None:
    done = mirrors(root_with(tmp_path, {"sources.list.d/debian.sources": DEB822}))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["http://mirror.corp.example/debian"]


def test_one_line_entries_with_and_without_options(tmp_path: Path) -> None:
    done = mirrors(root_with(tmp_path, {"sources.list": ONE_LINE}))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "http://apt.corp.example/debian",  # [signed-by=...], its trailing slash dropped
        "https://second.corp.example/debian",  # [ options ] spread over words, indented
        "http://plain.corp.example/debian",  # a suite name, a comment after it
    ]


def test_every_uri_of_a_stanza_once_and_disabled_stanzas_left_out(tmp_path: Path) -> None:
    deb822 = (
        "Types: deb deb-src\n"
        "URIs: http://one.example/debian\n"
        "  mirror+file:/etc/apt/mirrors/debian.list\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "\n"
        "Enabled: no\n"
        "Types: deb\n"
        "URIs: http://off.example/debian\n"
        "Suites: bookworm\n"
        "\n"
        "Types: deb-src\n"
        "URIs: http://sources-only.example/debian\n"
        "Suites: bookworm\n"
    )
    root = root_with(
        tmp_path,
        {
            "sources.list": "deb http://one.example/debian bookworm main\n",
            "sources.list.d/a.sources": deb822,
            "sources.list.d/nodesource.sources": OTHERS,
            "sources.list.d/cloud.list": "deb https://cloud.example/apt cloud-sdk-bookworm main\n",
        },
    )
    done = mirrors(root)
    assert done.returncode == 0, done.stderr
    # sources.list first, then sources.list.d in name order, as apt reads them
    assert done.stdout.splitlines() == [
        "http://one.example/debian",
        "mirror+file:/etc/apt/mirrors/debian.list",
    ]


def test_the_release_comes_from_os_release(tmp_path: Path) -> None:
    line = "deb http://m.example/debian trixie main\n"
    assert mirrors(root_with(tmp_path / "a", {"sources.list": line}, "trixie")).stdout == (
        "http://m.example/debian\n"
    )
    done = mirrors(root_with(tmp_path / "b", {"sources.list": line}, "bookworm"))
    assert done.returncode == 1 and done.stdout == ""


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"sources.list.d/nodesource.sources": OTHERS},
        {"sources.list": "deb http://apt.corp.example/debian-security bookworm-security main\n"},
        {"sources.list": "deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n"},
    ],
    ids=["no-sources", "other-repositories", "security-only", "cdrom"],
)
def test_no_debian_archive_is_a_clear_failure(tmp_path: Path, files: dict[str, str]) -> None:
    root = root_with(tmp_path, files)
    done = mirrors(root)
    assert done.returncode == 1 and done.stdout == ""
    assert f"no Debian archive in {root}/etc/apt/sources.list" in done.stderr
    assert "bookworm" in done.stderr and "configure apt's mirror" in done.stderr


def test_install_tools_names_no_mirror_of_its_own() -> None:
    script = (REPO / "scripts" / "install-tools").read_text(encoding="utf-8")
    assert "scripts/debian-mirror" in script
    assert "http://" not in script and "https://" not in script
