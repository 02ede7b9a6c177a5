"""The build context: what is being built, and why, as one frozen record.

Two steps. `shipit.gather` asks the repository (git itself) for its facts and reads the event
payload; `resolve` here is a pure function that combines those facts with the CI provider's
variables (an environment mapping passed in, never `os.environ`), the event payload and the
command-line overrides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from shipit.errors import UsageError

EVENTS: Final = ("push", "tag", "pull_request", "schedule")
_SHA = re.compile(r"[0-9a-f]{7,64}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class GitTag:
    name: str
    sha: str  # the commit the tag points at (annotated tags are dereferenced)


@dataclass(frozen=True, kw_only=True)
class History:
    """The commits reachable from HEAD, each with its parents, for describe-like counts."""

    head: str | None = None
    parents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    shallow: bool = False

    def contains(self, sha: str) -> bool:
        return sha in self.parents

    def count(self) -> int:
        return len(self.parents)

    def distance(self, sha: str) -> int:
        """Commits reachable from HEAD but not from `sha` (what `git describe` counts)."""
        if sha not in self.parents:
            return len(self.parents)
        seen = {sha}
        todo = [sha]
        while todo:
            for parent in self.parents.get(todo.pop(), ()):
                if parent not in seen and parent in self.parents:
                    seen.add(parent)
                    todo.append(parent)
        return len(self.parents) - len(seen)


@dataclass(frozen=True, kw_only=True)
class GitFacts:
    """What the repository says, read once."""

    is_repo: bool = True
    head: str | None = None
    branch: str | None = None  # None when HEAD is detached
    commit_time: datetime = _EPOCH
    dirty: bool = False
    tags: tuple[GitTag, ...] = ()
    history: History = field(default_factory=History)
    origin_url: str | None = None
    origin_head: str | None = None  # the default branch per refs/remotes/origin/HEAD
    root: Path | None = None  # the work tree's top folder

    def tags_at(self, sha: str | None) -> list[str]:
        return sorted(t.name for t in self.tags if t.sha == sha)


@dataclass(frozen=True, kw_only=True)
class Overrides:
    """Command-line overrides (`--ref`, `--event`, `--sha`, `--pr`, `--default-branch`)."""

    ref: str | None = None
    event: str | None = None
    sha: str | None = None
    pr: int | None = None
    default_branch: str | None = None


@dataclass(frozen=True, kw_only=True)
class Context:
    """Everything the plan depends on besides the spec."""

    provider: str  # github | gitlab | local
    event: str  # push | tag | pull_request | schedule
    ref: str | None  # refs/heads/x, refs/tags/x, refs/pull/n/merge, or None (detached)
    branch: str | None
    tag: str | None
    pr: int | None
    sha: str  # the commit images are labelled with: the PR head on pull requests
    head_sha: str  # the commit checked out (GitHub's merge commit on pull requests)
    commit_time: datetime  # UTC
    default_branch: str
    build_number: str | None = None
    source_url: str | None = None
    dirty: bool = False
    shallow: bool = False
    tags: tuple[GitTag, ...] = ()
    history: History = field(default_factory=History)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    now: datetime = _EPOCH
    repo_root: Path | None = None  # the work tree's top folder, when in a git repository

    @property
    def is_default_branch(self) -> bool:
        return self.event in ("push", "schedule") and self.branch == self.default_branch

    @property
    def ref_name(self) -> str:
        """The branch or tag name, as GitLab's CI_COMMIT_REF_NAME."""
        return self.branch or self.tag or ""

    def summary(self) -> dict[str, Any]:
        """The JSON-friendly part of the context, as shown in plans and reports."""
        return {
            "provider": self.provider,
            "event": self.event,
            "ref": self.ref,
            "branch": self.branch,
            "tag": self.tag,
            "pr": self.pr,
            "sha": self.sha,
            "default_branch": self.default_branch,
            "commit_time": self.commit_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "build_number": self.build_number,
            "dirty": self.dirty,
        }


# -- resolving -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Ci:
    """What a CI provider's variables say, before overrides."""

    provider: str = "local"
    event: str | None = None
    ref: str | None = None
    branch: str | None = None
    pr: int | None = None
    sha: str | None = None
    default_branch: str | None = None
    commit_time: datetime | None = None
    build_number: str | None = None
    source_url: str | None = None


def resolve(
    git: GitFacts,
    env: Mapping[str, str],
    overrides: Overrides,
    *,
    payload: Mapping[str, Any] | None = None,
    now: datetime = _EPOCH,
) -> Context:
    """Combine git facts, CI variables and overrides into the context (pure)."""
    if env.get("GITHUB_ACTIONS") == "true":
        ci = _github(env, payload or {})
    elif env.get("GITLAB_CI") == "true":
        ci = _gitlab(env)
    else:
        ci = _local(git)
    ci = _apply_overrides(ci, overrides)

    ref = ci.ref
    branch, tag, pr_from_ref = _split_ref(ref)
    event = ci.event or _event_of(ref)
    branch = ci.branch or branch
    pr = ci.pr if ci.pr is not None else pr_from_ref
    if overrides.pr is not None and overrides.event is None:
        event = "pull_request"
    head = git.head
    sha = ci.sha or head
    if not sha:
        raise UsageError(
            "no commit to build: this is not a git checkout with a commit",
            hint="run shipit inside a git repository, or pass --sha",
        )
    default_branch = ci.default_branch or git.origin_head or "main"
    source = ci.source_url or _https_url(git.origin_url)
    epoch = source_date_epoch(env)
    return Context(
        provider=ci.provider,
        event=event,
        ref=ref,
        branch=branch,
        tag=tag,
        pr=pr,
        sha=sha,
        head_sha=head or sha,
        commit_time=epoch or ci.commit_time or git.commit_time,
        default_branch=default_branch,
        build_number=ci.build_number,
        source_url=source,
        dirty=git.dirty,
        shallow=git.history.shallow,
        tags=git.tags,
        history=git.history,
        env=dict(env),
        now=epoch or now,
        repo_root=git.root,
    )


def source_date_epoch(env: Mapping[str, str]) -> datetime | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org), when set: the time of the source, which
    then stands for the commit's time (`date()`, the created label) and the clock (`now()`)."""
    text = env.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise UsageError(
            f"SOURCE_DATE_EPOCH must be a number of seconds since 1970, not '{text}'",
            hint="e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)",
        )
    try:
        return datetime.fromtimestamp(int(text), tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise UsageError(f"SOURCE_DATE_EPOCH {text} is out of range") from None


def _local(git: GitFacts) -> _Ci:
    if git.branch:
        ref: str | None = f"refs/heads/{git.branch}"
    else:  # detached: a CI checkout of a tag, or `git checkout v1.2.3`
        at_head = git.tags_at(git.head)
        ref = f"refs/tags/{_best_tag(at_head)}" if at_head else None
    return _Ci(provider="local", ref=ref)


def _best_tag(names: list[str]) -> str:
    """Of several tags on one commit, the one that looks most like a release."""
    versioned = [n for n in names if re.fullmatch(r"v?\d+\.\d+\.\d+\S*", n)]
    return sorted(versioned or names, key=_version_key)[-1]


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)[:3])


def _github(env: Mapping[str, str], payload: Mapping[str, Any]) -> _Ci:
    event_name = env.get("GITHUB_EVENT_NAME", "")
    ref = env.get("GITHUB_REF") or None
    repository = _dict(payload.get("repository"))
    default_branch = repository.get("default_branch")
    server, repo = env.get("GITHUB_SERVER_URL"), env.get("GITHUB_REPOSITORY")
    base = _Ci(
        provider="github",
        ref=ref,
        sha=env.get("GITHUB_SHA") or None,
        default_branch=default_branch if isinstance(default_branch, str) else None,
        build_number=env.get("GITHUB_RUN_NUMBER") or None,
        source_url=f"{server}/{repo}" if server and repo else None,
    )
    if event_name in ("pull_request", "pull_request_target"):
        pull = _dict(payload.get("pull_request"))
        number = pull.get("number", payload.get("number"))
        pr = int(number) if isinstance(number, int | str) and str(number).isdigit() else None
        if pr is None and ref and (m := re.fullmatch(r"refs/pull/(\d+)/\w+", ref)):
            pr = int(m.group(1))
        head_sha = _dict(pull.get("head")).get("sha")
        return replace(
            base,
            event="pull_request",
            ref=f"refs/pull/{pr}/merge" if pr is not None else ref,
            branch=env.get("GITHUB_HEAD_REF") or None,
            pr=pr,
            sha=head_sha if isinstance(head_sha, str) and head_sha else base.sha,
        )
    if event_name == "schedule":
        return replace(base, event="schedule")
    return base


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _gitlab(env: Mapping[str, str]) -> _Ci:
    base = _Ci(
        provider="gitlab",
        sha=env.get("CI_COMMIT_SHA") or None,
        default_branch=env.get("CI_DEFAULT_BRANCH") or None,
        commit_time=_parse_time(env.get("CI_COMMIT_TIMESTAMP")),
        build_number=env.get("CI_PIPELINE_IID") or None,
        source_url=env.get("CI_PROJECT_URL") or None,
    )
    source = env.get("CI_PIPELINE_SOURCE", "")
    if tag := env.get("CI_COMMIT_TAG"):
        return replace(base, event="tag", ref=f"refs/tags/{tag}")
    if source in ("merge_request_event", "external_pull_request_event"):
        iid = env.get("CI_MERGE_REQUEST_IID") or env.get("CI_EXTERNAL_PULL_REQUEST_IID") or ""
        pr = int(iid) if iid.isdigit() else None
        branch = (
            env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME") or env.get("CI_COMMIT_REF_NAME") or None
        )
        return replace(
            base,
            event="pull_request",
            ref=f"refs/merge-requests/{pr}/head" if pr is not None else None,
            branch=branch,
            pr=pr,
            sha=env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_SHA") or base.sha,
        )
    branch = env.get("CI_COMMIT_BRANCH") or env.get("CI_COMMIT_REF_NAME") or None
    return replace(
        base,
        event="schedule" if source == "schedule" else None,
        ref=f"refs/heads/{branch}" if branch else None,
        branch=branch,
    )


def _apply_overrides(ci: _Ci, o: Overrides) -> _Ci:
    if o.event is not None and o.event not in EVENTS:
        raise UsageError(f"--event must be one of {', '.join(EVENTS)}, not '{o.event}'")
    if o.sha is not None and not _SHA.fullmatch(o.sha):
        raise UsageError(f"--sha must be a hexadecimal commit id, not '{o.sha}'")
    if o.ref is not None:
        if not o.ref.startswith("refs/"):
            raise UsageError(
                f"--ref must be a full ref, not '{o.ref}'",
                hint="e.g. refs/heads/main, refs/tags/v1.2.3 or refs/pull/15/merge",
            )
        branch, _, _ = _split_ref(o.ref)
        ci = replace(ci, ref=o.ref, branch=branch, event=None, pr=None)
    if o.event is not None:
        ci = replace(ci, event=o.event)
    if o.sha is not None:
        ci = replace(ci, sha=o.sha)
    if o.pr is not None:
        ci = replace(ci, pr=o.pr)
    if o.default_branch is not None:
        ci = replace(ci, default_branch=o.default_branch)
    return ci


def _split_ref(ref: str | None) -> tuple[str | None, str | None, int | None]:
    """(branch, tag, pull request number) named by a full ref."""
    if not ref:
        return None, None, None
    if ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/"), None, None
    if ref.startswith("refs/tags/"):
        return None, ref.removeprefix("refs/tags/"), None
    if m := re.fullmatch(r"refs/(?:pull|merge-requests)/(\d+)/\w+", ref):
        return None, None, int(m.group(1))
    return None, None, None


def _event_of(ref: str | None) -> str:
    _, tag, pr = _split_ref(ref)
    if tag is not None:
        return "tag"
    if pr is not None:
        return "pull_request"
    return "push"


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _https_url(remote: str | None) -> str | None:
    """A browsable https URL for a git remote, with any credentials removed."""
    if not remote:
        return None
    scp = re.fullmatch(r"(?:[^@/]+@)?([^:/]+):(?!/)(.+?)(?:\.git)?/?", remote)
    if scp and "://" not in remote:
        return f"https://{scp.group(1)}/{scp.group(2)}"
    parts = urlsplit(remote)
    if parts.scheme not in ("http", "https", "ssh", "git") or not parts.hostname:
        return None
    host = parts.hostname + (f":{parts.port}" if parts.port and parts.scheme != "ssh" else "")
    path = parts.path.removesuffix("/").removesuffix(".git")
    return urlunsplit(("https", host, path, "", ""))
