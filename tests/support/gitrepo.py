"""Real git repositories for tests, built commit by commit in a temporary folder."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_DATE = "2024-03-01T12:00:00Z"


def git(repo: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(repo.parent),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        **(env or {}),
    }
    result = subprocess.run(
        ["git", "-C", str(repo), *args], env=full_env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


def make_repo(
    path: Path,
    commits: Sequence[Mapping[str, str]] = ({},),
    *,
    branch: str = "main",
    commit_date: str = DEFAULT_DATE,
) -> list[str]:
    """A repository at `path` with one commit per item (tagged when the item has `tag`).

    The branch is set with symbolic-ref so names `git checkout -b` refuses (`-hotfix-`)
    work too. Returns the commit shas, oldest first.
    """
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    git(path, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
    shas = []
    for index, commit in enumerate(commits):
        add_commit(path, f"commit {index}", date=commit_date)
        shas.append(git(path, "rev-parse", "HEAD"))
        if "tag" in commit:
            git(path, "tag", "-a", "-m", f"release {commit['tag']}", commit["tag"])
    return shas


def add_commit(
    path: Path, message: str, *, date: str = DEFAULT_DATE, file: str = "file.txt"
) -> str:
    target = path / file
    with target.open("a", encoding="utf-8") as handle:
        handle.write(message + "\n")
    git(path, "add", "-A")
    dates = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    git(path, "commit", "-q", "-m", message, env=dates)
    return git(path, "rev-parse", "HEAD")
