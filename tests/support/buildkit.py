"""What BuildKit tests need besides a daemon: arm64 emulation, per-platform busybox build
contexts, and the docker CLI (with its buildx plugin) pointed at a chosen daemon.

scripts/install-tools puts these in place: Debian's qemu-user-static with qemu-aarch64
enabled in binfmt_misc, bookworm's busybox-static for amd64 (/bin/busybox) and for arm64
(REPO/.tools/arm64/bin/busybox), and the buildx plugin in /usr/local/lib/docker/cli-plugins.
A missing piece is a ToolMissingError that names the install script; tests never skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import REPO, ToolMissingError

INSTALL_HINT = f"run scripts/install-tools (as root: bash {REPO / 'scripts' / 'install-tools'})"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# static busybox binaries by Docker's architecture name (TARGETARCH), from busybox-static
BUSYBOX = {
    "amd64": Path("/bin/busybox"),
    "arm64": REPO / ".tools" / "arm64" / "bin" / "busybox",
}
# ELF e_machine (a 16-bit little-endian field at offset 18): EM_X86_64 62, EM_AARCH64 183
_ELF_MACHINE = {"amd64": 62, "arm64": 183}
# what `uname -m` says on each
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}
# The platforms BuildKit looks for an emulator of (moby/buildkit util/archutil runs a tiny
# static binary of each; `docker buildx inspect` lists those that ran), with the name of
# qemu-user-static's binfmt_misc entry for each (qemu-NAME): what a machine with only some of
# those entries registered cannot build.
EMULATED = {
    "linux/riscv64": "riscv64",
    "linux/ppc64le": "ppc64le",
    "linux/s390x": "s390x",
    "linux/mips64le": "mips64el",
    "linux/mips64": "mips64",
    "linux/loong64": "loongarch64",
    "linux/arm/v7": "arm",
    "linux/arm/v6": "arm",
}
# A platform no builder lists and nothing emulates: QEMU has no user-mode Itanium target
# (no qemu-ia64 in any qemu-user-static), so no binfmt_misc entry runs its binaries.
NO_EMULATOR = "linux/ia64"


@dataclass(frozen=True, kw_only=True)
class Emulation:
    """A binfmt_misc handler that runs another CPU's binaries through QEMU."""

    handler: Path  # e.g. /proc/sys/fs/binfmt_misc/qemu-aarch64
    interpreter: Path  # /usr/libexec/qemu-binfmt/aarch64-binfmt-P -> qemu-aarch64-static (Debian)
    flags: (
        str  # "PF" from Debian: F opens the interpreter at registration, so it works in containers
    )


def busybox(arch: str) -> Path:
    """The static busybox for arch ("amd64" or "arm64"), checked to be that CPU's ELF."""
    path = BUSYBOX[arch]
    try:
        head = path.read_bytes()[:20]
    except OSError as e:
        raise ToolMissingError(f"{path} (busybox-static for {arch}): {e}; {INSTALL_HINT}") from e
    if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != _ELF_MACHINE[arch]:
        raise ToolMissingError(f"{path} is not an {arch} ELF binary; {INSTALL_HINT}")
    return path


def arm64_emulation() -> Emulation:
    """qemu-aarch64 registered, enabled, with the F flag, and really running arm64 code.

    Raises ToolMissingError with what is wrong and the install hint.
    """
    handler = BINFMT / "qemu-aarch64"
    if not (BINFMT / "register").exists():
        raise ToolMissingError(f"binfmt_misc is not mounted on {BINFMT}; {INSTALL_HINT}")
    try:
        lines = handler.read_text().splitlines()
    except OSError as e:
        raise ToolMissingError(f"qemu-aarch64 is not registered ({e}); {INSTALL_HINT}") from e
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    flags = fields.get("flags:", "").strip()
    interpreter = Path(fields.get("interpreter", ""))
    # With F the kernel opened the interpreter at registration: its path need not exist here
    # (tonistiigi/binfmt, as docker/setup-qemu-action runs it, registers one from its own
    # container); running arm64 code below is the proof that counts.
    if lines[:1] != ["enabled"] or "F" not in flags:
        raise ToolMissingError(
            f"{handler} says {lines[:1]}, flags {flags!r}, interpreter {interpreter}: arm64 "
            f"binaries cannot run in containers; {INSTALL_HINT}"
        )
    done = subprocess.run(
        [str(busybox("arm64")), "uname", "-m"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 or done.stdout.strip() != UNAME["arm64"]:
        raise ToolMissingError(
            f"the arm64 busybox does not run under {interpreter} (exit {done.returncode}: "
            f"{done.stdout.strip()!r} {done.stderr.strip()!r}); {INSTALL_HINT}"
        )
    return Emulation(handler=handler, interpreter=interpreter, flags=flags)


def busybox_context(
    folder: Path, *, arches: Sequence[str] = ("amd64", "arm64"), steps: Sequence[str] = ()
) -> Path:
    """A FROM scratch build context in folder: busybox-ARCH for each arch, and a Dockerfile
    that copies the one of the target platform (ARG TARGETARCH, which BuildKit sets per
    platform) to /bin/busybox, installs its applets, then runs ``steps`` (Dockerfile lines)."""
    folder.mkdir(parents=True, exist_ok=True)
    for arch in arches:
        shutil.copy2(busybox(arch), folder / f"busybox-{arch}")
    lines = [
        "FROM scratch",
        "ARG TARGETARCH",
        "COPY busybox-${TARGETARCH} /bin/busybox",
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
        *steps,
        'CMD ["/bin/sh"]',
    ]
    (folder / "Dockerfile").write_text("\n".join(lines) + "\n")
    return folder


def docker_at(
    host: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """The docker CLI (``docker buildx ...`` too) against the daemon at host.

    env adds variables (e.g. a build secret's); DOCKER_HOST is host whatever the session's
    says, and no docker context or buildx builder choice leaks in from outside.
    """
    full = {k: v for k, v in os.environ.items() if k not in {"DOCKER_CONTEXT", "BUILDX_BUILDER"}}
    full.update(env or {})
    full["DOCKER_HOST"] = host
    return subprocess.run(
        ["docker", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def buildx_plugin() -> Path:
    """Where the docker CLI finds buildx with an empty configuration (the tests' case)."""
    path = Path("/usr/local/lib/docker/cli-plugins/docker-buildx")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ToolMissingError(f"the buildx plugin {path} is missing; {INSTALL_HINT}")
    return path


def builder_platforms(host: str) -> tuple[str, ...]:
    """The platforms `docker buildx inspect` says the default builder of the daemon at host
    builds (natively or through binfmt_misc), as listed (`*` marks dropped)."""
    done = docker_at(host, "buildx", "inspect", timeout=120)
    if done.returncode != 0:
        raise ToolMissingError(
            f"docker buildx inspect failed: {done.stderr.strip()}; {INSTALL_HINT}"
        )
    found: list[str] = []
    for line in done.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Platforms":
            found += [p.strip().rstrip("*") for p in value.split(",") if p.strip()]
    return tuple(found)


def unbuildable_platform(host: str) -> str:
    """A platform the default builder of the daemon at host cannot build, by what this machine
    says: the first of EMULATED that `docker buildx inspect` does not list and no enabled
    binfmt_misc entry emulates; when there is none (every qemu-user-static entry registered),
    NO_EMULATOR, once neither the builder nor binfmt_misc names its architecture."""
    listed = builder_platforms(host)
    entries = {}
    for entry in sorted(BINFMT.iterdir()) if BINFMT.is_dir() else []:
        with contextlib.suppress(OSError):  # `register` cannot be read
            entries[entry.name] = entry.read_text()
    enabled = {name for name, text in entries.items() if text.startswith("enabled")}
    for platform, qemu in EMULATED.items():
        if platform not in listed and f"qemu-{qemu}" not in enabled:
            return platform
    arch = NO_EMULATOR.split("/")[1]
    handlers = [name for name, text in entries.items() if arch in name or arch in text]
    if NO_EMULATOR in listed or handlers:
        raise AssertionError(
            f"no platform this machine cannot build: the builder lists {', '.join(listed)};"
            f" binfmt_misc entries naming {arch}: {', '.join(handlers)}"
        )
    return NO_EMULATOR
