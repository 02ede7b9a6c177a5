"""The release binaries the installers download are pinned by sha256 in this repository:
requirements/downloads.sha256, which action.yml reads, and the same table inside
.gitlab-ci-template.yml (a remote include has no other file of this repository). Neither
installer reads a checksums file from the server that serves the binary."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PINS = ROOT / "requirements" / "downloads.sha256"
TEMPLATE = ROOT / ".gitlab-ci-template.yml"
ACTION = ROOT / "action.yml"


def pinned() -> set[tuple[str, str, str, str]]:
    rows = set()
    for line in PINS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        tool, version, asset, digest = line.split()
        assert re.fullmatch(r"[0-9a-f]{64}", digest), line
        rows.add((tool, version, asset, digest))
    return rows


def test_every_default_version_and_arch_is_pinned() -> None:
    rows = pinned()
    template = TEMPLATE.read_text(encoding="utf-8")
    action = ACTION.read_text(encoding="utf-8")
    cosign = re.findall(r'get\("SHIPIT_COSIGN_VERSION"\) or "([^"]+)"', template + action)
    (buildx,) = re.findall(r'get\("SHIPIT_BUILDX_VERSION"\) or "([^"]+)"', template)
    assert set(cosign) == {"3.1.1"}, cosign
    wanted = {("cosign", "3.1.1", f"cosign-linux-{arch}") for arch in ("amd64", "arm64")}
    wanted |= {("buildx", buildx, f"buildx-v{buildx}.linux-{arch}") for arch in ("amd64", "arm64")}
    assert {row[:3] for row in rows} == wanted


def test_the_include_carries_the_same_pins() -> None:
    template = TEMPLATE.read_text(encoding="utf-8")
    found = set(re.findall(r'\("(\w+)", "([^"]+)", "([^"]+)"\): "([0-9a-f]{64})"', template))
    assert found == pinned()


def test_no_installer_reads_a_checksums_file_beside_the_binary() -> None:
    steps = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))[".shipit"]["before_script"]
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    scripts = [*steps, *(s.get("run", "") for s in action["runs"]["steps"])]
    downloads = [s for s in scripts if "urlopen" in s]
    assert len(downloads) == 3  # the include's cosign and buildx, the action's cosign
    for script in downloads:
        # one fetch, of the binary itself; the sha256 is decided before it
        assert re.findall(r"get\(f\"\{base\}/([^\"]+)\"\)", script) == ["{name}"]
        assert "checksums.txt" not in script and "cosign_checksums" not in script
        assert script.index("expected =") < script.index('get(f"{base}/{name}")')


def test_debian_packages_come_only_through_apts_signed_chain() -> None:
    """scripts/install-tools takes cosign, crane, buildx, dockerd 28 and containerd 2 from
    Debian sid with apt-get download in a private apt state: every source line names
    Debian's keyring alone, and nothing turns apt's checks off."""
    script = (ROOT / "scripts" / "install-tools").read_text(encoding="utf-8")
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    [source] = [line for line in code.splitlines() if 'echo "deb ' in line]
    assert source.strip().startswith('echo "deb [$opts] ')
    assert 'opts="signed-by=$keyring"' in code
    assert "local keyring=/usr/share/keyrings/debian-archive-keyring.gpg" in code
    for insecure in ("allow-unauthenticated", "allow-insecure", "trusted=yes", "AllowUnauth"):
        assert insecure not in code
    assert "missing+=(debian-archive-keyring)" in code
