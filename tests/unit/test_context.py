"""The build context from each CI provider's variables, git facts, and overrides (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shipit.context import (
    GitFacts,
    GitTag,
    History,
    Overrides,
    _https_url,
    resolve,
)
from shipit.errors import UsageError
from shipit.gather import gather, read_event_payload, read_git
from tests.support.gitrepo import git, make_repo

HEAD = "a" * 40
PR_HEAD = "b" * 40
MERGE = "c" * 40
FACTS = GitFacts(
    head=HEAD,
    branch="main",
    commit_time=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    tags=(GitTag(name="v1.0.0", sha=HEAD),),
    history=History(head=HEAD, parents={HEAD: ()}),
    origin_url="git@github.com:acme/app.git",
    origin_head="trunk",
)
NO_OVERRIDES = Overrides()


def github(event: str, ref: str, **extra: str) -> dict[str, str]:
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_EVENT_NAME": event,
        "GITHUB_REF": ref,
        "GITHUB_SHA": MERGE,
        "GITHUB_RUN_NUMBER": "42",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "acme/app",
        **extra,
    }


def gitlab(**extra: str) -> dict[str, str]:
    return {
        "GITLAB_CI": "true",
        "CI_COMMIT_SHA": MERGE,
        "CI_DEFAULT_BRANCH": "main",
        "CI_PIPELINE_IID": "7",
        "CI_COMMIT_TIMESTAMP": "2024-01-02T03:04:05+01:00",
        "CI_PROJECT_URL": "https://gitlab.example.com/acme/app",
        **extra,
    }


def test_local_branch_build() -> None:
    ctx = resolve(FACTS, {}, NO_OVERRIDES)
    assert (ctx.provider, ctx.event, ctx.ref, ctx.branch, ctx.tag) == (
        "local",
        "push",
        "refs/heads/main",
        "main",
        None,
    )
    assert ctx.sha == HEAD and ctx.default_branch == "trunk"
    assert ctx.source_url == "https://github.com/acme/app"
    assert not ctx.is_default_branch


def test_local_default_branch_falls_back_to_main() -> None:
    ctx = resolve(GitFacts(head=HEAD, branch="main"), {}, NO_OVERRIDES)
    assert ctx.default_branch == "main" and ctx.is_default_branch


def test_local_detached_head_on_a_release_tag_builds_that_tag() -> None:
    facts = GitFacts(
        head=HEAD,
        branch=None,
        tags=(
            GitTag(name="nightly", sha=HEAD),
            GitTag(name="v1.2.0", sha=HEAD),
            GitTag(name="v1.10.0", sha=HEAD),
        ),
    )
    ctx = resolve(facts, {}, NO_OVERRIDES)
    assert (ctx.event, ctx.ref, ctx.tag, ctx.branch) == (
        "tag",
        "refs/tags/v1.10.0",
        "v1.10.0",
        None,
    )


def test_local_detached_head_without_tags_is_a_plain_push() -> None:
    ctx = resolve(GitFacts(head=HEAD, branch=None), {}, NO_OVERRIDES)
    assert (ctx.event, ctx.ref, ctx.branch, ctx.tag) == ("push", None, None, None)


def test_github_branch_push() -> None:
    env = github("push", "refs/heads/main")
    ctx = resolve(FACTS, env, NO_OVERRIDES, payload={"repository": {"default_branch": "main"}})
    assert (ctx.provider, ctx.event, ctx.branch, ctx.sha) == ("github", "push", "main", MERGE)
    assert ctx.default_branch == "main" and ctx.is_default_branch
    assert ctx.build_number == "42"
    assert ctx.source_url == "https://github.com/acme/app"


def test_github_tag_push() -> None:
    ctx = resolve(FACTS, github("push", "refs/tags/v1.2.3"), NO_OVERRIDES)
    assert (ctx.event, ctx.tag, ctx.branch) == ("tag", "v1.2.3", None)
    assert not ctx.is_default_branch


def test_github_release_and_dispatch_events_follow_the_ref() -> None:
    assert resolve(FACTS, github("release", "refs/tags/v2.0.0"), NO_OVERRIDES).event == "tag"
    ctx = resolve(FACTS, github("workflow_dispatch", "refs/heads/dev"), NO_OVERRIDES)
    assert (ctx.event, ctx.branch) == ("push", "dev")


def test_github_pull_request_uses_the_head_commit_not_the_merge_commit() -> None:
    env = github("pull_request", "refs/pull/15/merge", GITHUB_HEAD_REF="feature/x")
    payload = {"number": 15, "pull_request": {"number": 15, "head": {"sha": PR_HEAD}}}
    ctx = resolve(FACTS, env, NO_OVERRIDES, payload=payload)
    assert (ctx.event, ctx.pr, ctx.branch, ctx.ref) == (
        "pull_request",
        15,
        "feature/x",
        "refs/pull/15/merge",
    )
    assert ctx.sha == PR_HEAD
    assert ctx.head_sha == HEAD


def test_github_pull_request_target_is_a_pull_request_of_the_head() -> None:
    env = github("pull_request_target", "refs/heads/main", GITHUB_HEAD_REF="fork-branch")
    payload = {"pull_request": {"number": 99, "head": {"sha": PR_HEAD}}}
    ctx = resolve(FACTS, env, NO_OVERRIDES, payload=payload)
    assert (ctx.event, ctx.pr, ctx.sha, ctx.ref) == (
        "pull_request",
        99,
        PR_HEAD,
        "refs/pull/99/merge",
    )


def test_github_pull_request_without_payload_takes_the_number_from_the_ref() -> None:
    ctx = resolve(FACTS, github("pull_request", "refs/pull/7/merge"), NO_OVERRIDES, payload={})
    assert (ctx.pr, ctx.sha) == (7, MERGE)


def test_github_schedule() -> None:
    ctx = resolve(FACTS, github("schedule", "refs/heads/main"), NO_OVERRIDES, payload={})
    assert (ctx.event, ctx.branch) == ("schedule", "main")


def test_gitlab_branch_pipeline() -> None:
    ctx = resolve(
        FACTS,
        gitlab(CI_COMMIT_BRANCH="main", CI_COMMIT_REF_NAME="main", CI_PIPELINE_SOURCE="push"),
        NO_OVERRIDES,
    )
    assert (ctx.provider, ctx.event, ctx.branch, ctx.sha) == ("gitlab", "push", "main", MERGE)
    assert ctx.commit_time == datetime(2024, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert ctx.is_default_branch and ctx.build_number == "7"
    assert ctx.source_url == "https://gitlab.example.com/acme/app"


def test_gitlab_tag_pipeline() -> None:
    ctx = resolve(FACTS, gitlab(CI_COMMIT_TAG="v3.1.0", CI_COMMIT_REF_NAME="v3.1.0"), NO_OVERRIDES)
    assert (ctx.event, ctx.tag, ctx.branch, ctx.ref) == ("tag", "v3.1.0", None, "refs/tags/v3.1.0")


def test_gitlab_merge_request_pipeline_uses_the_source_branch_head() -> None:
    env = gitlab(
        CI_PIPELINE_SOURCE="merge_request_event",
        CI_MERGE_REQUEST_IID="12",
        CI_MERGE_REQUEST_SOURCE_BRANCH_NAME="feat/login",
        CI_MERGE_REQUEST_SOURCE_BRANCH_SHA=PR_HEAD,
        CI_COMMIT_REF_NAME="feat/login",
    )
    ctx = resolve(FACTS, env, NO_OVERRIDES)
    assert (ctx.event, ctx.pr, ctx.branch, ctx.sha) == ("pull_request", 12, "feat/login", PR_HEAD)
    assert ctx.ref == "refs/merge-requests/12/head"


def test_gitlab_merge_request_without_source_sha_uses_the_commit_sha() -> None:
    env = gitlab(
        CI_PIPELINE_SOURCE="merge_request_event", CI_MERGE_REQUEST_IID="3", CI_COMMIT_REF_NAME="x"
    )
    ctx = resolve(FACTS, env, NO_OVERRIDES)
    assert (ctx.pr, ctx.sha, ctx.branch) == (3, MERGE, "x")


def test_gitlab_schedule_pipeline() -> None:
    ctx = resolve(
        FACTS, gitlab(CI_PIPELINE_SOURCE="schedule", CI_COMMIT_BRANCH="main"), NO_OVERRIDES
    )
    assert (ctx.event, ctx.branch, ctx.is_default_branch) == ("schedule", "main", True)


def test_overrides_win_over_the_provider() -> None:
    env = github("push", "refs/heads/main")
    overrides = Overrides(ref="refs/tags/v2.0.0", sha="d" * 40, default_branch="dev")
    ctx = resolve(FACTS, env, overrides)
    assert (ctx.event, ctx.tag, ctx.branch, ctx.sha, ctx.default_branch) == (
        "tag",
        "v2.0.0",
        None,
        "d" * 40,
        "dev",
    )


def test_pr_override_alone_makes_a_pull_request_build() -> None:
    ctx = resolve(FACTS, {}, Overrides(pr=15))
    assert (ctx.event, ctx.pr, ctx.branch) == ("pull_request", 15, "main")


def test_ref_override_of_a_pull_request() -> None:
    ctx = resolve(FACTS, {}, Overrides(ref="refs/pull/8/merge"))
    assert (ctx.event, ctx.pr, ctx.branch) == ("pull_request", 8, None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (Overrides(ref="main"), "--ref must be a full ref, not 'main'"),
        (
            Overrides(event="merge"),
            "--event must be one of push, tag, pull_request, schedule, not 'merge'",
        ),
        (Overrides(sha="xyz"), "--sha must be a hexadecimal commit id, not 'xyz'"),
    ],
)
def test_bad_overrides_are_usage_errors(overrides: Overrides, message: str) -> None:
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        resolve(FACTS, {}, overrides)


def test_no_repository_and_no_sha_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="no commit to build"):
        resolve(GitFacts(is_repo=False), {}, NO_OVERRIDES)
    ctx = resolve(GitFacts(is_repo=False), {}, Overrides(sha="e" * 40, ref="refs/heads/x"))
    assert ctx.sha == "e" * 40 and ctx.branch == "x"


@pytest.mark.parametrize(
    ("remote", "url"),
    [
        ("git@github.com:acme/app.git", "https://github.com/acme/app"),
        ("https://github.com/acme/app.git", "https://github.com/acme/app"),
        (
            "https://x-access-token:ghs_secret@github.com/acme/app.git",
            "https://github.com/acme/app",
        ),
        (
            "ssh://git@gitlab.example.com:2222/group/sub/app.git",
            "https://gitlab.example.com/group/sub/app",
        ),
        ("http://localhost:3000/me/repo", "https://localhost:3000/me/repo"),
        ("/srv/git/app.git", None),
        (None, None),
    ],
)
def test_source_url_from_the_remote_never_carries_credentials(
    remote: str | None, url: str | None
) -> None:
    assert _https_url(remote) == url


def test_event_payload_is_read_only_in_github_actions(tmp_path: Path) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps({"number": 3}), encoding="utf-8")
    assert read_event_payload({"GITHUB_EVENT_PATH": str(path)}) == {}
    assert read_event_payload({"GITHUB_ACTIONS": "true", "GITHUB_EVENT_PATH": str(path)}) == {
        "number": 3
    }
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(UsageError, match="cannot read the GitHub event payload"):
        read_event_payload({"GITHUB_ACTIONS": "true", "GITHUB_EVENT_PATH": str(path)})


# -- against real repositories ------------------------------------------------------------


def test_read_git_sees_head_branch_tags_time_and_dirt(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shas = make_repo(
        repo,
        [{"tag": "v1.0.0"}, {}, {"tag": "v1.1.0"}],
        branch="dev",
        commit_date="2021-02-03T04:05:06Z",
    )
    git(repo, "tag", "lightweight", shas[0])
    (repo / "sub").mkdir()
    facts = read_git(repo / "sub")  # found from a folder inside the repository
    assert facts.head == shas[-1] and facts.branch == "dev"
    assert facts.commit_time == datetime(2021, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert {(t.name, t.sha) for t in facts.tags} == {
        ("v1.0.0", shas[0]),
        ("v1.1.0", shas[2]),
        ("lightweight", shas[0]),
    }
    assert facts.history.count() == 3
    assert facts.history.distance(shas[0]) == 2
    assert not facts.dirty
    (repo / "file.txt").write_text("changed\n", encoding="utf-8")
    assert read_git(repo).dirty


def test_read_git_outside_a_repository(tmp_path: Path) -> None:
    assert not read_git(tmp_path).is_repo


def test_read_git_in_an_empty_repository(tmp_path: Path) -> None:
    git_dir = tmp_path / "empty"
    git_dir.mkdir()
    git(git_dir, "init", "-q")
    facts = read_git(git_dir)
    assert facts.is_repo and facts.head is None


def test_detached_checkout_of_a_tag_and_the_origin_default_branch(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    make_repo(origin, [{"tag": "v0.9.0"}, {"tag": "v1.0.0"}], branch="trunk")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    git(clone, "checkout", "-q", "v0.9.0")
    ctx = gather(clone, {}, NO_OVERRIDES)
    assert (ctx.event, ctx.tag, ctx.default_branch) == ("tag", "v0.9.0", "trunk")
    assert ctx.source_url is None  # a local path is not a browsable URL


def test_shallow_clone_without_tags_is_flagged(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    make_repo(origin, [{"tag": "v1.0.0"}, {}, {}])
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", "--no-tags", f"file://{origin}", str(clone))
    facts = read_git(clone)
    assert facts.history.shallow and facts.history.count() == 1 and facts.tags == ()
