"""What the build context is made of, read from the world: the git repository's facts
(GitPython: HEAD, branch, tags, history, origin) and GitHub's event payload; `gather` reads
both and hands them to the pure `shipit.context.resolve`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shipit.context import Context, GitFacts, GitTag, History, Overrides, resolve
from shipit.errors import UsageError


def read_git(directory: Path) -> GitFacts:
    """Ask the repository containing `directory` for its facts (HEAD, tags, history)."""
    import git  # noqa: PLC0415 (GitPython is slow to import; only commands that read git pay)

    try:
        repo = git.Repo(directory, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return GitFacts(is_repo=False)
    except (git.GitError, OSError, ValueError) as exc:  # unreadable .git, bad config, ...
        raise UsageError(f"cannot read the git repository at {directory}: {exc}") from None
    try:
        with repo:
            return _facts(repo)
    except git.GitCommandError as exc:
        raise UsageError(f"git failed in {directory}: {exc.stderr.strip() or exc}") from None
    except (git.GitError, git.ODBError, OSError, ValueError) as exc:  # a broken ref or object
        raise UsageError(f"cannot read the git repository at {directory}: {exc}") from None


def _facts(repo: Any) -> GitFacts:
    try:
        head = repo.head.commit
    except ValueError:  # a repository with no commit yet
        return GitFacts(is_repo=True)
    branch = None if repo.head.is_detached else repo.active_branch.name
    return GitFacts(
        head=head.hexsha,
        branch=branch,
        commit_time=head.committed_datetime.astimezone(UTC),
        dirty=repo.is_dirty(),
        tags=_tags(repo),
        history=_history(repo, head.hexsha),
        origin_url=_origin_url(repo),
        origin_head=_origin_head(repo),
        root=Path(repo.working_tree_dir) if repo.working_tree_dir else None,
    )


def _tags(repo: Any) -> tuple[GitTag, ...]:
    out = repo.git.for_each_ref(
        "--format=%(refname:strip=2)%00%(objectname)%00%(*objectname)", "refs/tags"
    )
    tags = []
    for line in out.splitlines():
        name, obj, deref = line.split("\0")
        tags.append(GitTag(name=name, sha=deref or obj))
    return tuple(tags)


def _history(repo: Any, head: str) -> History:
    parents: dict[str, tuple[str, ...]] = {}
    for line in repo.git.rev_list("--parents", "HEAD").splitlines():
        sha, *rest = line.split()
        parents[sha] = tuple(rest)
    shallow = Path(repo.git_dir, "shallow").is_file()
    return History(head=head, parents=parents, shallow=shallow)


def _origin_url(repo: Any) -> str | None:
    try:
        return str(repo.remotes.origin.url)
    except (AttributeError, IndexError):
        return None


def _origin_head(repo: Any) -> str | None:
    import git  # noqa: PLC0415

    try:
        target = repo.git.symbolic_ref("--quiet", "refs/remotes/origin/HEAD")
    except git.GitCommandError:
        return None
    return str(target).removeprefix("refs/remotes/origin/") or None


def read_event_payload(env: Mapping[str, str]) -> Mapping[str, Any]:
    """GitHub's event payload (the JSON file GITHUB_EVENT_PATH names), or {}."""
    path = env.get("GITHUB_EVENT_PATH")
    if not path or env.get("GITHUB_ACTIONS") != "true":
        return {}
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise UsageError(f"cannot read the GitHub event payload {path}: {exc}") from None
    return payload if isinstance(payload, dict) else {}


def gather(
    directory: Path, env: Mapping[str, str], overrides: Overrides, *, now: datetime | None = None
) -> Context:
    """Read git and the event payload, then resolve: the one impure entry point."""
    return resolve(
        read_git(directory),
        env,
        overrides,
        payload=read_event_payload(env),
        now=now or datetime.now(UTC),
    )
