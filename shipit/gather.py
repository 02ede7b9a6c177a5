"""What the build context is made of, read from the world: the git repository's facts (HEAD,
branch, tags, history, origin; git's own commands, side by side) and GitHub's event payload;
`gather` reads both and hands them to the pure `shipit.context.resolve`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from shipit import proc
from shipit.context import Context, GitFacts, GitTag, History, Overrides, resolve
from shipit.errors import UsageError


def read_git(directory: Path) -> GitFacts:
    """Ask the repository containing `directory` for its facts (HEAD, tags, history)."""
    found = locate(directory)
    if found is None:
        return GitFacts(is_repo=False)
    top, git_dir = found
    asked = _ask(
        directory,
        head=("log", "-1", "--format=%H%x00%cI", "HEAD", "--"),
        branch=("symbolic-ref", "--quiet", "HEAD"),
        # dirty: the index or the work tree differs from HEAD (what GitPython's is_dirty()
        # said, before shipit ran git itself), untracked files aside; --no-optional-locks: no
        # index refresh written (git(1))
        dirty=("--no-optional-locks", "status", "--porcelain", "--untracked-files=no"),
        refs=("for-each-ref", f"--format={_REF_FORMAT}", "refs/tags", _ORIGIN_HEAD),
        history=("rev-list", "--parents", "HEAD", "--"),
        origin=("config", "--get", "remote.origin.url"),
    )
    head = asked["head"]
    if head.returncode != 0:
        if _run_git(directory, "rev-parse", "--quiet", "--verify", "HEAD").returncode == 1:
            return GitFacts(is_repo=True)  # a repository with no commit yet
        raise _failed(directory, head)
    sha, _, when = head.stdout.strip().partition("\0")
    tags, origin_head = _refs(_checked(directory, asked["refs"]))
    parents: dict[str, tuple[str, ...]] = {}
    for line in _checked(directory, asked["history"]).splitlines():
        commit, *rest = line.split()
        parents[commit] = tuple(rest)
    branch = asked["branch"].stdout.strip()  # exit 1 and nothing when HEAD is detached
    return GitFacts(
        head=sha,
        branch=branch.removeprefix("refs/heads/") or None,
        commit_time=datetime.fromisoformat(when).astimezone(UTC),
        dirty=bool(_checked(directory, asked["dirty"]).strip()),
        tags=tags,
        history=History(head=sha, parents=parents, shallow=(git_dir / "shallow").is_file()),
        origin_url=asked["origin"].stdout.strip() or None,  # exit 1 when there is none
        origin_head=origin_head,
        root=top,
    )


# git for-each-ref's fields (git-for-each-ref(1)): a tag's own object, the commit an annotated
# tag points at (empty for a lightweight one), and where a symbolic ref points
_REF_FORMAT: Final = "%(refname)%00%(objectname)%00%(*objectname)%00%(symref)"
_ORIGIN_HEAD: Final = "refs/remotes/origin/HEAD"  # the default branch, as `git clone` set it
_TIMEOUT: Final = 600.0  # a history of millions of commits is listed in seconds


def _refs(listing: str) -> tuple[tuple[GitTag, ...], str | None]:
    tags = []
    origin_head = None
    for line in listing.splitlines():
        name, obj, deref, symref = line.split("\0")
        if name == _ORIGIN_HEAD:
            origin_head = symref.removeprefix("refs/remotes/origin/") or None
        elif name.startswith("refs/tags/"):
            tags.append(GitTag(name=name.removeprefix("refs/tags/"), sha=deref or obj))
    return tuple(tags), origin_head


def locate(directory: Path) -> tuple[Path | None, Path] | None:
    """The work tree's top folder (None in a bare repository) and the git folder of the
    repository containing `directory`, or None when it is in none.

    Raises `UsageError` when git cannot read it (a dubious owner, a broken .git), and
    `proc.ToolMissing` when git is not installed where a `.git` says there is a repository.
    """
    if not directory.is_dir():
        return None
    try:
        done = _run_git(directory, "rev-parse", "--absolute-git-dir", "--show-toplevel")
    except proc.ToolMissing:
        here = directory.resolve()
        if not any((folder / ".git").exists() for folder in (here, *here.parents)):
            return None  # no git and nothing for it to read: not a repository, as it says
        raise
    if done.returncode == 0:
        git_dir, top = done.stdout.splitlines()[:2]
        return Path(top), Path(git_dir)
    if "not a git repository" in done.stderr:
        return None
    if "must be run in a work tree" in done.stderr:  # a bare repository has no top folder
        bare = _run_git(directory, "rev-parse", "--absolute-git-dir")
        return None, Path(_checked(directory, bare).strip())
    raise _failed(directory, done)


def remote_url(directory: Path) -> str | None:
    """The URL of the repository's remote named origin, else of its first one, or None."""
    # `git config --get-regexp` lists in the config's order; exit 1 when nothing matches
    done = _run_git(directory, "config", "--get-regexp", r"^remote\..*\.url$")
    urls: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, url = line.partition(" ")
        urls.setdefault(key.removeprefix("remote.").removesuffix(".url"), url)
    return urls.get("origin", next(iter(urls.values()), None))


def _git_env() -> dict[str, str]:
    """The environment git runs in: messages in English (they are matched), and the folder
    asked about decides the repository (a GIT_DIR or GIT_WORK_TREE set by a hook would not)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    return env | {"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}


def _run_git(directory: Path, *args: str) -> proc.Result:
    env = _git_env()
    git = proc.find_tool("git", env, hint="install git (apt-get install git)")
    return proc.run([git, *args], env=env, cwd=directory, timeout=_TIMEOUT, check=False)


def _ask(directory: Path, **commands: tuple[str, ...]) -> dict[str, proc.Result]:
    """Run the git commands side by side (each takes a few ms, mostly its process's start)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        running = {key: pool.submit(_run_git, directory, *args) for key, args in commands.items()}
        return {key: future.result() for key, future in running.items()}


def _checked(directory: Path, done: proc.Result) -> str:
    if done.returncode != 0:
        raise _failed(directory, done)
    return done.stdout


def _failed(directory: Path, done: proc.Result) -> UsageError:
    said = done.stderr.strip() or f"exit status {done.returncode}"
    command = " ".join(done.argv[1:3])
    return UsageError(f"git {command} failed in {directory}: {said}")


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
