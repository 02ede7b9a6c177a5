"""A registry filled the way a real project fills one: release, PR and main builds over months.

Every image is made by a real in-process `shipit run` of a git repository whose commits carry
old dates (the images' `org.opencontainers.image.created` label is the commit time), built
for linux/amd64 and linux/arm64 with the SDK engine (arm64 under QEMU), and signed with a
cosign key (`tlog: false`) where the history says so: the first releases in cosign's legacy
format (`sha256-<hex>.sig` tags), the later ones as cosign 3 bundles (on a registry without
the referrers API, under the referrers tag `sha256-<hex>`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shipit.registry import Endpoint, Registry, copy_image
from tests.support.buildkit import busybox
from tests.support.cli import run_shipit_captured
from tests.support.gitrepo import add_commit, git
from tests.support.keys import KeyPair
from tests.support.project import make_project, run_env
from tests.support.services import tool_path

# The classic builder's shape for FROM scratch on several platforms (no ARG before the first
# COPY: Docker 20.10), then a file that changes with every commit.
DOCKERFILE = """\
FROM scratch
COPY busybox-amd64 busybox-arm64 /bin/
ARG TARGETARCH
RUN ["/bin/busybox-amd64","sh","-c","/bin/busybox-amd64 cp /bin/busybox-$TARGETARCH /bin/busybox && /bin/busybox rm /bin/busybox-amd64 /bin/busybox-arm64 && /bin/busybox --install -s /bin"]
COPY build.txt /build.txt
"""

RETENTION = """\
retention:
  keep:
    - {semver: true, newest_per_minor: 2}
    - {tags: '^pr-.+', younger_than: 14d}
    - {tags: '^sha-.+', newest: 2}
  untagged: delete
"""


def spec_text(
    registries: Sequence[str], key: Path, sign_format: str, retention: str = RETENTION
) -> str:
    listed = "".join(f"  - {r}\n" for r in registries)
    return (
        "version: 1\n"
        f"registries:\n{listed}"
        "image:\n  name: app\n  platforms: [linux/amd64, linux/arm64]\n"
        f"sign: {{key: {key}, tlog: false, format: {sign_format}}}\n" + retention
    )


@dataclass(frozen=True, kw_only=True)
class Build:
    """One `shipit run` of the history and what it published."""

    name: str  # v1.2.0, pr-5, main, main-again
    sha: str
    days_ago: int
    tags: tuple[str, ...]
    digest: str  # the index
    platforms: Mapping[str, str]  # platform -> its manifest's digest
    signed: bool
    sign_format: str


@dataclass
class History:
    project: Path
    registry: str  # host:port
    repository: str  # history/app
    key: KeyPair
    env: dict[str, str]
    builds: list[Build] = field(default_factory=list)

    def build(self, name: str) -> Build:
        return next(b for b in self.builds if b.name == name)

    def client(self, host: str | None = None) -> Registry:
        return Registry(Endpoint(host=host or self.registry))

    def write_spec(self, path: Path, registries: Sequence[str], retention: str = RETENTION) -> Path:
        """Another spec for the same project: the same image in other registries, and
        another retention policy if given."""
        text = spec_text(registries, self.key.private, "bundle", retention)
        path.write_text(text, encoding="utf-8")
        return path


# name, days ago, shipit arguments, signed, sign format
STEPS: tuple[tuple[str, int, tuple[str, ...], bool, str], ...] = (
    ("v1.0.0", 200, ("--ref", "refs/tags/v1.0.0"), True, "legacy"),
    ("v1.2.0", 150, ("--ref", "refs/tags/v1.2.0"), True, "legacy"),
    ("v1.2.1", 120, ("--ref", "refs/tags/v1.2.1"), True, "legacy"),
    ("v1.2.2", 100, ("--ref", "refs/tags/v1.2.2"), True, "legacy"),
    ("v1.3.0", 80, ("--ref", "refs/tags/v1.3.0"), True, "bundle"),
    ("v1.3.1", 60, ("--ref", "refs/tags/v1.3.1"), True, "bundle"),
    ("v1.3.2", 40, ("--ref", "refs/tags/v1.3.2"), True, "bundle"),
    ("pr-5", 30, ("--event", "pull_request", "--pr", "5", "--skip", "sign"), False, "bundle"),
    ("pr-6", 3, ("--event", "pull_request", "--pr", "6", "--skip", "sign"), False, "bundle"),
    ("main", 1, (), True, "bundle"),
)


def make_history(
    root: Path,
    registry: str,
    key: KeyPair,
    docker_host: str,
) -> History:
    """The history of STEPS in `registry`/history/app, then a re-run of the last main build
    (the same commit built again: `main` and its sha tag move, the first build is left
    untagged with its signatures)."""
    cosign_dir = str(Path(tool_path("cosign")).parent)
    env = run_env(docker_host, root, COSIGN_PASSWORD=key.password)
    env["PATH"] = cosign_dir + os.pathsep + env["PATH"]
    files: dict[str, str | bytes] = {
        "busybox-amd64": busybox("amd64").read_bytes(),
        "busybox-arm64": busybox("arm64").read_bytes(),
        "build.txt": "start\n",
    }
    project = make_project(
        root / "project", spec_text([f"{registry}/history"], key.private, "legacy"),
        dockerfile=DOCKERFILE, files=files,
    )  # fmt: skip
    for arch in ("amd64", "arm64"):
        (project / f"busybox-{arch}").chmod(0o755)
    history = History(
        project=project, registry=registry, repository="history/app", key=key, env=env
    )
    now = datetime.now(UTC)
    for name, days, args, signed, sign_format in STEPS:
        when = (now - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        (project / "build.txt").write_text(f"{name}\n", encoding="utf-8")
        (project / "shipit.yml").write_text(
            spec_text([f"{registry}/history"], key.private, sign_format), encoding="utf-8"
        )
        sha = add_commit(project, f"build {name}", date=when, file="build.txt")
        if name.startswith("v"):
            git(project, "tag", "-a", "-m", name, name, env={"GIT_COMMITTER_DATE": when})
        history.builds.append(_run(history, name, sha, days, args, signed, sign_format))
    again = _run(history, "main-again", history.builds[-1].sha, 1, (), True, "bundle")
    history.builds.append(again)
    return history


def _run(
    history: History,
    name: str,
    sha: str,
    days: int,
    args: Sequence[str],
    signed: bool,
    sign_format: str,
) -> Build:
    report = history.project.parent / f"report-{name}.json"
    argv = ["run", "-C", str(history.project), "--report", str(report), *args]
    code, _out, err = run_shipit_captured(argv, history.env)
    assert code == 0, f"shipit run for {name} failed:\n{err}"
    document: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    [image] = document["images"]
    return Build(
        name=name, sha=sha, days_ago=days, tags=tuple(image["tags"]), digest=image["digest"],
        platforms={p["platform"]: p["digest"] for p in image["platforms"]},
        signed=signed, sign_format=sign_format,
    )  # fmt: skip


def copy_repository(source: Registry, target: Registry, repository: str) -> int:
    """Every tag of `repository` (signature tags too) copied byte for byte; how many."""
    tags = source.tags(repository)
    for tag in tags:
        digest = source.manifest(repository, tag).digest
        copy_image(source, repository, digest, target, repository, [tag])
    return len(tags)


def snapshot(client: Registry, repository: str) -> dict[str, str]:
    """tag -> digest, as the registry serves them now."""
    return {t: client.manifest(repository, t).digest for t in client.tags(repository)}
