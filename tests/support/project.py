"""Small projects for end-to-end runs: a git repository with a Dockerfile and a spec."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from tests.support.gitrepo import git, make_repo

HELLO_DOCKERFILE = "FROM scratch\nCOPY hello.txt /hello.txt\n"


def make_project(
    root: Path,
    spec: str,
    *,
    dockerfile: str = HELLO_DOCKERFILE,
    files: Mapping[str, str | bytes] | None = None,
    tag: str | None = None,
) -> Path:
    """A committed repository at `root` holding the spec, a Dockerfile and hello.txt."""
    make_repo(root, [{}])
    (root / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    # a nonce: no two projects (of this run, or of another run on the same daemon) build the
    # same layer, so the classic builder's cache never hands one an image another is removing
    nonce = secrets.token_hex(8)
    (root / "hello.txt").write_text(f"hello from {root.name} {nonce}\n", encoding="utf-8")
    (root / "shipit.yml").write_text(spec, encoding="utf-8")
    for name, content in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "project")
    if tag:
        git(root, "tag", "-a", "-m", tag, tag)
    return root


def run_env(docker_host: str, home: Path, **extra: str) -> dict[str, str]:
    """The environment a run gets: nothing of the developer's but PATH."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "DOCKER_HOST": docker_host, **extra}
